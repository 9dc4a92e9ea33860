"""attnbook.attention (§2.1 to §2.4) against torch's scaled_dot_product_attention and loops."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook import attention, causal_mask, padding_mask, sliding_window_mask

DTYPES = [torch.float32, torch.float64]
FAST = settings(max_examples=20, deadline=None)
sdpa = F.scaled_dot_product_attention


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)


def qkv(batch=(2,), lq=3, lk=5, d=4, dv=6, dtype=torch.float64, grad=False, generator=None):
    q = torch.randn(*batch, lq, d, dtype=dtype, generator=generator)
    k = torch.randn(*batch, lk, d, dtype=dtype, generator=generator)
    v = torch.randn(*batch, lk, dv, dtype=dtype, generator=generator)
    if grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def brute_attention(q, k, v, keep=None, bias=None, scale=None, temperature=1.0):
    """Loops over every (batch, i, j) in float64: weights and output of exact attention."""
    lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1 / math.sqrt(d) if scale is None else scale
    batch = q.shape[:-2]
    shape = (*batch, lq, lk)
    keep = torch.ones(shape, dtype=torch.bool) if keep is None else keep.expand(shape)
    bias = torch.zeros(shape, dtype=torch.float64) if bias is None else bias.expand(shape).double()
    Q, K, V = (t.detach().double().reshape(-1, *t.shape[-2:]) for t in (q, k, v))
    keep, bias = keep.reshape(-1, lq, lk), bias.reshape(-1, lq, lk)
    w = torch.zeros(Q.shape[0], lq, lk, dtype=torch.float64)
    for b in range(Q.shape[0]):
        for i in range(lq):
            logits = {j: ((Q[b, i] @ K[b, j]).item() * scale + bias[b, i, j].item()) / temperature
                      for j in range(lk) if keep[b, i, j] and bias[b, i, j] > -math.inf}
            if not logits:
                continue
            top = max(logits.values())
            total = sum(math.exp(x - top) for x in logits.values())
            for j, x in logits.items():
                w[b, i, j] = math.exp(x - top) / total
    out = w @ V
    return out.reshape(*batch, lq, V.shape[-1]).to(q.dtype), w.reshape(shape).to(q.dtype)


def sdpa_ref(q, k, v, mask=None, **kwargs):
    """SDPA with the rows that have no allowed key set to 0 (SDPA gives NaN there)."""
    if mask is not None and mask.dim() < 2:  # SDPA wants at least (Lq, Lk)
        mask = mask.expand(q.shape[-2], k.shape[-2])
    out = sdpa(q, k, v, attn_mask=mask, **kwargs)
    return torch.nan_to_num(out, nan=0.0)


@st.composite
def problems(draw):
    """Random non-square attention problems with a mask of a random kind and shape."""
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    lq, lk = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    d, dv = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    q, k, v = qkv(batch, lq, lk, d, dv, dtype, generator=g)
    kind = draw(st.sampled_from(["none", "bool", "float"]))
    shape = draw(st.sampled_from([(*batch, lq, lk), (lq, lk), (*batch[:-1], batch[-1], 1, lk), (lk,)]))
    if kind == "none":
        mask = None
    elif kind == "bool":
        mask = torch.rand(shape, generator=g) < draw(st.floats(0.3, 1.0))
    else:
        mask = torch.randn(shape, generator=g, dtype=dtype)
    scale = draw(st.one_of(st.none(), st.floats(0.05, 3.0)))
    return q, k, v, mask, scale


# ---------------------------------------------------------------- values against references

@FAST
@given(problems())
def test_matches_sdpa_and_brute_force(problem):
    q, k, v, mask, scale = problem
    out, w = attention(q, k, v, mask, scale=scale)
    assert out.shape == (*q.shape[:-1], v.shape[-1]) and w.shape == (*q.shape[:-1], k.shape[-2])
    assert out.dtype == w.dtype == q.dtype
    torch.testing.assert_close(out, sdpa_ref(q, k, v, mask, scale=scale), **tol(q.dtype))
    keep = bias = None
    if mask is not None and mask.dtype == torch.bool:
        keep = mask
    elif mask is not None:
        bias = mask
    want_out, want_w = brute_attention(q, k, v, keep, bias, scale)
    torch.testing.assert_close(out, want_out, **tol(q.dtype))
    torch.testing.assert_close(w, want_w, **tol(q.dtype))


@FAST
@given(problems(), st.floats(0.05, 20.0))
def test_temperature_T_equals_scale_over_T(problem, temperature):
    q, k, v, mask, scale = problem
    base = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    if mask is not None and mask.is_floating_point():
        # a float mask is a bias added before the temperature divides the logits
        want = sdpa_ref(q, k, v, mask / temperature, scale=base / temperature)
        torch.testing.assert_close(attention(q, k, v, mask, scale=scale, temperature=temperature)[0],
                                   want, **tol(q.dtype))
        return
    got = attention(q, k, v, mask, scale=scale, temperature=temperature)
    want = attention(q, k, v, mask, scale=base / temperature)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol(q.dtype))
    torch.testing.assert_close(got[0], sdpa_ref(q, k, v, mask, scale=base / temperature), **tol(q.dtype))


@FAST
@given(problems())
def test_weights_rows_sum_to_one_over_allowed_keys_and_masked_weights_are_zero(problem):
    q, k, v, mask, scale = problem
    out, w = attention(q, k, v, mask, scale=scale)
    keep = torch.ones_like(w, dtype=torch.bool) if mask is None or mask.is_floating_point() \
        else mask.expand_as(w)
    assert (w[~keep] == 0).all() and (w >= 0).all()
    has_key = keep.any(-1)
    torch.testing.assert_close(w.sum(-1)[has_key], torch.ones_like(w.sum(-1)[has_key]))
    assert (w.sum(-1)[~has_key] == 0).all() and (out[~has_key] == 0).all()
    torch.testing.assert_close(out, w @ v, **tol(q.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq, lk", [(3, 5), (5, 3), (1, 4), (4, 1), (4, 4)])
def test_is_causal_equals_causal_mask_and_sdpa_is_causal(dtype, lq, lk):
    q, k, v = qkv((2, 3), lq, lk, 4, 6, dtype)
    out, w = attention(q, k, v, is_causal=True)
    out_mask, w_mask = attention(q, k, v, causal_mask(lq, lk))
    torch.testing.assert_close(out, out_mask, rtol=0, atol=0)
    torch.testing.assert_close(w, w_mask, rtol=0, atol=0)
    torch.testing.assert_close(out, sdpa(q, k, v, is_causal=True), **tol(dtype))
    assert (w[..., ~causal_mask(lq, lk)] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["causal", "padding", "window", "causal window", "causal & padding"])
@pytest.mark.parametrize("lq, lk", [(3, 6), (6, 4)])
def test_each_mask_kind_matches_sdpa_and_brute_force(dtype, kind, lq, lk):
    q, k, v = qkv((2,), lq, lk, 5, 3, dtype)
    pad = padding_mask([lk, 2], lk)
    keep = {"causal": causal_mask(lq, lk), "padding": pad,
            "window": sliding_window_mask(lq, lk, window=1),
            "causal window": sliding_window_mask(lq, lk, window=2, causal=True),
            "causal & padding": causal_mask(lq, lk) & pad}[kind]
    out, w = attention(q, k, v, keep)
    torch.testing.assert_close(out, sdpa_ref(q, k, v, keep), **tol(dtype))
    want_out, want_w = brute_attention(q, k, v, keep)
    torch.testing.assert_close(out, want_out, **tol(dtype))
    torch.testing.assert_close(w, want_w, **tol(dtype))
    assert (w[~keep.expand_as(w)] == 0).all()


@pytest.mark.parametrize("lq, lk", [(6, 6), (4, 7), (7, 4)])
def test_causal_outputs_do_not_depend_on_later_keys_or_values(lq, lk):
    q, k, v = qkv((2,), lq, lk, 4, 3, torch.float64)
    out, _ = attention(q, k, v, is_causal=True)
    for j in range(1, min(lq, lk)):
        k2, v2 = k.clone(), v.clone()
        k2[:, j:] = 10 * torch.randn_like(k2[:, j:])
        v2[:, j:] = 10 * torch.randn_like(v2[:, j:])
        out2, _ = attention(q, k2, v2, is_causal=True)
        torch.testing.assert_close(out2[:, :j], out[:, :j], rtol=0, atol=0)
        assert not torch.allclose(out2[:, j:], out[:, j:])  # the test can fail


def test_permuting_keys_and_values_together_changes_nothing():
    q, k, v = qkv((2,), 3, 6, 4, 5)
    perm = torch.randperm(6)
    out, w = attention(q, k, v)
    out_p, w_p = attention(q, k[:, perm], v[:, perm])
    torch.testing.assert_close(out_p, out)
    torch.testing.assert_close(w_p, w[..., perm])


@pytest.mark.parametrize("dtype", DTYPES)
def test_multihead_shapes_and_padding_mask_broadcast(dtype):
    b, h, lq, lk = 2, 3, 4, 6
    q, k, v = qkv((b, h), lq, lk, 5, 2, dtype)
    pad = padding_mask([6, 3], lk).unsqueeze(1)  # (B, 1, 1, Lk)
    out, w = attention(q, k, v, pad)
    assert out.shape == (b, h, lq, 2) and w.shape == (b, h, lq, lk)
    assert (w[1, ..., 3:] == 0).all()
    torch.testing.assert_close(out, sdpa(q, k, v, attn_mask=pad), **tol(dtype))
    both = causal_mask(lq, lk) & pad
    torch.testing.assert_close(attention(q, k, v, both)[0], sdpa(q, k, v, attn_mask=both), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_of_1e4_stay_finite(dtype):
    q, k, v = qkv((2,), 3, 5, 4, 2, dtype)
    q = q / q.norm(dim=-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True)
    for scale in (1e4, 1e-4):
        out, w = attention(q, k, v, scale=scale)
        assert torch.isfinite(out).all() and torch.isfinite(w).all()
        torch.testing.assert_close(out, sdpa(q, k, v, scale=scale), **tol(dtype))
    out, w = attention(q, k, v, scale=1e4)
    best = (q @ k.transpose(-1, -2)).argmax(-1)
    torch.testing.assert_close(w, F.one_hot(best, 5).to(dtype), rtol=0, atol=1e-6)
    bias = torch.tensor([1e4, -1e4, 0.0, -1e4, 1e4 - 2], dtype=dtype)
    out, w = attention(q, k, v, bias)
    assert torch.isfinite(out).all() and (w[..., [1, 2, 3]] == 0).all()


def test_temperature_extremes_one_hot_and_uniform():
    q, k, v = qkv((2,), 3, 5, 4, 2)
    keep = causal_mask(3, 5) | torch.tensor([False, False, False, False, True])
    _, cold = attention(q, k, v, keep, temperature=1e-6)
    best = (q @ k.transpose(-1, -2)).masked_fill(~keep, -math.inf).argmax(-1)
    torch.testing.assert_close(cold, F.one_hot(best, 5).double())
    out, hot = attention(q, k, v, keep, temperature=1e7)
    uniform = (keep / keep.sum(-1, keepdim=True)).double().expand_as(hot)
    torch.testing.assert_close(hot, uniform, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, uniform @ v, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_give_zeros_and_finite_gradients(kind):
    q, k, v = qkv((2,), 4, 5, 3, 2, grad=True)
    keep = torch.rand(2, 4, 5) < 0.6
    keep[0, 1] = False
    keep[1, 3] = False
    keep[1, 0] = True
    mask = keep if kind == "bool" else torch.zeros(2, 4, 5, dtype=torch.float64).masked_fill(~keep, -math.inf)
    out, w = attention(q, k, v, mask)
    assert (out[0, 1] == 0).all() and (w[0, 1] == 0).all() and (out[1, 3] == 0).all()
    assert not torch.isnan(out).any() and not torch.isnan(w).any()
    (out * torch.randn_like(out)).sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[0, 1] == 0).all()
    # the other rows agree with SDPA
    rows = keep.any(-1)
    torch.testing.assert_close(out[rows], sdpa(q, k, v, attn_mask=mask)[rows])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["plain", "bool", "float", "causal", "scale", "batch-broadcast"])
def test_gradients_match_sdpa(dtype, case):
    q, k, v = qkv((2, 2), 3, 5, 4, 6, dtype, grad=True)
    kwargs, ref_kwargs, mask = {}, {}, None
    if case == "bool":
        mask = torch.rand(2, 1, 3, 5) < 0.6
        mask[..., 0] = True
    elif case == "float":
        mask = torch.randn(3, 5, dtype=dtype)
    elif case == "causal":
        kwargs = ref_kwargs = dict(is_causal=True)
    elif case == "scale":
        kwargs = ref_kwargs = dict(scale=0.3)
    elif case == "batch-broadcast":
        mask = torch.rand(5) < 0.7
        mask[2] = True
    g = torch.randn(2, 2, 3, 6, dtype=dtype)
    out, _ = attention(q, k, v, mask, **kwargs)
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    ref = sdpa_ref(q, k, v, mask, **ref_kwargs)
    want = torch.autograd.grad((ref * g).sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol(dtype))


def test_gradcheck_in_float64():
    q, k, v = qkv((1,), 2, 3, 2, 2, grad=True)
    keep = torch.tensor([[True, False, True], [False, True, True]])
    assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c, keep, temperature=0.7)[0], (q, k, v))


# ---------------------------------------------------------------- bad input

Q, K, V = qkv((2,), 3, 5, 4, 6, torch.float32)


@pytest.mark.parametrize("args, error, name", [
    ((torch.randn(4), K, V), ValueError, "query"),
    ((Q, torch.randn(4), V), ValueError, "key"),
    ((Q, K, torch.randn(6)), ValueError, "value"),
    ((Q, torch.randn(3, 5, 4), V), ValueError, "batch"),
    ((Q, K, torch.randn(1, 5, 6)), ValueError, "batch"),
    ((Q, torch.randn(2, 5, 3), V), ValueError, "width"),
    ((Q, K, torch.randn(2, 4, 6)), ValueError, "value"),
    ((Q.long(), K, V), TypeError, "query"),
    ((Q, K.int(), V), TypeError, "key"),
    ((Q, K, V > 0), TypeError, "value"),
    ((Q, K.double(), V), TypeError, "key"),
    ((Q, K, V.double()), TypeError, "value"),
    ((Q.tolist(), K, V), TypeError, "query"),
    ((Q, K, None), TypeError, "value"),
    ((Q, K.numpy(), V), TypeError, "key"),
])
def test_rejects_bad_query_key_value(args, error, name):
    with pytest.raises(error, match=name):
        attention(*args)


@pytest.mark.parametrize("mask, error", [
    (torch.ones(2, 3, 4, dtype=torch.bool), ValueError),        # Lk 4 vs 5
    (torch.ones(3, 5, dtype=torch.bool).T, ValueError),         # (Lk, Lq)
    (torch.ones(3, 3, 5, dtype=torch.bool), ValueError),        # batch 3 vs 2
    (torch.ones(1, 2, 3, 5, dtype=torch.bool), ValueError),     # would enlarge the output
    (torch.ones(2, 3, 5, dtype=torch.int64), TypeError),
    (torch.ones(2, 3, 5, dtype=torch.uint8), TypeError),
    (torch.zeros(2, 3, 5, dtype=torch.float64), TypeError),     # float mask of another dtype
    (torch.zeros(2, 3, 5, dtype=torch.float16), TypeError),
    ([[True] * 5] * 3, TypeError),
    ("causal", TypeError),
])
def test_rejects_bad_mask(mask, error):
    with pytest.raises(error, match="mask"):
        attention(Q, K, V, mask)


@pytest.mark.parametrize("name, value, error", [
    ("temperature", 0, ValueError), ("temperature", -1.0, ValueError),
    ("temperature", float("inf"), ValueError), ("temperature", float("nan"), ValueError),
    ("temperature", "1", TypeError), ("temperature", None, TypeError), ("temperature", True, TypeError),
    ("temperature", torch.tensor(2.0), TypeError),
    ("scale", 0, ValueError), ("scale", -0.5, ValueError), ("scale", float("inf"), ValueError),
    ("scale", float("nan"), ValueError), ("scale", "0.5", TypeError), ("scale", [0.5], TypeError),
])
def test_rejects_bad_temperature_and_scale(name, value, error):
    with pytest.raises(error, match=name):
        attention(Q, K, V, **{name: value})


def test_rejects_both_mask_and_is_causal():
    with pytest.raises(ValueError, match="is_causal"):
        attention(Q, K, V, causal_mask(3, 5), is_causal=True)
    with pytest.raises(ValueError, match="mask"):
        attention(Q, K, V, torch.zeros(3, 5), is_causal=True)
