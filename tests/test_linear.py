"""attnbook.linear (§5.2): linear attention and the Performer against loops written from the papers."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support import DEVICES, DTYPES, randn, tol

from attnbook.attention import attention
from attnbook.linear import (default_features, elu_plus_one, favor_features, linear_attention,
                             orthogonal_random_features, performer_attention)
from attnbook.masks import causal_mask

FAST = settings(max_examples=20, deadline=None)


def qkv(batch=(2, 3), lq=4, lk=6, d=5, dv=3, dtype=torch.float64, device="cpu", seed=0, size=1.0):
    q = size * randn(*batch, lq, d, seed=seed, dtype=dtype, device=device)
    k = size * randn(*batch, lk, d, seed=seed + 1, dtype=dtype, device=device)
    v = randn(*batch, lk, dv, seed=seed + 2, dtype=dtype, device=device)
    return q, k, v


def brute_kernel_attention(phi_q, phi_k, v, keep=None, causal=False, eps=1e-6):
    """out_i = Σ_j s_ij v_j / max(Σ_j s_ij, eps), s_ij = φ(q_i)·φ(k_j), over allowed j: a loop."""
    batch, lq, lk = phi_q.shape[:-2], phi_q.shape[-2], phi_k.shape[-2]
    keep = torch.ones(*batch, lk, dtype=torch.bool) if keep is None else keep.cpu().expand(*batch, lk)
    P, K, V = (t.detach().cpu().double().reshape(-1, *t.shape[-2:]) for t in (phi_q, phi_k, v))
    keep = keep.reshape(-1, lk)
    out = torch.zeros(P.shape[0], lq, V.shape[-1], dtype=torch.float64)
    for b in range(P.shape[0]):
        for i in range(lq):
            numerator, denominator = torch.zeros(V.shape[-1], dtype=torch.float64), 0.0
            for j in range(lk):
                if keep[b, j] and (not causal or j <= i):
                    s = sum(P[b, i, r].item() * K[b, j, r].item() for r in range(P.shape[-1]))
                    numerator += s * V[b, j]
                    denominator += s
            out[b, i] = numerator / max(denominator, eps)
    return out.reshape(*batch, lq, V.shape[-1])


def identity(x):
    return x


def wide(x):  # r = 2d features, all ≥ 0
    return torch.cat([elu_plus_one(x), x * x], dim=-1)


FEATURE_MAPS = {"elu+1": elu_plus_one, "identity on x > 0": identity, "2d features": wide}


# ---------------------------------------------------------------- linear attention: references

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lq, lk", [(4, 6), (6, 4)])
@pytest.mark.parametrize("name", list(FEATURE_MAPS))
def test_linear_attention_matches_a_loop_of_its_formula(device, dtype, causal, lq, lk, name):
    q, k, v = qkv((2, 3), lq, lk, 5, 3, dtype, device)
    if name == "identity on x > 0":
        q, k = q.abs() + 0.1, k.abs() + 0.1
    keep = torch.rand(3, lk, generator=torch.Generator().manual_seed(1)) < 0.7
    phi = FEATURE_MAPS[name]
    for mask in (None, keep.to(device)):
        out = linear_attention(q, k, v, mask, feature_map=phi, causal=causal)
        assert out.shape == (2, 3, lq, 3) and out.dtype == dtype and out.device == q.device
        want = brute_kernel_attention(phi(q), phi(k), v, mask, causal)
        torch.testing.assert_close(out.cpu(), want.to(dtype), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq, lk", [(5, 5), (3, 7), (7, 3)])
def test_causal_form_equals_the_masked_quadratic_form(dtype, lq, lk):
    """Σ_{j≤i}: prefix sums give the same as normalising the masked (Lq, Lk) matrix φ(Q)φ(K)ᵀ."""
    q, k, v = qkv((2,), lq, lk, 4, 6, dtype)
    s = (elu_plus_one(q) @ elu_plus_one(k).transpose(-2, -1)) * causal_mask(lq, lk)
    want = (s / s.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(linear_attention(q, k, v, causal=True), want, **tol(dtype))
    s = elu_plus_one(q) @ elu_plus_one(k).transpose(-2, -1)  # and the non-causal form
    torch.testing.assert_close(linear_attention(q, k, v), (s / s.sum(-1, keepdim=True)) @ v, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_features_give_the_mean_of_the_allowed_values(dtype):
    """φ ≡ 1 weighs every allowed key equally: softmax attention with all scores equal."""
    q, k, v = qkv((2,), 3, 6, 4, 5, dtype)
    keep = torch.tensor([[True, False, True, True, False, True], [False] * 5 + [True]])
    out = linear_attention(q, k, v, keep, feature_map=torch.ones_like)
    torch.testing.assert_close(out, attention(torch.zeros_like(q), k, v, keep.unsqueeze(-2))[0], **tol(dtype))
    out = linear_attention(q, k, v, feature_map=torch.ones_like, causal=True)
    torch.testing.assert_close(out, attention(torch.zeros_like(q), k, v, is_causal=True)[0], **tol(dtype))


@FAST
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.integers(1, 4), st.booleans(),
       st.floats(0.01, 100.0), st.integers(0, 2**31 - 1))
def test_outputs_are_convex_combinations_and_ignore_the_scale_of_phi(lq, lk, d, dv, causal, c, seed):
    q, k, v = qkv((2,), lq, lk, d, dv, seed=seed)
    keep = torch.rand(2, lk, generator=torch.Generator().manual_seed(seed)) < 0.8
    keep[:, 0] = True  # every query has an allowed key
    out = linear_attention(q, k, v, keep, causal=causal)
    scaled = linear_attention(q, k, v, keep, causal=causal, feature_map=lambda x: c * elu_plus_one(x))
    torch.testing.assert_close(scaled, out)
    big = v.masked_fill(~keep.unsqueeze(-1), -math.inf).amax(-2, keepdim=True)
    small = v.masked_fill(~keep.unsqueeze(-1), math.inf).amin(-2, keepdim=True)
    assert (out <= big + 1e-12).all() and (out >= small - 1e-12).all()
    if not causal:  # permuting keys and values together changes nothing
        perm = torch.randperm(lk, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(linear_attention(q, k[:, perm], v[:, perm], keep[:, perm]), out)


@pytest.mark.parametrize("lq, lk", [(6, 6), (4, 7), (7, 4)])
def test_causal_outputs_do_not_depend_on_later_tokens(lq, lk):
    q, k, v = qkv((2,), lq, lk, 4, 3)
    w = orthogonal_random_features(4, 32, generator=torch.Generator().manual_seed(0), dtype=q.dtype)
    for kernel in (linear_attention, lambda *a, **kw: performer_attention(*a, projection=w, **kw)):
        out = kernel(q, k, v, causal=True)
        for j in range(1, min(lq, lk)):
            k2, v2 = k.clone(), v.clone()
            k2[:, j:] = torch.randn_like(k2[:, j:])
            v2[:, j:] = 10 * torch.randn_like(v2[:, j:])
            out2 = kernel(q, k2, v2, causal=True)
            torch.testing.assert_close(out2[:, :j], out[:, :j], rtol=1e-12, atol=1e-12)
            assert not torch.allclose(out2[:, j:], out[:, j:])  # the test can fail


@pytest.mark.parametrize("causal", [False, True])
def test_a_query_without_allowed_keys_gets_zeros_not_nan(causal):
    q, k, v = qkv((2,), 3, 5, 4, 2)
    keep = torch.tensor([[False] * 5, [False, True, True, True, True]])
    w = orthogonal_random_features(4, 16, generator=torch.Generator().manual_seed(0), dtype=q.dtype)
    for out in (linear_attention(q, k, v, keep, causal=causal),
                performer_attention(q, k, v, keep, projection=w, causal=causal)):
        assert torch.isfinite(out).all() and (out[0] == 0).all()
        assert (out[1, 0] == 0).all() == causal and (out[1, 1:] != 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_inputs_stay_finite(dtype):
    q, k, v = qkv((2,), 3, 5, 4, 2, dtype)
    for size in (1e4, -1e4):
        assert torch.isfinite(linear_attention(size * q, size * k, v)).all()
        assert torch.isfinite(linear_attention(size * q, size * k, v, causal=True)).all()
        assert torch.isfinite(performer_attention(size * q, size * k, v, features=16)).all()


def test_gradients_match_finite_differences():
    q, k, v = (t.requires_grad_() for t in qkv((2,), 3, 4, 3, 2))
    w = orthogonal_random_features(3, 8, generator=torch.Generator().manual_seed(0), dtype=q.dtype)
    for causal in (False, True):
        assert torch.autograd.gradcheck(lambda *x: linear_attention(*x, causal=causal), (q, k, v))
        assert torch.autograd.gradcheck(lambda *x: performer_attention(*x, projection=w, causal=causal),
                                        (q, k, v))


def test_bfloat16_is_close_to_float32():
    q, k, v = qkv((2,), 4, 6, 8, 3, torch.float32)
    for causal in (False, True):
        low = linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=causal)
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), linear_attention(q, k, v, causal=causal), atol=5e-2, rtol=5e-2)


# ---------------------------------------------------------------- the Performer

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d, m", [(4, 10), (5, 5), (3, 2), (6, 13)])
def test_orthogonal_features_are_orthogonal_within_each_block(device, d, m):
    w = orthogonal_random_features(d, m, generator=torch.Generator().manual_seed(0),
                                   dtype=torch.float64, device=device)
    assert w.shape == (m, d) and w.dtype == torch.float64 and w.device.type == device
    directions = w / w.norm(dim=-1, keepdim=True)
    for start in range(0, m, d):
        block = directions[start:start + d]
        torch.testing.assert_close(block @ block.T, torch.eye(len(block), dtype=w.dtype, device=device))
    norms = w.norm(dim=-1)
    assert len(set(norms.tolist())) == m  # rescaled row by row, not unit rows
    again = orthogonal_random_features(d, m, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64, device=device)
    assert torch.equal(w, again)
    other = orthogonal_random_features(d, m, generator=torch.Generator().manual_seed(1),
                                       dtype=torch.float64, device=device)
    assert not torch.allclose(w, other)


def test_orthogonal_features_have_the_moments_of_a_standard_gaussian():
    """E[ω] = 0 and E[ωωᵀ] = I: each row is N(0, I) marginally (z-tests at 5 standard errors)."""
    d, m = 4, 8000
    w = orthogonal_random_features(d, m, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert (w.mean(0).abs() < 5 / math.sqrt(m)).all()
    second = (w.unsqueeze(-1) * w.unsqueeze(-2)).mean(0)  # var(ω_a ω_b) ≤ 3
    assert ((second - torch.eye(d, dtype=w.dtype)).abs() < 5 * math.sqrt(3 / m)).all()


def test_favor_features_estimate_the_softmax_kernel_without_bias():
    """φ(q)ᵀφ(k) averages m estimates of exp(qᵀk/√d): within 5 standard errors of the kernel."""
    d, m = 4, 40000
    g = torch.Generator().manual_seed(1)
    q, k = 0.5 * randn(5, d, seed=1), 0.5 * randn(7, d, seed=2)
    kernel = torch.exp(q @ k.T / math.sqrt(d))
    w = orthogonal_random_features(d, m, generator=g, dtype=torch.float64)
    estimate = favor_features(q, w) @ favor_features(k, w).T
    x_q, x_k = q * d ** -0.25, k * d ** -0.25  # the variance of one feature, relative to the kernel²
    relative_var = torch.exp(((x_q[:, None] + x_k[None]) ** 2).sum(-1)) - 1
    assert ((estimate / kernel - 1).abs() < 5 * torch.sqrt(relative_var / m)).all()
    assert (favor_features(q, w) > 0).all()


def test_stabilisers_change_the_features_by_a_constant_factor():
    x, w = randn(2, 5, 4, seed=1), orthogonal_random_features(4, 12, dtype=torch.float64)
    exact = favor_features(x, w, scale=0.3)
    row = favor_features(x, w, scale=0.3, stabiliser="row")
    ratio = row / exact
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio))  # one factor per row
    torch.testing.assert_close(row.amax(-1), torch.full((2, 5), 12 ** -0.5, dtype=x.dtype))
    seq = favor_features(x, w, scale=0.3, stabiliser="sequence")
    ratio = seq / exact
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))  # one factor per sequence
    torch.testing.assert_close(seq.amax((-2, -1)), torch.full((2,), 12 ** -0.5, dtype=x.dtype))


def exact_favor(x, w, scale):
    """φ(x) = exp(ωᵀx' − ‖x'‖²/2)/√m, x' = x√scale, written out feature by feature."""
    x = x.detach().cpu().double() * math.sqrt(scale)
    w = w.cpu().double()
    return torch.stack([torch.exp(x @ w[r] - (x * x).sum(-1) / 2) for r in range(len(w))], -1) / math.sqrt(len(w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lq, lk", [(4, 6), (6, 4)])
def test_performer_matches_a_loop_with_unstabilised_features(device, dtype, causal, lq, lk):
    q, k, v = qkv((2, 3), lq, lk, 5, 3, dtype, device)
    w = orthogonal_random_features(5, 7, generator=torch.Generator().manual_seed(0), dtype=dtype, device=device)
    keep = (torch.rand(3, lk, generator=torch.Generator().manual_seed(1)) < 0.7).to(device)
    for mask, scale in ((None, None), (keep, 0.3)):
        out = performer_attention(q, k, v, mask, projection=w, causal=causal, scale=scale)
        assert out.shape == (2, 3, lq, 3) and out.dtype == dtype and out.device == q.device
        s = 1 / math.sqrt(5) if scale is None else scale
        want = brute_kernel_attention(exact_favor(q, w, s), exact_favor(k, w, s), v, mask, causal, eps=1e-300)
        torch.testing.assert_close(out.cpu(), want.to(dtype), **tol(dtype))


def test_performer_draws_its_features_from_the_generator():
    q, k, v = qkv((2,), 4, 6, 5, 3)
    out = performer_attention(q, k, v, features=9, generator=torch.Generator().manual_seed(4))
    w = orthogonal_random_features(5, 9, generator=torch.Generator().manual_seed(4), dtype=q.dtype)
    torch.testing.assert_close(out, performer_attention(q, k, v, projection=w), rtol=0, atol=0)
    torch.testing.assert_close(out, performer_attention(q, k, v, features=9, projection=w), rtol=0, atol=0)
    assert default_features(5) == 8 and default_features(64) == 266 and default_features(1) == 1


def test_performer_error_shrinks_as_features_grow():
    """Mean |error| against exact softmax attention, over 10 problems and 5 draws of features: 16 > 64 > 256."""
    q, k, v = qkv((10,), 6, 10, 8, 3, size=0.5)  # 10 problems in one batch
    exact = attention(q, k, v)[0]
    errors = {m: sum((performer_attention(q, k, v, features=m, generator=torch.Generator().manual_seed(seed))
                      - exact).abs().mean().item() for seed in range(5)) / 5
              for m in (16, 64, 256)}
    assert errors[16] > 1.3 * errors[64] > 1.3 ** 2 * errors[256], errors
    assert errors[256] < 0.05, errors


# ---------------------------------------------------------------- bad input

def test_bad_input_names_the_argument():
    q, k, v = qkv((2,), 3, 5, 4, 2)
    w = orthogonal_random_features(4, 6, dtype=q.dtype)
    cases = [
        (ValueError, "eps", lambda: linear_attention(q, k, v, eps=0)),
        (ValueError, "eps", lambda: linear_attention(q, k, v, eps=-1e-6)),
        (ValueError, "eps", lambda: linear_attention(q, k, v, eps=math.nan)),
        (TypeError, "feature_map", lambda: linear_attention(q, k, v, feature_map="elu")),
        (ValueError, "feature_map", lambda: linear_attention(q, k, v, feature_map=lambda x: x[..., :1, :])),
        (ValueError, "feature_map", lambda: linear_attention(q, k, v, feature_map=lambda x: x[..., : x.shape[-2]])),
        (TypeError, "mask", lambda: linear_attention(q, k, v, torch.ones(2, 5))),
        (ValueError, "mask", lambda: linear_attention(q, k, v, torch.ones(2, 4, dtype=torch.bool))),
        (ValueError, "mask", lambda: linear_attention(q, k, v, torch.ones(2, 1, 5, dtype=torch.bool))),
        (ValueError, "mask", lambda: performer_attention(q, k, v, torch.ones(3, 5, dtype=torch.bool))),
        (ValueError, "key", lambda: linear_attention(q, k[..., :3], v)),
        (TypeError, "value", lambda: linear_attention(q, k, v.float())),
        (ValueError, "features", lambda: performer_attention(q, k, v, features=0)),
        (ValueError, "features", lambda: performer_attention(q, k, v, features=-3)),
        (TypeError, "features", lambda: performer_attention(q, k, v, features=2.5)),
        (ValueError, "features", lambda: performer_attention(q, k, v, features=5, projection=w)),
        (ValueError, "projection", lambda: performer_attention(q, k, v, projection=w[:, :3])),
        (ValueError, "projection", lambda: performer_attention(q, k, v, projection=w[None])),
        (TypeError, "projection", lambda: performer_attention(q, k, v, projection=w.float())),
        (ValueError, "scale", lambda: performer_attention(q, k, v, scale=0)),
        (ValueError, "d", lambda: orthogonal_random_features(0, 4)),
        (ValueError, "m", lambda: orthogonal_random_features(4, 0)),
        (TypeError, "m", lambda: orthogonal_random_features(4, 2.0)),
        (TypeError, "dtype", lambda: orthogonal_random_features(4, 4, dtype=torch.int64)),
        (TypeError, "generator", lambda: orthogonal_random_features(4, 4, generator=0)),
        (ValueError, "stabiliser", lambda: favor_features(q, w, stabiliser="max")),
        (ValueError, "projection", lambda: favor_features(q, w.T)),
        (TypeError, "x", lambda: favor_features(q.long(), w)),
    ]
    for error, name, call in cases:
        with pytest.raises(error, match=name):
            call()


def test_elu_plus_one_is_positive_and_continuous():
    x = torch.linspace(-30, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(elu_plus_one(x), torch.where(x > 0, x + 1, torch.exp(x)))
    assert (elu_plus_one(x) > 0).all()
