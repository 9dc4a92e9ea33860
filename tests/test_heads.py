"""attnbook.heads (§3.3): the two-relation task, the ablatable model, relation scores, FLOPs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attnbook import MultiHeadAttention
from attnbook.heads import (IGNORE, HeadsModel, ablation_accuracies, accuracy,
                            marked_token_targets, multihead_flops, previous_token_targets,
                            relation_scores, task_loss, token_names, two_relation_task)


# ---------------------------------------------------------------- the task

@pytest.mark.parametrize("batch, length, vocab", [(7, 8, 6), (3, 5, 3), (4, 2, 9)])
def test_task_labels_by_brute_force(batch, length, vocab):
    data = two_relation_task(batch, length, vocab, generator=torch.Generator().manual_seed(1))
    assert data.tokens.shape == data.targets.shape == (batch, length) and data.marked.shape == (batch,)
    for b in range(batch):
        row = data.tokens[b].tolist()
        marked = [j for j, t in enumerate(row) if t >= vocab]
        assert marked == [data.marked[b].item()], "exactly one marked token, at `marked`"
        assert all(0 <= t < 2 * vocab for t in row)
        symbol = [t % vocab for t in row]
        assert data.targets[b, 0].item() == IGNORE
        for i in range(1, length):
            assert data.targets[b, i].item() == vocab * symbol[i - 1] + symbol[marked[0]]


def test_task_is_reproducible_and_uses_every_symbol_and_position():
    a = two_relation_task(500, 6, 4, generator=torch.Generator().manual_seed(3))
    b = two_relation_task(500, 6, 4, generator=torch.Generator().manual_seed(3))
    c = two_relation_task(500, 6, 4, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.tokens, c.tokens)
    assert set(a.marked.tolist()) == set(range(6))
    assert set((a.tokens % 4).flatten().tolist()) == set(range(4))


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(batch=0), ValueError, "batch"),
    (dict(batch=2, length=1), ValueError, "length"),
    (dict(batch=2, vocab=1), ValueError, "vocab"),
    (dict(batch=2.0), TypeError, "batch"),
    (dict(batch=2, generator=0), TypeError, "generator"),
])
def test_task_rejects_bad_input(kwargs, error, name):
    with pytest.raises(error, match=name):
        two_relation_task(**kwargs)


def test_token_names():
    assert token_names(torch.tensor([2, 0, 7, 5]), 6) == ["c", "a", "*B", "f"]
    with pytest.raises(ValueError, match="tokens"):
        token_names(torch.tensor([0, 12]), 6)
    with pytest.raises(ValueError, match="tokens"):
        token_names(torch.zeros(2, 3, dtype=torch.long), 6)


# ---------------------------------------------------------------- the model

def small_model(heads=2, seed=0):
    torch.manual_seed(seed)
    model = HeadsModel(vocab=4, length=6, embed_dim=12, num_heads=heads, hidden_dim=10).double().eval()
    with torch.no_grad():  # make the biases matter
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_model_equals_a_reference_built_on_torch_multihead_attention():
    model = small_model(heads=3)
    ref = nn.MultiheadAttention(12, 3, batch_first=True, dtype=torch.float64).eval()
    with torch.no_grad():
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    model.attn = MultiHeadAttention.from_torch(ref)
    tokens = two_relation_task(5, 6, 4, generator=torch.Generator().manual_seed(0)).tokens[:, :5]
    x = model.token.weight[tokens % 4] + model.mark.weight[(tokens >= 4).long()] + model.position.weight[:5]
    z = model.norm1(x)
    y, w = ref(z, z, z, need_weights=True, average_attn_weights=False)
    x = x + y
    x = x + model.ffn.linear2(torch.relu(model.ffn.linear1(model.norm2(x))))
    logits, weights = model(tokens)
    torch.testing.assert_close(logits, model.readout(model.norm3(x)))
    torch.testing.assert_close(weights, w)
    assert logits.shape == (5, 5, 16) and weights.shape == (5, 3, 5, 5)


@pytest.mark.parametrize("heads", [2, 3])
def test_ablating_a_head_equals_zeroing_its_rows_of_w_o(heads):
    model = small_model(heads)
    tokens = two_relation_task(4, 6, 4, generator=torch.Generator().manual_seed(2)).tokens
    d = 12 // heads
    for i in range(heads):
        cut = copy.deepcopy(model)
        with torch.no_grad():  # y = z Wᴼᵀ in torch's layout: head i meets columns i·d..(i+1)·d of the weight
            cut.attn.out_proj.weight[:, i * d:(i + 1) * d] = 0
        mask = torch.ones(heads, dtype=torch.float64)
        mask[i] = 0
        torch.testing.assert_close(model(tokens, mask)[0], cut(tokens)[0])
        assert not torch.allclose(model(tokens, mask)[0], model(tokens)[0])
    torch.testing.assert_close(model(tokens, torch.ones(heads, dtype=torch.float64))[0], model(tokens)[0])


def test_accuracy_and_ablation_against_a_direct_count():
    model = small_model(heads=2)
    data = two_relation_task(50, 6, 4, generator=torch.Generator().manual_seed(5))
    rows = ablation_accuracies(model, data)
    assert rows.shape == (2, 3)
    for i in range(2):
        mask = torch.ones(2, dtype=torch.float64)
        mask[i] = 0
        pred = model(data.tokens, mask)[0].argmax(-1)
        right = [(pred[b, j].item(), data.targets[b, j].item()) for b in range(50) for j in range(1, 6)]
        want = [sum(p == t for p, t in right) / len(right), sum(p // 4 == t // 4 for p, t in right) / len(right),
                sum(p % 4 == t % 4 for p, t in right) / len(right)]
        torch.testing.assert_close(rows[i], torch.tensor(want, dtype=rows.dtype))
        assert accuracy(model, data, mask).pair == pytest.approx(want[0])


def test_a_short_training_run_lowers_the_loss():
    torch.manual_seed(0)
    model = HeadsModel(vocab=3, length=4, embed_dim=8, num_heads=2, hidden_dim=8)
    data = two_relation_task(64, 4, 3, generator=torch.Generator().manual_seed(0))
    before = task_loss(model, data).item()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        optimiser.zero_grad()
        task_loss(model, data).backward()
        optimiser.step()
    assert task_loss(model, data).item() < 0.8 * before


def test_model_rejects_bad_input():
    model = small_model()
    good = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        model(torch.full((2, 6), 8))
    with pytest.raises(TypeError, match="tokens"):
        model(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="head_mask"):
        model(good, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_heads"):
        HeadsModel(embed_dim=12, num_heads=5)
    with pytest.raises(TypeError, match="batch"):
        accuracy(model, good)
    with pytest.raises(TypeError, match="model"):
        ablation_accuracies(nn.Linear(2, 2), two_relation_task(2, 6, 4))


# ---------------------------------------------------------------- relations

def test_relation_targets_by_brute_force():
    prev = previous_token_targets(5)
    assert prev.tolist() == [[j == i - 1 for j in range(5)] for i in range(5)]
    marked = marked_token_targets(torch.tensor([2, 0]), 4)
    assert marked.shape == (2, 4, 4)
    assert marked.tolist() == [[[j == m for j in range(4)] for _ in range(4)] for m in (2, 0)]


def test_relation_scores_on_hand_made_weights():
    L = 5
    one_hot_prev = torch.eye(L).roll(-1, dims=1)        # row i: weight 1 on key i-1 (row 0 wraps, left out)
    uniform = torch.full((L, L), 1 / L)
    weights = torch.stack([one_hot_prev, uniform])[None]  # (1, 2, L, L)
    torch.testing.assert_close(relation_scores(weights, previous_token_targets(L)), torch.tensor([1.0, 1 / L]))
    on_marked = F.one_hot(torch.tensor(3), L).float().expand(L, L)
    weights = torch.stack([uniform, on_marked, 0.5 * (on_marked + one_hot_prev)])[None]
    scores = relation_scores(weights, marked_token_targets(torch.tensor([3]), L))
    torch.testing.assert_close(scores, torch.tensor([1 / L, 1.0, 0.5 + 0.5 * 0.2]))  # query 4 looks at 3 too


def test_relation_scores_against_a_loop_on_non_square_weights():
    g = torch.Generator().manual_seed(0)
    weights = torch.softmax(torch.randn(3, 2, 4, 6, generator=g), -1)
    targets = torch.rand(3, 4, 6, generator=g) > 0.7
    targets[0, 1] = False                                # a query without target is left out
    want = torch.zeros(2)
    for h in range(2):
        terms = [sum(weights[b, h, i, j] for j in range(6) if targets[b, i, j])
                 for b in range(3) for i in range(4) if targets[b, i].any()]
        want[h] = sum(terms) / len(terms)
    torch.testing.assert_close(relation_scores(weights, targets), want)


def test_relation_scores_reject_bad_input():
    w = torch.softmax(torch.randn(2, 2, 4, 4), -1)
    with pytest.raises(TypeError, match="targets"):
        relation_scores(w, torch.ones(4, 4))
    with pytest.raises(ValueError, match="targets"):
        relation_scores(w, torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no True"):
        relation_scores(w, torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="weights"):
        relation_scores(w[0], previous_token_targets(4))
    with pytest.raises(ValueError, match="marked"):
        marked_token_targets(torch.tensor([4]), 4)
    with pytest.raises(TypeError, match="marked"):
        marked_token_targets(torch.tensor([1.0]), 4)


# ---------------------------------------------------------------- cost

@pytest.mark.parametrize("heads", [1, 2, 4, 8])
def test_multihead_flops_against_torch_flop_counter(heads):
    layer = MultiHeadAttention(16, heads)
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    with FlopCounterMode(display=False) as counter:
        layer(q, kv, kv)
    assert counter.get_total_flops() == multihead_flops(2, 3, 7, 16, heads)
    assert multihead_flops(2, 3, 7, 16, heads) == multihead_flops(2, 3, 7, 16, 1)


def test_multihead_flops_rejects_bad_input():
    with pytest.raises(ValueError, match="num_heads"):
        multihead_flops(1, 3, 7, 16, 3)
    with pytest.raises(TypeError, match="lq"):
        multihead_flops(1, 3.0, 7, 16, 2)


# ---------------------------------------------------------------- the exercise check of §3.3

def test_check_split_heads_accepts_the_reference_and_names_the_usual_mistakes(capsys):
    from attnbook import merge_heads, split_heads
    from attnbook.exercises import check_split_heads

    assert check_split_heads(split_heads, merge_heads)
    mistakes = [
        (lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1), None, "reshape"),
        (lambda x, h: x.unflatten(-1, (h, -1)), None, "transpose"),
        (lambda x, h: x.unflatten(-1, (-1, h)).permute(0, 3, 1, 2), None, "every h-th"),
        (split_heads, lambda t: t.reshape(t.shape[0], t.shape[2], -1), "merge"),
        (lambda x, h: 1 / 0, None, "ZeroDivisionError"),
    ]
    for split, merge, words in mistakes:
        capsys.readouterr()
        assert not check_split_heads(split, merge)
        assert words in capsys.readouterr().out
