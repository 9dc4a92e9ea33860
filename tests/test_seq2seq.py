"""The toy tasks and the encoder-decoder of §1.2 against brute force and the rnn.py modules."""
import pytest
import torch

from attnbook.exercises import check_bahdanau_scores
from attnbook.rnn import BahdanauAttention, RNNEncoder
from attnbook.seq2seq import (BOS, EOS, PAD, Batch, Seq2Seq, accuracy_by_length, bahdanau_step,
                              encoder_jacobian_norms, greedy_decode, make_batch, position_accuracy,
                              sequence_loss, target_of, token_labels)

V = 9  # 6 symbols


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def model(attention, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    return Seq2Seq(V, 5, 6, attention=attention, attn_dim=4, **kwargs).to(dtype)


# ------------------------------------------------------------------------- the task

@pytest.mark.parametrize("task", ["reverse", "copy"])
def test_make_batch_matches_a_loop(task):
    b = make_batch(7, 2, 6, vocab=V, task=task, generator=gen(3))
    assert isinstance(b, Batch) and b.src.shape == (7, int(b.lengths.max()))
    assert b.tgt_in.shape == b.tgt_out.shape == (7, b.src.shape[1] + 1)
    assert set(b.lengths.tolist()) <= set(range(2, 7)) and len(set(b.lengths.tolist())) > 1
    for row in range(7):
        n = int(b.lengths[row])
        x = b.src[row].tolist()
        assert all(3 <= t < V for t in x[:n]) and x[n:] == [PAD] * (len(x) - n)
        assert b.src_mask[row].tolist() == [True] * n + [False] * (len(x) - n)
        y = x[:n][::-1] if task == "reverse" else x[:n]
        pad = [PAD] * (b.tgt_in.shape[1] - n - 1)
        assert b.tgt_in[row].tolist() == [BOS] + y + pad
        assert b.tgt_out[row].tolist() == y + [EOS] + pad


def test_make_batch_is_deterministic_given_the_generator():
    a, b, c = (make_batch(5, 3, 8, vocab=V, generator=gen(s)) for s in (1, 1, 2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.src, c.src) or not torch.equal(a.lengths, c.lengths)
    fixed = make_batch(4, 5, vocab=V, generator=gen(0))
    assert fixed.lengths.tolist() == [5] * 4 and fixed.src_mask.all()


def test_target_of_and_labels():
    x = torch.tensor([3, 4, 5])
    assert target_of(x).tolist() == [5, 4, 3] and target_of(x, "copy").tolist() == [3, 4, 5]
    assert token_labels(torch.tensor([PAD, BOS, EOS, 3, 4, 28, 29])) == ["·", "<s>", "</s>", "a", "b", "z", "29"]


@pytest.mark.parametrize("args, kwargs, error, words", [
    ((0, 3), dict(vocab=V), ValueError, "batch"),
    ((2, 0), dict(vocab=V), ValueError, "min_len"),
    ((2, 5, 3), dict(vocab=V), ValueError, "max_len must be >= min_len"),
    ((2, 3), dict(vocab=3), ValueError, "vocab"),
    ((2.0, 3), dict(vocab=V), TypeError, "batch"),
    ((2, 3), dict(vocab=V, task="sort"), ValueError, "task"),
    ((2, 3), dict(vocab=V, generator=0), TypeError, "generator"),
])
def test_make_batch_rejects_bad_arguments(args, kwargs, error, words):
    with pytest.raises(error, match=words):
        make_batch(*args, **kwargs)


# ------------------------------------------------------------------------- attention

def test_bahdanau_step_is_a_brute_force_weighted_sum_and_the_library_call():
    torch.manual_seed(0)
    attn = BahdanauAttention(3, 5, 4).double()
    s, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 7, 5, dtype=torch.float64)
    mask = torch.arange(7) < torch.tensor([[7], [4]])
    context, weights = bahdanau_step(attn, s, h, mask)
    W, U, v = attn.score.w_query.weight, attn.score.w_key.weight, attn.score.v.weight[0]
    for b in range(2):
        n = int(mask[b].sum())
        e = torch.stack([v @ torch.tanh(W @ s[b] + U @ h[b, j]) for j in range(n)])
        a = torch.exp(e) / torch.exp(e).sum()
        torch.testing.assert_close(weights[b, :n], a)
        assert (weights[b, n:] == 0).all()  # padding gets exactly zero weight
        torch.testing.assert_close(context[b], sum(a[j] * h[b, j] for j in range(n)))
    want_c, want_w = attn(s, h, None, mask)
    torch.testing.assert_close(context, want_c)
    torch.testing.assert_close(weights, want_w)


@pytest.mark.parametrize("attention", [True, False])
def test_forward_equals_the_rnn_modules_step_by_step(attention):
    m = model(attention)
    b = make_batch(4, 2, 6, vocab=V, generator=gen(1))
    logits, weights = m(b.src, b.src_mask, b.tgt_in)
    states, final = m.encoder(b.src, b.src_mask)
    want_logits, want_weights = m.decoder(b.tgt_in, states, b.src_mask, encoder_final=final)
    assert logits.shape == (4, b.tgt_in.shape[1], V)
    torch.testing.assert_close(logits, want_logits)
    if attention:
        torch.testing.assert_close(weights, want_weights)
        assert weights.shape == (4, b.tgt_in.shape[1], b.src.shape[1])
    else:
        assert weights is None and want_weights is None


@pytest.mark.parametrize("attention", [True, False])
def test_padding_is_ignored_a_row_does_not_depend_on_its_batch(attention):
    m = model(attention)
    b = make_batch(3, 2, 7, vocab=V, generator=gen(4))
    logits, weights = m(b.src, b.src_mask, b.tgt_in)
    for row in range(3):
        n = int(b.lengths[row])
        alone, w_alone = m(b.src[row:row + 1, :n], b.src_mask[row:row + 1, :n], b.tgt_in[row:row + 1, :n + 1])
        torch.testing.assert_close(logits[row:row + 1, :n + 1], alone)
        if attention:
            assert (weights[row, :, n:] == 0).all()
            torch.testing.assert_close(weights[row:row + 1, :n + 1, :n], w_alone)
            torch.testing.assert_close(weights.sum(-1), torch.ones(3, b.tgt_in.shape[1], dtype=weights.dtype))


def test_the_model_without_attention_sees_only_the_final_state():
    m = model(False)
    b = make_batch(2, 6, vocab=V, generator=gen(5))
    states, final = m.encoder(b.src, b.src_mask)
    changed = states.clone()
    changed[:, 1:-1] += 1.0  # states that the final state [h→_{n−1}; h←_0] does not hold
    torch.testing.assert_close(m._decode(states, b.src_mask, final, tgt_in=b.tgt_in)[0],
                               m._decode(changed, b.src_mask, final, tgt_in=b.tgt_in)[0])
    m_att = model(True)
    states, final = m_att.encoder(b.src, b.src_mask)
    changed = states.clone()
    changed[:, 1:-1] += 1.0
    assert not torch.allclose(m_att._decode(states, b.src_mask, final, tgt_in=b.tgt_in)[0],
                              m_att._decode(changed, b.src_mask, final, tgt_in=b.tgt_in)[0])


def test_loss_is_the_mean_cross_entropy_over_real_targets():
    m = model(True)
    b = make_batch(3, 2, 5, vocab=V, generator=gen(6))
    logits, _ = m(b.src, b.src_mask, b.tgt_in)
    logp = logits.log_softmax(-1)
    terms = [-logp[r, i, b.tgt_out[r, i]] for r in range(3) for i in range(b.tgt_out.shape[1])
             if b.tgt_out[r, i] != PAD]
    torch.testing.assert_close(sequence_loss(m, b), torch.stack(terms).mean())


# ------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("attention", [True, False])
def test_greedy_decoding_follows_the_argmax_of_teacher_forcing(attention):
    m = model(attention)
    b = make_batch(4, 3, 6, vocab=V, generator=gen(7))
    tokens, weights = greedy_decode(m, b.src, b.src_mask, 5)
    assert tokens.shape == (4, 5) and tokens.dtype == torch.long
    assert (weights is None) != attention and (weights is None or weights.shape == (4, 5, b.src.shape[1]))
    fed = torch.cat([torch.full((4, 1), BOS), tokens[:, :-1]], 1)
    logits, _ = m(b.src, b.src_mask, fed)
    for r in range(4):
        stop = (tokens[r] == EOS).nonzero()
        end = int(stop[0]) + 1 if len(stop) else 5
        assert torch.equal(tokens[r, :end], logits[r, :end].argmax(-1))


def test_greedy_decoding_pads_after_the_first_eos():
    m = model(True)
    b = make_batch(3, 4, vocab=V, generator=gen(8))
    with torch.no_grad():
        m.decoder.out.bias[EOS] = 100.0  # EOS always wins
    tokens, weights = greedy_decode(m, b.src, b.src_mask, 4)
    assert tokens[:, 0].tolist() == [EOS] * 3 and (tokens[:, 1:] == PAD).all()
    assert (weights[:, 1:] == 0).all() and torch.allclose(weights[:, 0].sum(-1), torch.ones(3, dtype=weights.dtype))
    acc = accuracy_by_length(m, [2, 3], per_length=5, generator=gen(0))
    assert acc["sequence"].tolist() == [0.0, 0.0] and acc["token"].tolist() == [0.0, 0.0]
    with torch.no_grad():
        m.decoder.out.bias[EOS] = -100.0
        m.decoder.out.bias[3] = 100.0  # always the first symbol: right where the target is "a"
    b = make_batch(6, 3, vocab=V, generator=gen(9))
    want = (b.tgt_out == 3).float().mean()
    assert accuracy_by_length(m, [3], per_length=6, generator=gen(9))["token"].item() == pytest.approx(want.item())
    right = (b.tgt_out == 3)
    torch.testing.assert_close(position_accuracy(m, b), right.float().mean(0))


def test_accuracy_by_length_matches_a_loop():
    m = model(True, dtype=torch.float32)
    acc = accuracy_by_length(m, [2, 4], per_length=8, generator=gen(2))
    g = gen(2)
    for k, n in enumerate([2, 4]):
        b = make_batch(8, n, vocab=V, generator=g)
        out, _ = greedy_decode(m, b.src, b.src_mask, n + 1)
        rows = [out[r].tolist() == b.tgt_out[r].tolist() for r in range(8)]
        assert acc["sequence"][k].item() == pytest.approx(sum(rows) / 8)
        assert acc["token"][k].item() == pytest.approx((out == b.tgt_out).float().mean().item())
        assert 0 <= acc["sequence"][k] <= acc["token"][k] <= 1


# ------------------------------------------------------------------------- gradients

def test_jacobian_norms_match_autograd_jacobian():
    torch.manual_seed(0)
    enc = RNNEncoder(V, 5, 4).double()
    src = make_batch(2, 6, vocab=V, generator=gen(3)).src
    norms = encoder_jacobian_norms(enc, src)
    assert norms.shape == (2, 6, 2)
    x = enc.embed(src).detach()
    for r in range(2):
        jac = torch.autograd.functional.jacobian(lambda e: enc.rnn(e[None])[1][:, 0], x[r])  # (2, 4, n, emb)
        torch.testing.assert_close(norms[r], jac.pow(2).sum((1, 3)).sqrt().T)
    # untrained, the gradient decays with the number of steps between x_j and where a direction stops
    assert norms[..., 0].mean(0)[0] < norms[..., 0].mean(0)[-1]
    assert norms[..., 1].mean(0)[-1] < norms[..., 1].mean(0)[0]


# ------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("make, error, words", [
    (lambda b: (b.src.float(), b.src_mask, b.tgt_in), TypeError, "src must hold int64"),
    (lambda b: (b.src, b.src_mask.long(), b.tgt_in), TypeError, "src_mask must be a boolean"),
    (lambda b: (b.src, b.src_mask[:, :-1], b.tgt_in), ValueError, r"src_mask has shape \(2, 3\)"),
    (lambda b: (b.src + V, b.src_mask, b.tgt_in), ValueError, "src must hold ids in 0..8"),
    (lambda b: (b.src, b.src_mask, b.tgt_in[:1]), ValueError, "tgt_in has batch size 1"),
    (lambda b: (b.src[0], b.src_mask[0], b.tgt_in), ValueError, r"src must have shape \(B, L\)"),
])
def test_forward_rejects_bad_input(make, error, words):
    b = make_batch(2, 4, vocab=V, generator=gen(0))
    with pytest.raises(error, match=words):
        model(True)(*make(b))


def test_other_functions_reject_bad_input():
    b = make_batch(2, 4, vocab=V, generator=gen(0))
    m = model(True)
    with pytest.raises(TypeError, match="attention must be True or False"):
        Seq2Seq(V, attention="bahdanau")
    with pytest.raises(ValueError, match="steps"):
        greedy_decode(m, b.src, b.src_mask, 0)
    with pytest.raises(TypeError, match="model must be a Seq2Seq"):
        greedy_decode(m.encoder, b.src, b.src_mask, 3)
    with pytest.raises(TypeError, match="batch must be a seq2seq.Batch"):
        sequence_loss(m, tuple(b))
    with pytest.raises(ValueError, match="lengths must hold"):
        accuracy_by_length(m, [])
    with pytest.raises(TypeError, match="encoder must be an RNNEncoder"):
        encoder_jacobian_norms(m, b.src)
    with pytest.raises(TypeError, match="attention must be a BahdanauAttention"):
        bahdanau_step(torch.nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, 3, 2), torch.ones(1, 3, dtype=torch.bool))


# ------------------------------------------------------------------------- the exercise check

def test_check_bahdanau_scores_accepts_a_solution_and_names_mistakes(capsys):
    right = lambda s, h, W, U, v: torch.tanh((s @ W.T)[:, None] + h @ U.T) @ v  # noqa: E731
    assert check_bahdanau_scores(right) is True
    mistakes = [
        (lambda s, h, W, U, v: torch.softmax(right(s, h, W, U, v), -1), "these are the weights"),
        (lambda s, h, W, U, v: ((s @ W.T)[:, None] + h @ U.T) @ v, "the tanh is missing"),
        (lambda s, h, W, U, v: (torch.tanh(s @ W.T)[:, None] + torch.tanh(h @ U.T)) @ v, "separately"),
        (lambda s, h, W, U, v: torch.tanh(((s @ W.T)[:, None] + h @ U.T) @ v), "after the tanh"),
        (lambda s, h, W, U, v: torch.tanh((s @ W)[:, None] + h @ U.T) @ v, "raised RuntimeError"),
        (lambda s, h, W, U, v: right(s, h, W, U, v).T, "expected shape (2, 7)"),
    ]
    capsys.readouterr()
    for fn, words in mistakes:
        assert check_bahdanau_scores(fn) is False
        assert words in capsys.readouterr().out
