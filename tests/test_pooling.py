import pytest
import torch
import torch.nn.functional as F

from attnbook.pooling import (AttentionPooling, FixedPooling, MeanPooling, PatchClassifier, attention_pool,
                              weighted_average)
from support import randn


def _loop_pool(x, scores, mask=None, temperature=1.0):
    """Brute force: a softmax over the allowed positions of each row, then a weighted sum."""
    b, n, d = x.shape
    pooled, weights = torch.zeros(b, d, dtype=x.dtype), torch.zeros(b, n, dtype=x.dtype)
    for i in range(b):
        allowed = [j for j in range(n) if mask is None or mask[i, j]]
        if not allowed:
            continue
        e = [torch.exp(scores[i, j] / temperature) for j in allowed]
        total = sum(e)
        for j, ej in zip(allowed, e):
            weights[i, j] = ej / total
            pooled[i] += weights[i, j] * x[i, j]
    return pooled, weights


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_attention_pool_matches_a_loop_with_a_mask(temperature):
    x, scores = randn(3, 7, 5, seed=1), randn(3, 7, seed=2)
    mask = randn(3, 7, seed=3) > 0.0
    mask[:, 0] = True
    mask[2] = False                                             # a fully masked row
    pooled, weights = attention_pool(x, scores, mask, temperature=temperature)
    want_pooled, want_weights = _loop_pool(x, scores, mask, temperature)
    torch.testing.assert_close(pooled, want_pooled)
    torch.testing.assert_close(weights, want_weights)
    torch.testing.assert_close(weights[:2].sum(-1), torch.ones(2, dtype=x.dtype))
    assert (weights[~mask] == 0).all() and not pooled.isnan().any()
    assert (pooled[2] == 0).all()


def test_weighted_average_is_a_batched_matrix_product():
    x, a = randn(4, 6, 3), torch.softmax(randn(4, 6, seed=1), -1)
    torch.testing.assert_close(weighted_average(x, a), (a.unsqueeze(1) @ x).squeeze(1))


def test_attention_pooling_is_additive_scoring_with_a_learned_query():
    torch.manual_seed(0)
    pool = AttentionPooling(5, hidden=3).double()
    x = randn(2, 9, 5)
    scores = (torch.tanh(x @ pool.key.weight.T + pool.key.bias) @ pool.query.weight.T).squeeze(-1)
    torch.testing.assert_close(pool.scores(x), scores)
    pooled, weights = pool(x)
    torch.testing.assert_close(weights, torch.softmax(scores, -1))
    # the same thing as scaled-dot-product attention with one query w, keys tanh(Wx + b), values x
    keys = torch.tanh(pool.key(x))
    query = pool.query.weight.expand(2, 1, 3)
    torch.testing.assert_close(pooled, F.scaled_dot_product_attention(query, keys, x, scale=1.0).squeeze(1))


def test_attention_pooling_follows_its_input():
    """Permuting the set permutes the weights and leaves the pooled vector unchanged."""
    torch.manual_seed(0)
    pool = AttentionPooling(4).double()
    x = randn(2, 6, 4)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    pooled, weights = pool(x)
    pooled_p, weights_p = pool(x[:, perm])
    torch.testing.assert_close(weights_p, weights[:, perm])
    torch.testing.assert_close(pooled_p, pooled)
    assert not torch.allclose(weights[0], weights[1])           # two inputs, two weightings


def test_temperature_moves_between_the_best_patch_and_the_mean():
    torch.manual_seed(0)
    pool = AttentionPooling(4).double()
    x = randn(3, 5, 4)
    hot, _ = pool(x, temperature=1e9)
    torch.testing.assert_close(hot, x.mean(1))
    _, cold = pool(x, temperature=1e-4)
    best = pool.scores(x).argmax(-1)
    torch.testing.assert_close(cold, F.one_hot(best, 5).double())


def test_mean_pooling_is_the_masked_mean():
    x = randn(3, 6, 2)
    mask = torch.tensor([[True] * 6, [True, False] * 3, [False, False, True, True, True, False]])
    pooled, weights = MeanPooling()(x, mask)
    want = torch.stack([x[i][mask[i]].mean(0) for i in range(3)])
    torch.testing.assert_close(pooled, want)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, dtype=x.dtype))


def test_fixed_pooling_uses_the_same_weights_for_every_input():
    pool = FixedPooling(6).double()
    with torch.no_grad():
        pool.logits.copy_(torch.arange(6.0))
    x = randn(4, 6, 3)
    pooled, weights = pool(x)
    torch.testing.assert_close(weights, torch.softmax(torch.arange(6.0, dtype=x.dtype), -1).expand(4, 6))
    torch.testing.assert_close(pooled, weighted_average(x, weights))


@pytest.mark.parametrize("pooling", ["mean", "fixed", "attention"])
def test_patch_classifier_shapes(pooling):
    model = PatchClassifier(pooling, image_size=24, patch_size=8, dim=6, classes=3)
    logits, weights = model(torch.rand(2, 3, 24, 24))
    assert logits.shape == (2, 3) and weights.shape == (2, 3, 3)
    torch.testing.assert_close(weights.sum((1, 2)), torch.ones(2))
    assert model.features(torch.rand(5, 3, 24, 24)).shape == (5, 9, 6)


def test_attention_pooling_learns_to_pick_the_marked_element():
    """Sets of 6 vectors; the label is the sign of feature 0 of the one element marked by feature 1.
    Attention pooling can select that element; mean pooling cannot."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, 4, generator=g)
    x[..., 1] = 0.0
    marked = torch.randint(6, (256,), generator=g)
    x[torch.arange(256), marked, 1] = 3.0
    y = (x[torch.arange(256), marked, 0] > 0).long()
    accuracy = {}
    for name, pool in (("attention", AttentionPooling(4, hidden=8)), ("mean", MeanPooling())):
        torch.manual_seed(0)
        head = torch.nn.Linear(4, 2)
        params = list(pool.parameters()) + list(head.parameters())
        for _ in range(100):                                    # plain gradient descent
            loss = F.cross_entropy(head(pool(x)[0]), y)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, grad in zip(params, grads):
                    p -= 0.5 * grad
        accuracy[name] = (head(pool(x)[0]).argmax(-1) == y).float().mean().item()
    assert accuracy["attention"] > 0.9 and accuracy["mean"] < 0.75, accuracy


@pytest.mark.parametrize("call, error, words", [
    (lambda: attention_pool(torch.rand(2, 5), torch.rand(2, 5)), ValueError, "at least 3"),
    (lambda: attention_pool(torch.rand(2, 5, 3), torch.rand(2, 4)), ValueError, r"scores must be \(B, N\)"),
    (lambda: attention_pool(torch.rand(2, 5, 3), torch.rand(2, 5), torch.ones(2, 5)), TypeError, "boolean"),
    (lambda: attention_pool(torch.rand(2, 5, 3), torch.rand(2, 5), torch.ones(3, 5, dtype=torch.bool)),
     ValueError, "mask has shape"),
    (lambda: attention_pool(torch.rand(2, 5, 3), torch.rand(2, 5), temperature=0.0), ValueError, "temperature"),
    (lambda: weighted_average(torch.rand(2, 5, 3), torch.rand(2, 3)), ValueError, "weights must be"),
    (lambda: AttentionPooling(4)(torch.rand(2, 5, 3)), ValueError, "width 3"),
    (lambda: AttentionPooling(4)(torch.ones(2, 5, 4, dtype=torch.long)), TypeError, "floating"),
    (lambda: FixedPooling(6)(torch.rand(2, 5, 3)), ValueError, "N=5"),
    (lambda: PatchClassifier("max"), ValueError, "pooling"),
    (lambda: PatchClassifier(image_size=30, patch_size=4), ValueError, "does not divide"),
    (lambda: PatchClassifier()(torch.rand(2, 1, 32, 32)), ValueError, r"\(B, 3, 32, 32\)"),
])
def test_bad_input_is_rejected(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_the_exercise_check_accepts_the_library_and_names_common_mistakes(capsys):
    from attnbook.exercises import check_attention_pool

    assert check_attention_pool(attention_pool)
    assert not check_attention_pool(lambda x, s, m: attention_pool(x, s, ~m))
    assert "inverted" in capsys.readouterr().out

    def nan_row(x, s, m):
        a = torch.softmax(s.masked_fill(~m, float("-inf")), -1)
        return (a.unsqueeze(-1) * x).sum(1), a

    assert not check_attention_pool(nan_row)
    assert "zero weights" in capsys.readouterr().out
