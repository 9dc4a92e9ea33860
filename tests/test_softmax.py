"""masked_softmax and entropy (§2.3) against torch.softmax, brute-force loops and torch.distributions."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook import entropy, masked_softmax

DTYPES = [torch.float32, torch.float64]
FAST = settings(max_examples=15, deadline=None)


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)


def brute_masked_softmax(scores, keep, temperature=1.0):
    """Loop over every row: exp(s_j / T) / Σ_allowed exp(s_j' / T) on allowed j, 0 elsewhere."""
    keep = keep.expand_as(scores)
    s, k = scores.reshape(-1, scores.shape[-1]).double(), keep.reshape(-1, scores.shape[-1])
    out = torch.zeros_like(s)
    for r in range(s.shape[0]):
        allowed = [j for j in range(s.shape[1]) if k[r, j]]
        if not allowed:
            continue
        top = max(s[r, j].item() for j in allowed)
        total = sum(math.exp((s[r, j].item() - top) / temperature) for j in allowed)
        for j in allowed:
            out[r, j] = math.exp((s[r, j].item() - top) / temperature) / total
    return out.reshape(scores.shape).to(scores.dtype)


@st.composite
def scores_and_mask(draw, mask_shape="full", min_allowed=0):
    """Scores (B, Lq, Lk) and a random boolean mask of a broadcastable shape."""
    b, lq, lk = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scores = 3 * torch.randn(b, lq, lk, generator=g, dtype=dtype)
    shape = draw(st.sampled_from([(b, lq, lk), (lq, lk), (b, 1, lk), (lk,), (1, lq, 1)]))
    keep = torch.rand(*shape, generator=g) < draw(st.floats(0.2, 0.9))
    if min_allowed:
        keep[..., 0] = True
    return scores, keep


# ---------------------------------------------------------------- values against references

@FAST
@given(scores_and_mask(), st.sampled_from([0.3, 1.0, 2.5]))
def test_bool_mask_matches_brute_force(pair, temperature):
    scores, keep = pair
    got = masked_softmax(scores, keep, temperature=temperature)
    assert got.shape == scores.shape and got.dtype == scores.dtype
    torch.testing.assert_close(got, brute_masked_softmax(scores, keep, temperature), **tol(scores.dtype))


@FAST
@given(scores_and_mask())
def test_rows_sum_to_one_masked_weights_exactly_zero_and_empty_rows_zero(pair):
    scores, keep = pair
    w = masked_softmax(scores, keep)
    full = keep.expand_as(w)
    assert (w[~full] == 0).all()
    assert (w >= 0).all() and not torch.isnan(w).any()
    has_key = full.any(-1)
    torch.testing.assert_close(w.sum(-1)[has_key], torch.ones_like(w.sum(-1)[has_key]))
    assert (w.sum(-1)[~has_key] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_no_mask_equals_torch_softmax(dtype, temperature):
    scores = torch.randn(2, 3, 4, 7, dtype=dtype)
    torch.testing.assert_close(masked_softmax(scores, temperature=temperature),
                               torch.softmax(scores / temperature, dim=-1), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 6), (4, 6), (2, 1, 6), (6,), (1, 4, 1)])
def test_float_mask_is_added_before_the_temperature(dtype, shape):
    scores = torch.randn(2, 4, 6, dtype=dtype)
    bias = torch.randn(*shape, dtype=dtype)
    want = torch.softmax((scores + bias) / 2.0, dim=-1)
    torch.testing.assert_close(masked_softmax(scores, bias, temperature=2.0), want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_float_mask_of_minus_inf_equals_bool_mask(dtype):
    scores = torch.randn(3, 4, 5, dtype=dtype)
    keep = torch.rand(3, 4, 5) < 0.6
    keep[0, 1] = False  # one fully masked row
    bias = torch.zeros(3, 4, 5, dtype=dtype).masked_fill(~keep, float("-inf"))
    got = masked_softmax(scores, bias)
    torch.testing.assert_close(got, masked_softmax(scores, keep))
    assert (got[0, 1] == 0).all()


@pytest.mark.parametrize("dim", [0, 1, -2])
def test_dim_argument_matches_torch_softmax(dim):
    scores = torch.randn(3, 4, 5, dtype=torch.float64)
    keep = torch.rand(3, 4, 5) < 0.7
    torch.testing.assert_close(masked_softmax(scores, dim=dim), torch.softmax(scores, dim=dim))
    want = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=dim).nan_to_num(0.0)
    torch.testing.assert_close(masked_softmax(scores, keep, dim=dim), want)


@FAST
@given(scores_and_mask(min_allowed=1), st.floats(0.1, 10.0))
def test_temperature_equals_dividing_the_scores(pair, temperature):
    scores, keep = pair
    torch.testing.assert_close(masked_softmax(scores, keep, temperature=temperature),
                               masked_softmax(scores / temperature, keep), **tol(scores.dtype))


def test_shift_invariance_per_row():
    scores = torch.randn(2, 3, 5, dtype=torch.float64)
    shift = 100 * torch.randn(2, 3, 1, dtype=torch.float64)
    keep = torch.rand(2, 3, 5) < 0.7
    torch.testing.assert_close(masked_softmax(scores + shift, keep), masked_softmax(scores, keep))


@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_of_plus_minus_1e4_stay_finite(dtype):
    scores = torch.tensor([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4, -1e4, -1e4]], dtype=dtype)
    for t in (1e-3, 1.0, 1e4):
        w = masked_softmax(scores, temperature=t)
        assert torch.isfinite(w).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(2, dtype=dtype))
    w = masked_softmax(scores)
    torch.testing.assert_close(w[0], torch.tensor([1 / (1 + math.exp(-1)), 0, 0, 1 / (1 + math.e)],
                                                  dtype=dtype), **tol(dtype))
    torch.testing.assert_close(w[1], torch.full((4,), 0.25, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_temperature_to_zero_gives_one_hot_argmax_and_large_temperature_uniform(dtype):
    g = torch.Generator().manual_seed(1)
    # distinct scores (gaps >= 0.5) so that the argmax is unique
    scores = torch.stack([torch.randperm(7, generator=g) for _ in range(6)]).to(dtype).reshape(2, 3, 7) * 0.5
    keep = torch.rand(2, 3, 7, generator=g) < 0.6
    keep[..., 2] = True
    cold = masked_softmax(scores, keep, temperature=1e-3)
    argmax = scores.masked_fill(~keep, float("-inf")).argmax(-1)
    torch.testing.assert_close(cold, torch.nn.functional.one_hot(argmax, 7).to(dtype))
    hot = masked_softmax(scores, keep, temperature=1e6)
    uniform = keep / keep.sum(-1, keepdim=True)
    torch.testing.assert_close(hot, uniform.to(dtype), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_have_zero_weights_and_finite_gradients(kind):
    scores = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    keep = torch.ones(2, 3, 4, dtype=torch.bool)
    keep[1, 2] = False
    keep[0, 0, 1:] = False
    mask = keep if kind == "bool" else torch.zeros(2, 3, 4, dtype=torch.float64).masked_fill(~keep, -math.inf)
    w = masked_softmax(scores, mask)
    assert (w[1, 2] == 0).all() and torch.isfinite(w).all()
    (w * torch.randn(2, 3, 4, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad[1, 2] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_match_torch_softmax(dtype):
    scores = torch.randn(2, 3, 5, dtype=dtype, requires_grad=True)
    keep = torch.rand(2, 3, 5) < 0.7
    keep[..., 0] = True
    g = torch.randn(2, 3, 5, dtype=dtype)
    got, = torch.autograd.grad((masked_softmax(scores, keep, temperature=0.7) * g).sum(), scores)
    ref = torch.softmax(scores.masked_fill(~keep, float("-inf")) / 0.7, dim=-1)
    want, = torch.autograd.grad((ref * g).sum(), scores)
    torch.testing.assert_close(got, want, **tol(dtype))


def test_float_mask_of_another_dtype_is_rejected_or_keeps_the_dtype_of_scores():
    scores = torch.randn(3, 4)
    try:
        w = masked_softmax(scores, torch.zeros(3, 4, dtype=torch.float64))
    except TypeError as error:
        assert "mask" in str(error)
    else:
        assert w.dtype == scores.dtype


# ---------------------------------------------------------------- entropy

@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_matches_torch_distributions(dtype):
    w = torch.softmax(torch.randn(2, 3, 6, dtype=dtype), dim=-1)
    want = torch.distributions.Categorical(probs=w).entropy()
    torch.testing.assert_close(entropy(w), want, **tol(dtype))


def test_entropy_bounds_one_hot_uniform_and_zero_weights():
    lk = 6
    assert entropy(torch.eye(lk, dtype=torch.float64)).abs().max() == 0
    torch.testing.assert_close(entropy(torch.full((lk,), 1 / lk, dtype=torch.float64)),
                               torch.tensor(math.log(lk), dtype=torch.float64))
    w = masked_softmax(torch.randn(4, 5, lk, dtype=torch.float64), torch.rand(4, 5, lk) < 0.5)
    h = entropy(w)
    assert torch.isfinite(h).all() and (h >= 0).all() and (h <= math.log(lk) + 1e-12).all()
    loop = torch.tensor([[-sum(p * math.log(p) for p in row if p > 0) for row in mat] for mat in w.tolist()],
                        dtype=torch.float64)
    torch.testing.assert_close(h, loop)
    torch.testing.assert_close(entropy(w.transpose(-1, -2), dim=-2), h)


def test_entropy_gradient_is_finite_through_a_masked_softmax():
    scores = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    keep = torch.ones(3, 4, dtype=torch.bool).tril()
    entropy(masked_softmax(scores, keep)).sum().backward()
    assert torch.isfinite(scores.grad).all()


# ---------------------------------------------------------------- bad input

S = torch.randn(2, 3, 4)


@pytest.mark.parametrize("scores, error", [
    (S.tolist(), TypeError), (S.numpy(), TypeError), (None, TypeError),
    (S.long(), TypeError), (S > 0, TypeError), (torch.tensor(1.0), ValueError),
])
def test_masked_softmax_rejects_bad_scores(scores, error):
    with pytest.raises(error, match="scores"):
        masked_softmax(scores)


@pytest.mark.parametrize("temperature, error", [
    (0, ValueError), (0.0, ValueError), (-1.0, ValueError), (float("inf"), ValueError),
    (float("nan"), ValueError), (-float("inf"), ValueError), ("1.0", TypeError), (None, TypeError),
    (True, TypeError), (torch.tensor(1.0), TypeError), (1 + 0j, TypeError),
])
def test_masked_softmax_rejects_bad_temperature(temperature, error):
    with pytest.raises(error, match="temperature"):
        masked_softmax(S, temperature=temperature)


@pytest.mark.parametrize("mask, error", [
    (torch.ones(2, 3, 5, dtype=torch.bool), ValueError),      # Lk 5 vs 4
    (torch.ones(3, 3, 4, dtype=torch.bool), ValueError),      # batch 3 vs 2
    (torch.ones(2, 2, 3, 4, dtype=torch.bool), ValueError),   # would enlarge the scores
    (torch.ones(4, 3, dtype=torch.bool), ValueError),         # transposed
    (torch.ones(2, 3, 4, dtype=torch.int64), TypeError),
    (torch.ones(2, 3, 4, dtype=torch.uint8), TypeError),
    (torch.ones(2, 3, 4).tolist(), TypeError),
    (1.0, TypeError),
])
def test_masked_softmax_rejects_bad_mask(mask, error):
    with pytest.raises(error, match="mask"):
        masked_softmax(S, mask)


@pytest.mark.parametrize("weights, error", [
    ([0.5, 0.5], TypeError), (torch.tensor([1, 0]), TypeError), (torch.tensor(1.0), ValueError),
])
def test_entropy_rejects_bad_weights(weights, error):
    with pytest.raises(error, match="weights"):
        entropy(weights)
