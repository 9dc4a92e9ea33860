"""Score functions (§2.2) against brute-force loops and torch.nn.functional references."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attnbook
from attnbook import (AdditiveScore, additive_scores, cosine_scores, dot_scores, general_scores,
                      scaled_dot_scores)

DTYPES = [torch.float32, torch.float64]
FAST = settings(max_examples=12, deadline=None)


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)


def brute(pair, query, key):
    """s[..., i, j] = pair(query[..., i, :], key[..., j, :]) by explicit loops."""
    batch = query.shape[:-2]
    q = query.reshape(-1, *query.shape[-2:])
    k = key.reshape(-1, *key.shape[-2:])
    out = torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=torch.float64)
    for b in range(q.shape[0]):
        for i in range(q.shape[1]):
            for j in range(k.shape[1]):
                out[b, i, j] = pair(q[b, i].double(), k[b, j].double())
    return out.reshape(*batch, q.shape[1], k.shape[1]).to(query.dtype)


@st.composite
def qk(draw, same_width=True):
    """Random query (..., Lq, d_q) and key (..., Lk, d_k), non-square more often than not."""
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    lq, lk = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    dq = draw(st.integers(1, 6))
    dk = dq if same_width else draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    q = torch.randn(*batch, lq, dq, generator=g, dtype=dtype)
    k = torch.randn(*batch, lk, dk, generator=g, dtype=dtype)
    return q, k


# ---------------------------------------------------------------- values against references

@FAST
@given(qk())
def test_dot_scores_match_loop(pair):
    q, k = pair
    got = dot_scores(q, k)
    assert got.shape == (*q.shape[:-1], k.shape[-2]) and got.dtype == q.dtype
    torch.testing.assert_close(got, brute(lambda a, b: (a * b).sum(), q, k), **tol(q.dtype))


@FAST
@given(qk(), st.one_of(st.none(), st.floats(0.01, 10.0)))
def test_scaled_dot_scores_match_loop(pair, scale):
    q, k = pair
    factor = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    got = scaled_dot_scores(q, k, scale)
    torch.testing.assert_close(got, brute(lambda a, b: (a * b).sum() * factor, q, k),
                               **tol(q.dtype))


def test_scaled_dot_scores_default_scale_is_inverse_sqrt_width():
    q, k = torch.randn(2, 3, 16, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(scaled_dot_scores(q, k), dot_scores(q, k) / 4)
    torch.testing.assert_close(scaled_dot_scores(q, k, scale=0.5), dot_scores(q, k) * 0.5)


def test_scaling_keeps_score_variance_near_one_for_any_width():
    for d in (4, 64, 512):
        q, k = torch.randn(200, d, dtype=torch.float64), torch.randn(300, d, dtype=torch.float64)
        assert 0.8 < scaled_dot_scores(q, k).var().item() < 1.2
        assert dot_scores(q, k).var().item() > 0.7 * d


@FAST
@given(qk())
def test_cosine_scores_match_torch_cosine_similarity(pair):
    q, k = pair
    want = F.cosine_similarity(q.unsqueeze(-2), k.unsqueeze(-3), dim=-1, eps=1e-8)
    got = cosine_scores(q, k)
    torch.testing.assert_close(got, want, **tol(q.dtype))
    assert (got.abs() <= 1 + 1e-6).all()


def test_cosine_scores_are_invariant_to_positive_rescaling_and_safe_on_zero_vectors():
    q, k = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(cosine_scores(3.0 * q, 0.25 * k), cosine_scores(q, k))
    q[0, 1] = 0.0
    got = cosine_scores(q, k)
    assert torch.isfinite(got).all() and (got[0, 1] == 0).all()


@FAST
@given(qk(same_width=False))
def test_general_scores_match_torch_bilinear(pair):
    q, k = pair
    w = torch.randn(q.shape[-1], k.shape[-1], dtype=q.dtype)
    lq, lk = q.shape[-2], k.shape[-2]
    x1 = q.unsqueeze(-2).expand(*q.shape[:-2], lq, lk, q.shape[-1])
    x2 = k.unsqueeze(-3).expand(*k.shape[:-2], lq, lk, k.shape[-1])
    want = F.bilinear(x1, x2, w.unsqueeze(0)).squeeze(-1)
    torch.testing.assert_close(general_scores(q, k, w), want, **tol(q.dtype))


def test_general_scores_with_identity_weight_are_dot_scores():
    q, k = torch.randn(3, 4, 6, dtype=torch.float64), torch.randn(3, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(general_scores(q, k, torch.eye(6, dtype=torch.float64)), dot_scores(q, k))


@FAST
@given(qk(same_width=False), st.integers(1, 5))
def test_additive_scores_match_loop(pair, hidden):
    q, k = pair
    wq = torch.randn(hidden, q.shape[-1], dtype=q.dtype)
    wk = torch.randn(hidden, k.shape[-1], dtype=q.dtype)
    v = torch.randn(hidden, dtype=q.dtype)
    want = brute(lambda a, b: v.double() @ torch.tanh(wq.double() @ a + wk.double() @ b), q, k)
    torch.testing.assert_close(additive_scores(q, k, wq, wk, v), want, **tol(q.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_additive_score_module_uses_its_linear_layers(dtype):
    module = AdditiveScore(query_dim=3, key_dim=5, hidden_dim=4).to(dtype)
    q, k = torch.randn(2, 6, 3, dtype=dtype), torch.randn(2, 4, 5, dtype=dtype)
    got = module(q, k)
    assert got.shape == (2, 6, 4)
    wq, wk, v = module.w_query.weight, module.w_key.weight, module.v.weight[0]
    want = brute(lambda a, b: v.double() @ torch.tanh(wq.double() @ a + wk.double() @ b),
                 q.detach(), k.detach())
    torch.testing.assert_close(got.detach(), want, **tol(dtype))
    got.sum().backward()
    for p in module.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_scores_are_differentiable_like_the_reference():
    q = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 5, dtype=torch.float64)
    for fn, ref in ((scaled_dot_scores, lambda a, b: torch.einsum("bid,bjd->bij", a, b) / 2),
                    (cosine_scores, lambda a, b: F.cosine_similarity(a.unsqueeze(-2), b.unsqueeze(-3), dim=-1))):
        got = torch.autograd.grad((fn(q, k) * g).sum(), (q, k))
        want = torch.autograd.grad((ref(q, k) * g).sum(), (q, k))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_scores_table_lists_the_parameter_free_functions():
    from attnbook.scores import SCORES

    assert SCORES == {"dot": dot_scores, "scaled dot": scaled_dot_scores, "cosine": cosine_scores}
    assert attnbook.dot_scores is dot_scores


# ---------------------------------------------------------------- bad input

Q, K = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
PAIRS = [dot_scores, scaled_dot_scores, cosine_scores]


@pytest.mark.parametrize("fn", PAIRS)
@pytest.mark.parametrize("query, key, error, name", [
    (torch.randn(4), K, ValueError, "query"),               # rank 1
    (Q, torch.randn(4), ValueError, "key"),                 # rank 1
    (Q, torch.randn(3, 5, 4), ValueError, "batch"),          # batch 2 vs 3
    (Q, torch.randn(5, 4), ValueError, "batch"),             # batch () vs (2,)
    (Q, torch.randn(2, 5, 3), ValueError, "width"),          # d 4 vs 3
    (Q.to(torch.int64), K, TypeError, "query"),
    (Q, K.to(torch.int32), TypeError, "key"),
    (Q, K.double(), TypeError, "key"),                      # float32 vs float64
    (Q.tolist(), K, TypeError, "query"),
    (Q, None, TypeError, "key"),
    (Q.numpy(), K, TypeError, "query"),
])
def test_pair_functions_reject_bad_input(fn, query, key, error, name):
    with pytest.raises(error, match=name):
        fn(query, key)


@pytest.mark.parametrize("scale, error", [
    (0, ValueError), (-0.5, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
    ("0.5", TypeError), (True, TypeError), (torch.tensor(0.5), TypeError),
])
def test_scaled_dot_scores_rejects_bad_scale(scale, error):
    with pytest.raises(error, match="scale"):
        scaled_dot_scores(Q, K, scale)


@pytest.mark.parametrize("eps, error", [(0.0, ValueError), (-1e-8, ValueError), ("1e-8", TypeError)])
def test_cosine_scores_rejects_bad_eps(eps, error):
    with pytest.raises(error, match="eps"):
        cosine_scores(Q, K, eps=eps)


@pytest.mark.parametrize("weight, error", [
    (torch.randn(4, 5), ValueError),       # transposed
    (torch.randn(4, 4, 4), ValueError),    # rank 3
    (torch.randn(4), ValueError),          # rank 1
    (torch.randn(4, 4).int(), TypeError),
    ([[1.0] * 4] * 4, TypeError),
])
def test_general_scores_rejects_bad_weight(weight, error):
    with pytest.raises(error, match="weight"):
        general_scores(torch.randn(2, 3, 5), torch.randn(2, 6, 4), weight)


def test_general_scores_rejects_weight_of_another_dtype():
    with pytest.raises(TypeError, match="weight"):
        general_scores(torch.randn(2, 3, 5), torch.randn(2, 6, 4), torch.randn(5, 4, dtype=torch.float64))


def test_general_scores_rejects_bad_query_key():
    with pytest.raises(ValueError, match="batch"):
        general_scores(torch.randn(2, 3, 5), torch.randn(3, 6, 4), torch.randn(5, 4))
    with pytest.raises(TypeError, match="key"):
        general_scores(torch.randn(2, 3, 5), torch.randn(2, 6, 4).long(), torch.randn(5, 4))


def _additive_args():
    q, k = torch.randn(2, 3, 5), torch.randn(2, 6, 4)
    return dict(query=q, key=k, w_query=torch.randn(7, 5), w_key=torch.randn(7, 4), v=torch.randn(7))


@pytest.mark.parametrize("name, bad, error", [
    ("w_query", torch.randn(7, 4), ValueError),      # width of key, not query
    ("w_query", torch.randn(6, 5), ValueError),      # hidden size differs from v
    ("w_query", torch.randn(5), ValueError),         # rank 1
    ("w_key", torch.randn(7, 5), ValueError),
    ("w_key", torch.randn(7, 4).int(), TypeError),
    ("v", torch.randn(7, 1), ValueError),
    ("v", torch.tensor(1.0), ValueError),
    ("v", [1.0] * 7, TypeError),
    ("query", torch.randn(5), ValueError),
    ("key", torch.randn(3, 6, 4), ValueError),       # batch mismatch (message names both)
])
def test_additive_scores_rejects_bad_input(name, bad, error):
    args = _additive_args()
    args[name] = bad
    with pytest.raises(error, match=name if name != "key" else "batch"):
        additive_scores(**args)


def test_additive_scores_rejects_parameters_of_another_dtype():
    args = _additive_args()
    args["w_query"] = args["w_query"].double()
    with pytest.raises(TypeError, match="w_query"):
        additive_scores(**args)
