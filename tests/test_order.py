"""attnbook.order (§3.2): permutations, order-dependent tasks, tiny models and counting,
against brute-force loops and PyTorch."""
import math

import pytest
import torch
import torch.nn.functional as F
from support import DTYPES, randn, tol

from attnbook import MultiHeadAttention, attention
from attnbook.order import (OrderClassifier, RetrievalModel, before_task, count_flops,
                            equivariance_gap, first_token_task, inverse_permutation, kv_retrieval_task,
                            permute, random_permutation, rnn_states, sequential_depth)
from attnbook.positions import apply_rope, sinusoidal_encoding
from attnbook.transformer import CrossAttention, SelfAttention

SEEDS = range(5)


# ---------------------------------------------------------------- permutations

@pytest.mark.parametrize("seed", SEEDS)
def test_permute_matches_a_loop_and_inverse_undoes_it(seed):
    g = torch.Generator().manual_seed(seed)
    x = randn(2, 3, 7, 5, seed=seed)                       # (B, h, L, E), L = 7
    perm = random_permutation(7, generator=g)
    out = permute(x, perm)
    for i in range(7):
        assert torch.equal(out[..., i, :], x[..., perm[i], :])
    assert torch.equal(permute(out, inverse_permutation(perm)), x)
    assert sorted(perm.tolist()) == list(range(7))


def test_permute_along_another_axis():
    x = randn(4, 6, seed=1)
    perm = torch.tensor([3, 0, 2, 1])
    torch.testing.assert_close(permute(x, perm, dim=0), x[[3, 0, 2, 1]])


def test_random_permutation_is_seeded_and_varied():
    a = random_permutation(9, generator=torch.Generator().manual_seed(3))
    b = random_permutation(9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    draws = {tuple(random_permutation(5, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert len(draws) > 10


@pytest.mark.parametrize("perm, error, words", [
    (torch.tensor([0, 1, 1, 3]), ValueError, "exactly once"),
    (torch.tensor([0, 1, 2]), ValueError, "(4,)"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), TypeError, "integer"),
    ([0, 1, 2, 3], TypeError, "torch.Tensor"),
    (torch.tensor([[0, 1], [2, 3]]), ValueError, "(4,)"),
])
def test_permute_rejects_what_is_not_a_permutation(perm, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        permute(randn(2, 4, 3), perm)


def test_inverse_permutation_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        inverse_permutation(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly once"):
        inverse_permutation(torch.tensor([2, 2, 0]))


# ---------------------------------------------------------------- equivariance

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_self_attention_is_permutation_equivariant(dtype, seed):
    torch.manual_seed(seed)
    layer = SelfAttention(12, 3).to(dtype)
    x = randn(3, 7, 12, seed=seed, dtype=dtype)             # B = 3, L = 7, E = 12
    perm = random_permutation(7, generator=torch.Generator().manual_seed(seed))
    y, w = layer(x)
    yp, wp = layer(permute(x, perm))
    torch.testing.assert_close(yp, permute(y, perm), **tol(dtype))
    # weights: rows and columns permuted, a_{π(i) π(j)}
    torch.testing.assert_close(wp, permute(permute(w, perm, dim=-1), perm, dim=-2), **tol(dtype))
    assert equivariance_gap(layer, x, perm) < 10 * tol(dtype)["atol"]


@pytest.mark.parametrize("seed", SEEDS)
def test_torch_multihead_attention_is_equivariant_and_positions_break_it(seed):
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).double()
    x = randn(2, 6, 8, seed=seed)
    perm = torch.tensor([5, 3, 0, 1, 4, 2])
    assert equivariance_gap(lambda z: mha(z, z, z)[0], x, perm) < 1e-10
    pe = sinusoidal_encoding(6, 8, dtype=torch.float64)
    assert equivariance_gap(lambda z: mha(z + pe, z + pe, z + pe)[0], x, perm) > 1e-2
    rope = lambda z: attention(apply_rope(z), apply_rope(z), z)[0]
    assert equivariance_gap(rope, x, perm) > 1e-2


def test_causal_self_attention_is_not_equivariant():
    torch.manual_seed(0)
    layer = SelfAttention(8, 2, causal=True).double()
    assert equivariance_gap(layer, randn(2, 5, 8), torch.tensor([4, 3, 2, 1, 0])) > 1e-2


@pytest.mark.parametrize("seed", SEEDS)
def test_cross_attention_permutes_with_queries_and_ignores_memory_order(seed):
    torch.manual_seed(seed)
    layer = CrossAttention(8, 2, kdim=6).double()
    x, memory = randn(2, 3, 8, seed=seed), randn(2, 5, 6, seed=seed + 10)   # Lq = 3, Lk = 5
    y, w = layer(x, memory)
    pq = random_permutation(3, generator=torch.Generator().manual_seed(seed))
    pk = random_permutation(5, generator=torch.Generator().manual_seed(seed + 1))
    torch.testing.assert_close(layer(permute(x, pq), memory)[0], permute(y, pq))
    y2, w2 = layer(x, permute(memory, pk))
    torch.testing.assert_close(y2, y)                                     # invariant to the memory order
    torch.testing.assert_close(w2, permute(w, pk, dim=-1))


def test_equivariance_gap_rejects_bad_functions():
    x = randn(2, 4, 3)
    with pytest.raises(TypeError, match="callable"):
        equivariance_gap("not a function", x, torch.arange(4))
    with pytest.raises(ValueError, match="L = 4"):
        equivariance_gap(lambda z: z.mean(-2), x, torch.arange(4))
    with pytest.raises(ValueError, match="at least 2"):
        equivariance_gap(lambda z: z, randn(4), torch.arange(4))


# ---------------------------------------------------------------- tasks

def test_before_task_labels_match_a_loop():
    g = torch.Generator().manual_seed(0)
    tokens, labels = before_task(200, 9, 6, generator=g)
    assert tokens.shape == (200, 9) and labels.shape == (200,) and tokens.dtype == torch.long
    for row, label in zip(tokens.tolist(), labels.tolist()):
        assert row.count(0) == 1 and row.count(1) == 1
        assert all(2 <= t < 6 for t in row if t > 1)
        assert label == int(row.index(0) < row.index(1))
    assert 0.35 < labels.float().mean().item() < 0.65


def test_first_token_task_labels_are_the_first_distinct_token():
    tokens, labels = first_token_task(50, 6, 10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(labels, tokens[:, 0])
    assert all(len(set(row)) == 6 and max(row) < 10 for row in tokens.tolist())


def test_kv_retrieval_task_answers_match_a_lookup():
    keys, values, queries, targets, slots = kv_retrieval_task(40, 7, 4, 12, 10,
                                                             generator=torch.Generator().manual_seed(2))
    assert keys.shape == values.shape == (40, 7) and queries.shape == targets.shape == slots.shape == (40, 4)
    for b in range(40):
        memory = dict(zip(keys[b].tolist(), values[b].tolist()))
        assert len(memory) == 7                                          # distinct keys
        assert len(set(queries[b].tolist())) == 4
        for i, q in enumerate(queries[b].tolist()):
            assert targets[b, i].item() == memory[q]
            assert keys[b, slots[b, i]].item() == q


@pytest.mark.parametrize("call, error, words", [
    (lambda: before_task(4, 1, 5), ValueError, "length must be ≥ 2"),
    (lambda: before_task(4, 5, 2), ValueError, "vocab_size=2"),
    (lambda: before_task(4.0, 5, 5), TypeError, "batch"),
    (lambda: first_token_task(4, 8, 5), ValueError, "vocab_size=5"),
    (lambda: kv_retrieval_task(4, 3, 5, 10, 4), ValueError, "num_queries=5"),
    (lambda: kv_retrieval_task(4, 8, 2, 5, 4), ValueError, "num_keys=5"),
    (lambda: before_task(4, 5, 5, generator=0), TypeError, "generator"),
])
def test_tasks_reject_bad_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call()


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("positions", ["none", "sinusoidal", "learned", "rope"])
def test_order_classifier_is_invariant_exactly_without_positions(positions):
    torch.manual_seed(0)
    model = OrderClassifier(7, 3, dim=16, heads=2, max_length=10, positions=positions).double()
    if positions == "learned":
        torch.nn.init.normal_(model.learned.embedding.weight)            # make the table matter
    tokens, _ = before_task(4, 6, 7, generator=torch.Generator().manual_seed(0))
    logits, weights = model(tokens)
    assert logits.shape == (4, 3) and weights.shape == (4, 2, 6, 6)
    shuffled = tokens[:, [5, 2, 0, 4, 1, 3]]
    gap = (model(shuffled)[0] - logits).abs().max().item()
    assert (gap < 1e-12) if positions == "none" else (gap > 1e-4)


def test_order_classifier_rejects_bad_input():
    with pytest.raises(ValueError, match="positions must be one of"):
        OrderClassifier(5, 2, positions="absolute")
    with pytest.raises(ValueError, match="even head width"):
        OrderClassifier(5, 2, dim=6, heads=2, positions="rope")
    model = OrderClassifier(5, 2, max_length=4)
    with pytest.raises(ValueError, match="length 6 > max_length=4"):
        model(torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="0 … 4"):
        model(torch.full((1, 3), 5))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        model(torch.zeros(3, dtype=torch.long))


def test_retrieval_model_is_cross_attention_over_the_memory():
    torch.manual_seed(0)
    model = RetrievalModel(12, 10, dim=8, heads=2).double()
    keys, values, queries, _, _ = kv_retrieval_task(3, 7, 4, 12, 10, generator=torch.Generator().manual_seed(0))
    logits, weights = model(keys, values, queries)
    assert logits.shape == (3, 4, 10) and weights.shape == (3, 2, 4, 7)       # Lq = 4 ≠ Lk = 7
    # the same computation through torch's scaled_dot_product_attention
    a = model.cross.attn
    m = model.key_embed(keys) + model.value_embed(values)
    q, k, v = (t.unflatten(-1, (2, 4)).transpose(1, 2)
               for t in (a.q_proj(model.key_embed(queries)), a.k_proj(m), a.v_proj(m)))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2)
    torch.testing.assert_close(logits, model.readout(a.out_proj(out)))
    with pytest.raises(ValueError, match="same shape"):
        model(keys, values[:, :5], queries)
    with pytest.raises(ValueError, match="batch 2"):
        model(keys, values, queries[:2])


# ---------------------------------------------------------------- counting

@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_states_match_torch_rnn(dtype):
    torch.manual_seed(0)
    rnn = torch.nn.RNN(5, 4, batch_first=True).to(dtype)
    x = randn(3, 6, 5, dtype=dtype)
    want, _ = rnn(x)
    got = rnn_states(x, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0 + rnn.bias_hh_l0)
    torch.testing.assert_close(got, want, **tol(dtype))


def test_rnn_states_rejects_bad_shapes():
    x = randn(2, 4, 5)
    with pytest.raises(ValueError, match="w_ih must be"):
        rnn_states(x, randn(3, 4), randn(3, 3))
    with pytest.raises(ValueError, match=r"\(B, L, E\)"):
        rnn_states(randn(2, 3, 4, 5), randn(3, 5), randn(3, 3))
    with pytest.raises(ValueError, match=r"bias must be \(3,\)"):
        rnn_states(x, randn(3, 5), randn(3, 3), randn(4))


@pytest.mark.parametrize("length", [1, 3, 10, 33])
def test_sequential_depth_grows_with_the_rnn_and_not_with_attention(length):
    torch.manual_seed(0)
    x = randn(2, length, 8, grad=True)
    assert sequential_depth(rnn_states(x, randn(6, 8), randn(6, 6)), x) == length
    assert sequential_depth(SelfAttention(8, 2).double()(x)[0], x) == 4      # q/k proj, QKᵀ, AV, Wᴼ
    assert sequential_depth(MultiHeadAttention(8, 2).double()(x, x, x)[0], x) == 4


def test_sequential_depth_takes_the_longest_branch():
    x, w = randn(3, 3, grad=True), randn(3, 3)
    chain = x
    for _ in range(5):
        chain = chain @ w
    assert sequential_depth(chain + x @ w + torch.tanh(x), x) == 5
    assert sequential_depth((x * 2).sum(), x) == 0
    with pytest.raises(ValueError, match="does not depend"):
        sequential_depth(randn(3, 3, grad=True) @ w, x)
    with pytest.raises(ValueError, match="leaf"):
        sequential_depth(chain, chain)


@pytest.mark.parametrize("n, d", [(5, 8), (16, 4)])
def test_count_flops_matches_the_formulas(n, d):
    assert count_flops(torch.matmul, randn(n, d), randn(d, 3)) == 2 * n * d * 3
    layer = SelfAttention(d, 1).double()
    # four projections 4·(2·n·d·d) and two products QKᵀ and AV, 2·(2·n·n·d)
    assert count_flops(layer, randn(1, n, d)) == 8 * n * d * d + 4 * n * n * d
    assert count_flops(rnn_states, randn(1, n, d), randn(d, d), randn(d, d)) == 4 * n * d * d
    with pytest.raises(TypeError, match="callable"):
        count_flops(3)
    assert math.isfinite(count_flops(lambda: None))


# ---------------------------------------------------------------- the exercise check of §3.2

def _verdict(capsys, fn, seed=0):
    from attnbook.exercises import check_cross_attention

    result = check_cross_attention(fn, seed=seed)
    line = capsys.readouterr().out.strip()
    assert isinstance(result, bool) and line.startswith("✅ " if result else "❌ ")
    return result, line


@pytest.mark.parametrize("seed", [0, 3])
def test_check_cross_attention_accepts_independent_solutions(capsys, seed):
    sdpa = lambda y, x, wq, wk, wv: F.scaled_dot_product_attention(y @ wq, x @ wk, x @ wv)

    def loop(y, x, wq, wk, wv):                                   # one (b, i) at a time
        out = torch.zeros(y.shape[0], y.shape[1], wv.shape[1], dtype=y.dtype)
        for b in range(y.shape[0]):
            for i in range(y.shape[1]):
                w = torch.softmax((x[b] @ wk) @ (y[b, i] @ wq) / math.sqrt(wq.shape[1]), dim=0)
                out[b, i] = w @ (x[b] @ wv)
        return out

    assert _verdict(capsys, sdpa, seed) == (True, "✅ cross-attention is correct")
    assert _verdict(capsys, loop, seed)[0]
    with_weights = lambda y, x, wq, wk, wv: attention(y @ wq, x @ wk, x @ wv)
    assert _verdict(capsys, with_weights, seed)[0]


@pytest.mark.parametrize("fn, words", [
    (lambda y, x, wq, wk, wv: attention(y @ wq, x @ wk, x @ wv, scale=1.0)[0], "without the 1/√d"),
    (lambda y, x, wq, wk, wv: attention(y @ wq, x @ wk, x @ wv, scale=1 / 8)[0], "divided by d"),
    (lambda y, x, wq, wk, wv: torch.softmax((y @ wq) @ (x @ wk).mT / math.sqrt(8), -2) @ (x @ wv),
     "over the queries"),
    (lambda y, x, wq, wk, wv: torch.zeros(2, 7, 3, dtype=y.dtype), "must come from the target"),
    (lambda y, x, wq, wk, wv: attention(x @ wq, y @ wk, y @ wv), "raised RuntimeError"),    # roles swapped
    (lambda y, x, wq, wk, wv: (y @ wq) @ (x @ wk).mT, "expected shape (2, 5, 3)"),            # scores only
    (lambda y, x, wq, wk, wv: attention(y @ wq, x @ wk, x @ wv)[0].float() + 1, "differ"),
    (lambda y, x, wq, wk, wv: [1, 2], "torch.Tensor"),
])
def test_check_cross_attention_names_the_mistake(capsys, fn, words):
    result, line = _verdict(capsys, fn)
    assert not result and words in line
