"""attnbook.lowrank (§5.2): Nyström, Linformer and singular values against torch and the papers."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from support import DEVICES, DTYPES, randn, tol

from attnbook.attention import attention
from attnbook.lowrank import (LinformerSelfAttention, attention_singular_values, effective_rank,
                              iterative_pinv, landmark_means, linformer_attention, nystrom_attention)

FAST = settings(max_examples=20, deadline=None)
sdpa = F.scaled_dot_product_attention


def qkv(batch=(2, 3), lq=4, lk=6, d=5, dv=3, dtype=torch.float64, device="cpu", seed=0):
    q = randn(*batch, lq, d, seed=seed, dtype=dtype, device=device)
    k = randn(*batch, lk, d, seed=seed + 1, dtype=dtype, device=device)
    v = randn(*batch, lk, dv, seed=seed + 2, dtype=dtype, device=device)
    return q, k, v


def brute_segment_means(x, m):
    """numpy.array_split of the positions into m contiguous segments, then the mean of each."""
    rows = np.array_split(np.arange(x.shape[-2]), m)
    return torch.stack([x[..., r.tolist(), :].mean(-2) for r in rows], dim=-2)


def brute_nystrom(q, k, v, m, scale=None):
    """F pinv(A) B V from the paper's definitions, in float64 with numpy's pseudo-inverse."""
    q, k, v = (t.detach().cpu().double() for t in (q, k, v))
    s = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    qm, km = brute_segment_means(q, m), brute_segment_means(k, m)
    f = torch.softmax(q @ km.transpose(-2, -1) * s, -1)
    a = torch.softmax(qm @ km.transpose(-2, -1) * s, -1)
    b = torch.softmax(qm @ k.transpose(-2, -1) * s, -1)
    a_pinv = torch.from_numpy(np.linalg.pinv(a.numpy()))
    return f @ a_pinv @ b @ v


# ---------------------------------------------------------------- Nyström

@pytest.mark.parametrize("length, m", [(7, 7), (7, 3), (8, 4), (9, 2), (5, 1), (6, 4)])
def test_landmark_means_are_the_means_of_contiguous_segments(length, m):
    x = randn(2, 3, length, 4)
    got = landmark_means(x, m)
    assert got.shape == (2, 3, m, 4)
    torch.testing.assert_close(got, brute_segment_means(x, m))
    if m == length:
        torch.testing.assert_close(got, x, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [None, 0.4])
def test_nystrom_with_every_token_a_landmark_is_exact_attention(device, dtype, scale):
    q, k, v = qkv((2, 3), 7, 7, 4, 5, dtype, device)
    out = nystrom_attention(q, k, v, landmarks=7, pinv_iterations=None, scale=scale)
    assert out.shape == (2, 3, 7, 5) and out.dtype == dtype and out.device == q.device
    torch.testing.assert_close(out, sdpa(q, k, v, scale=scale), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq, lk, m", [(5, 8, 3), (9, 4, 4), (6, 6, 2)])
def test_nystrom_matches_the_papers_formula(dtype, lq, lk, m):
    q, k, v = qkv((2,), lq, lk, 4, 3, dtype)
    want = brute_nystrom(q, k, v, m, scale=0.7).to(dtype)
    torch.testing.assert_close(nystrom_attention(q, k, v, landmarks=m, pinv_iterations=None, scale=0.7),
                               want, **tol(dtype))
    close = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(nystrom_attention(q, k, v, landmarks=m, pinv_iterations=40, scale=0.7),
                               want, **close)


def test_nystrom_error_shrinks_as_landmarks_grow():
    """Mean |error| against exact attention, over 10 smooth sequences: m = 2 > 8 > 16 > 32 = L."""
    base = randn(10, 32, 8, seed=1)  # 10 problems in one batch
    q, k, v = base + 0.3 * randn(10, 32, 8, seed=2), base, randn(10, 32, 3, seed=3)
    exact = attention(q, k, v)[0]
    errors = {m: (nystrom_attention(q, k, v, landmarks=m, pinv_iterations=None) - exact).abs().mean().item()
              for m in (2, 8, 16, 32)}
    assert errors[2] > 1.1 * errors[8] > 1.1 ** 2 * errors[16] > errors[32], errors
    assert errors[32] < 1e-12, errors


@pytest.mark.parametrize("dtype", DTYPES)
def test_iterative_pinv_converges_to_the_pseudo_inverse(dtype):
    g = torch.Generator().manual_seed(0)
    matrices = {
        "softmax": torch.softmax(2 * torch.randn(3, 5, 5, generator=g, dtype=dtype), -1),
        "rectangular": torch.randn(2, 4, 6, generator=g, dtype=dtype),
        "rank one": torch.full((4, 4), 0.25, dtype=dtype),
    }
    close = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-9)
    for name, a in matrices.items():
        want = torch.linalg.pinv(a)
        errors = [(iterative_pinv(a, n) - want).abs().max().item() for n in (1, 3, 30)]
        z = iterative_pinv(a, 30)
        assert z.shape == want.shape and z.dtype == dtype
        torch.testing.assert_close(z, want, **close)
        torch.testing.assert_close(a @ z @ a, a, **close)  # a Penrose condition
        assert errors[-1] <= errors[0], (name, errors)


@pytest.mark.parametrize("device", DEVICES)
def test_nystrom_with_iterative_pinv_approaches_the_exact_pinv(device):
    q, k, v = qkv((2,), 10, 12, 4, 3, device=device)
    exact = nystrom_attention(q, k, v, landmarks=5, pinv_iterations=None)
    errors = [(nystrom_attention(q, k, v, landmarks=5, pinv_iterations=n) - exact).abs().max().item()
              for n in (1, 6, 30)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-9, errors


# ---------------------------------------------------------------- Linformer

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq, lk", [(4, 6), (6, 4)])
def test_linformer_with_identity_projections_is_exact_attention(device, dtype, lq, lk):
    q, k, v = qkv((2, 3), lq, lk, 5, 3, dtype, device)
    eye = torch.eye(lk, dtype=dtype, device=device)
    for proj_v in (None, eye):
        out = linformer_attention(q, k, v, eye, proj_v)
        assert out.shape == (2, 3, lq, 3) and out.dtype == dtype and out.device == q.device
        torch.testing.assert_close(out, sdpa(q, k, v), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linformer_attends_over_the_projected_keys_and_values(dtype):
    q, k, v = qkv((2, 3), 4, 9, 5, 3, dtype)
    e, f = randn(3, 9, seed=7, dtype=dtype), randn(3, 9, seed=8, dtype=dtype)
    torch.testing.assert_close(linformer_attention(q, k, v, e, f), sdpa(q, e @ k, f @ v), **tol(dtype))
    torch.testing.assert_close(linformer_attention(q, k, v, e, scale=0.2),
                               sdpa(q, e @ k, e @ v, scale=0.2), **tol(dtype))
    # with E = F averaging blocks of 3 keys, equal keys and values in each block change nothing
    blocks = torch.repeat_interleave(torch.eye(3, dtype=dtype), 3, dim=1) / 3
    k_rep, v_rep = k[..., ::3, :].repeat_interleave(3, -2), v[..., ::3, :].repeat_interleave(3, -2)
    torch.testing.assert_close(linformer_attention(q, k_rep, v_rep, blocks), sdpa(q, k_rep, v_rep), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linformer_layer_with_identity_projections_equals_torch_multihead(dtype):
    embed, heads, length = 8, 2, 6
    torch_mha = torch.nn.MultiheadAttention(embed, heads, batch_first=True, dtype=dtype)
    layer = LinformerSelfAttention(embed, length, length, heads).to(dtype)
    with torch.no_grad():
        for proj, w, b in zip((layer.q_proj, layer.k_proj, layer.v_proj),
                              torch_mha.in_proj_weight.chunk(3), torch_mha.in_proj_bias.chunk(3)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        layer.out_proj.weight.copy_(torch_mha.out_proj.weight)
        layer.out_proj.bias.copy_(torch_mha.out_proj.bias)
        layer.proj_k.copy_(torch.eye(length))
        layer.proj_v.copy_(torch.eye(length))
    x = randn(3, length, embed, dtype=dtype)
    torch.testing.assert_close(layer(x), torch_mha(x, x, x, need_weights=False)[0], **tol(dtype))


def test_linformer_layer_shapes_sharing_and_shorter_sequences():
    layer = LinformerSelfAttention(8, 10, 4, 2)
    shared = LinformerSelfAttention(8, 10, 4, 2, share_kv=True)
    assert layer.proj_k.shape == layer.proj_v.shape == (4, 10) and shared.proj_v is None
    n = sum(p.numel() for p in layer.parameters())
    assert n - sum(p.numel() for p in shared.parameters()) == 40
    x = randn(3, 7, 8, dtype=torch.float32)
    out = layer(x)
    assert out.shape == (3, 7, 8)
    q, k, v = (layer.q_proj(x).unflatten(-1, (2, 4)).transpose(1, 2),
               layer.k_proj(x).unflatten(-1, (2, 4)).transpose(1, 2),
               layer.v_proj(x).unflatten(-1, (2, 4)).transpose(1, 2))
    heads = sdpa(q, layer.proj_k[:, :7] @ k, layer.proj_v[:, :7] @ v)
    want = layer.out_proj(heads.transpose(1, 2).flatten(-2))
    torch.testing.assert_close(out, want)
    out.sum().backward()
    assert layer.proj_k.grad is not None and layer.proj_k.grad[:, 7:].abs().sum() == 0


# ---------------------------------------------------------------- singular values and rank

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_singular_values_are_those_of_the_softmax_weights(device, dtype):
    q, k, _ = qkv((2, 3), 4, 7, 5, 1, dtype, device)
    keep = (torch.rand(4, 7, generator=torch.Generator().manual_seed(0)) < 0.6).to(device)
    for mask, scale in ((None, None), (keep, 0.5)):
        sv = attention_singular_values(q, k, mask, scale=scale)
        assert sv.shape == (2, 3, 4) and sv.dtype == dtype and sv.device == q.device
        weights = attention(q, k, k, mask, scale=scale)[1]
        want = np.linalg.svd(weights.detach().cpu().double().numpy(), compute_uv=False)
        torch.testing.assert_close(sv.cpu().double(), torch.from_numpy(want), **tol(dtype))
        assert (sv >= 0).all() and (sv[..., :-1] >= sv[..., 1:]).all()


def test_uniform_attention_has_rank_one_and_a_permutation_full_rank():
    q, k, _ = qkv((2,), 5, 6, 3, 1)
    sv = attention_singular_values(torch.zeros_like(q), k)  # every weight is 1/6
    torch.testing.assert_close(sv[..., 0], torch.full((2,), math.sqrt(5 / 6), dtype=sv.dtype))
    assert (effective_rank(sv, 0.9) == 1).all() and (effective_rank(sv, 1.0) == 1).all()
    keys = torch.eye(6, dtype=torch.float64)
    sv = attention_singular_values(keys, keys, scale=100.0)  # one-hot rows: a permutation
    torch.testing.assert_close(sv, torch.ones(6, dtype=sv.dtype))
    assert [effective_rank(sv, e).item() for e in (0.1, 0.5, 0.9, 1.0)] == [1, 3, 6, 6]
    assert effective_rank(torch.zeros(2, 4)).tolist() == [0, 0]


@FAST
@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=8), st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_effective_rank_keeps_the_energy_and_grows_with_it(values, e1, e2):
    sv = torch.tensor(values, dtype=torch.float64)
    low, high = sorted((e1, e2))
    r_low, r_high = effective_rank(sv, low).item(), effective_rank(sv, high).item()
    assert 0 <= r_low <= r_high <= len(values)
    power = sv.sort(descending=True).values ** 2
    if power.sum() > 0:
        assert power[:r_high].sum() >= high * power.sum() * (1 - 1e-12)
        assert r_high == 1 or power[:r_high - 1].sum() < high * power.sum()
    torch.testing.assert_close(effective_rank(sv[torch.randperm(len(values))], high), torch.tensor(r_high))


def test_random_attention_matrices_have_decaying_spectra():
    """Linformer's observation: most of the energy sits in a few singular values."""
    q, k, _ = qkv((4,), 32, 32, 8, 1, seed=3)
    sv = attention_singular_values(q, k)
    assert (effective_rank(sv, 0.9) < 32).all() and (effective_rank(sv, 0.5) <= 4).all()


# ---------------------------------------------------------------- bad input

def test_bad_input_names_the_argument():
    q, k, v = qkv((2,), 4, 6, 5, 3)
    eye = torch.eye(6, dtype=torch.float64)
    cases = [
        (ValueError, "landmarks", lambda: nystrom_attention(q, k, v, landmarks=0)),
        (ValueError, "landmarks", lambda: nystrom_attention(q, k, v, landmarks=5)),
        (TypeError, "landmarks", lambda: nystrom_attention(q, k, v, landmarks=2.0)),
        (ValueError, "pinv_iterations", lambda: nystrom_attention(q, k, v, landmarks=2, pinv_iterations=0)),
        (ValueError, "scale", lambda: nystrom_attention(q, k, v, landmarks=2, scale=-1.0)),
        (ValueError, "key", lambda: nystrom_attention(q, k[..., :4], v, landmarks=2)),
        (ValueError, "landmarks", lambda: landmark_means(q, 5)),
        (ValueError, "iterations", lambda: iterative_pinv(eye, 0)),
        (TypeError, "matrix", lambda: iterative_pinv(torch.eye(3, dtype=torch.int64))),
        (ValueError, "proj_k", lambda: linformer_attention(q, k, v, eye[:, :5])),
        (ValueError, "proj_k", lambda: linformer_attention(q, k, v, eye[None])),
        (TypeError, "proj_k", lambda: linformer_attention(q, k, v, eye.float())),
        (ValueError, "proj_v", lambda: linformer_attention(q, k, v, eye, eye[:3])),
        (ValueError, "proj_v", lambda: linformer_attention(q, k, v, eye[:3], torch.eye(5, 6, dtype=torch.float64))),
        (TypeError, "proj_k", lambda: linformer_attention(q, k, v, "E")),
        (ValueError, "heads", lambda: LinformerSelfAttention(8, 10, 4, 3)),
        (ValueError, "k", lambda: LinformerSelfAttention(8, 10, 11, 2)),
        (ValueError, "seq_len", lambda: LinformerSelfAttention(8, 0, 4, 2)),
        (ValueError, "seq_len", lambda: LinformerSelfAttention(8, 5, 4, 2)(torch.zeros(1, 6, 8))),
        (ValueError, "x", lambda: LinformerSelfAttention(8, 5, 4, 2)(torch.zeros(1, 5, 7))),
        (ValueError, "energy", lambda: effective_rank(torch.ones(3), 0)),
        (ValueError, "energy", lambda: effective_rank(torch.ones(3), 1.5)),
        (ValueError, "sv", lambda: effective_rank(torch.tensor([1.0, -1.0]))),
        (ValueError, "sv", lambda: effective_rank(torch.tensor([1.0, math.nan]))),
        (ValueError, "key", lambda: attention_singular_values(q, k[..., :4])),
        (ValueError, "mask", lambda: attention_singular_values(q, k, torch.ones(4, 5, dtype=torch.bool))),
    ]
    for error, name, call in cases:
        with pytest.raises(error, match=name):
            call()
