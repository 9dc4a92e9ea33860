"""Sparse attention (§3.5): patterns against their definitions, kernels against exact attention."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from support import DEVICES, DTYPES, randn, tol

from attnbook import attention
from attnbook.sparse import (bigbird_pattern, block_local_attention, block_local_pattern,
                             block_weights_dense, causal_pattern, global_tokens_pattern,
                             lsh_attention, lsh_buckets, pattern_density, sliding_window_attention,
                             sliding_window_pattern, sparse_attention, strided_pattern,
                             window_weights_dense)

FAST = settings(max_examples=20, deadline=None)
sdpa = F.scaled_dot_product_attention


def brute(length, rule):
    return torch.tensor([[bool(rule(i, j)) for j in range(length)] for i in range(length)])


def qkv(batch=(2, 3), length=10, d=4, dv=5, dtype=torch.float64, device="cpu", seed=0):
    return (randn(*batch, length, d, seed=seed, dtype=dtype, device=device),
            randn(*batch, length, d, seed=seed + 1, dtype=dtype, device=device),
            randn(*batch, length, dv, seed=seed + 2, dtype=dtype, device=device))


def shared_qk_reference(qk, value, pattern):
    """Exact shared-QK attention (keys = unit queries) where the pattern allows, self as a last resort."""
    eye = torch.eye(qk.shape[-2], dtype=torch.bool, device=qk.device)
    others = pattern & ~eye
    allowed = others | (eye & ~others.any(-1, keepdim=True))
    return attention(qk, F.normalize(qk, dim=-1), value, allowed)


# ---------------------------------------------------------------- patterns = their definitions

@FAST
@given(st.integers(1, 12), st.integers(0, 5), st.integers(1, 4), st.booleans())
def test_sliding_window_pattern_is_its_definition(length, window, dilation, causal):
    def rule(i, j):
        steps = range(0, window + 1) if causal else range(-window, window + 1)
        return any(i - j == m * dilation for m in steps)

    assert torch.equal(sliding_window_pattern(length, window, dilation=dilation, causal=causal),
                       brute(length, rule))


@FAST
@given(st.integers(1, 12), st.integers(1, 6))
def test_block_local_pattern_is_its_definition(length, block):
    want = brute(length, lambda i, j: i // block == j // block)
    assert torch.equal(block_local_pattern(length, block), want)


@FAST
@given(st.integers(1, 12), st.integers(0, 4), st.data())
def test_global_tokens_pattern_is_its_definition(length, window, data):
    g = data.draw(st.lists(st.integers(0, length - 1), max_size=3))
    want = brute(length, lambda i, j: abs(i - j) <= window or i in g or j in g)
    assert torch.equal(global_tokens_pattern(length, window, g), want)
    assert torch.equal(global_tokens_pattern(length, window, torch.tensor(g, dtype=torch.long)), want)


@FAST
@given(st.integers(1, 14), st.integers(1, 5), st.booleans())
def test_strided_pattern_is_child_et_al_two_heads(length, stride, causal):
    """A¹ = {max(0, i − l), …, i} ∪ A² = {j : (i − j) mod l = 0} (both sides when not causal)."""
    def rule(i, j):
        if causal and j > i:
            return False
        local = abs(i - j) <= stride
        return local or abs(i - j) % stride == 0

    assert torch.equal(strided_pattern(length, stride, causal=causal), brute(length, rule))


@FAST
@given(st.integers(1, 12))
def test_causal_pattern_is_j_le_i(length):
    assert torch.equal(causal_pattern(length), brute(length, lambda i, j: j <= i))


@FAST
@given(st.integers(1, 14), st.integers(0, 3), st.integers(0, 3), st.integers(0, 5), st.integers(0, 99))
def test_bigbird_pattern_is_window_global_and_random(length, window, global_count, random_count, seed):
    global_count = min(global_count, length)
    m = bigbird_pattern(length, window, global_count, random_count,
                        generator=torch.Generator().manual_seed(seed))
    base = brute(length, lambda i, j: abs(i - j) <= window or i < global_count or j < global_count)
    assert not (base & ~m).any()                   # window and global tokens always present
    extra = (m & ~base).sum(-1)
    want = torch.minimum(torch.full((length,), random_count), length - base.sum(-1))
    assert torch.equal(extra, want)                # exactly random_count new keys per row (when left)
    again = bigbird_pattern(length, window, global_count, random_count,
                            generator=torch.Generator().manual_seed(seed))
    assert torch.equal(m, again)


def test_bigbird_random_keys_depend_on_the_generator_and_cover_the_keys():
    draws = [bigbird_pattern(32, 1, 1, 3, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    assert not torch.equal(draws[0], draws[1])
    base = global_tokens_pattern(32, 1, [0])
    hits = sum((m & ~base).int() for m in draws)
    assert (hits[1:][~base[1:]] > 0).float().mean() > 0.9  # random keys land almost everywhere


# ---------------------------------------------------------------- densities = counted pairs

def test_pattern_densities_equal_their_expected_counts():
    L, w, d, b, s = 23, 3, 2, 5, 4
    window = sum(1 + min(w, i // d) + min(w, (L - 1 - i) // d) for i in range(L))
    assert pattern_density(sliding_window_pattern(L, w, dilation=d)) == window / L**2
    causal_window = sum(1 + min(w, i // d) for i in range(L))
    assert pattern_density(sliding_window_pattern(L, w, dilation=d, causal=True)) == causal_window / L**2
    blocks = (L // b) * b**2 + (L % b) ** 2
    assert pattern_density(block_local_pattern(L, b)) == blocks / L**2
    assert pattern_density(causal_pattern(L)) == L * (L + 1) / 2 / L**2
    strided = sum(min(i, s) + 1 + max(i // s - 1, 0) for i in range(L))
    assert pattern_density(strided_pattern(L, s)) == strided / L**2
    g, r = 2, 3  # g full global rows; a later row sees the g global keys and its band beyond them
    rows = [g + min(i + w, L - 1) - max(i - w, g) + 1 for i in range(g, L)]
    assert pattern_density(global_tokens_pattern(L, w, range(g))) == (g * L + sum(rows)) / L**2
    bigbird = bigbird_pattern(L, w, g, r, generator=torch.Generator().manual_seed(0))
    assert pattern_density(bigbird) == (g * L + sum(min(L, n + r) for n in rows)) / L**2


def test_sparse_patterns_grow_linearly_not_quadratically():
    for L in (64, 256):
        assert sliding_window_pattern(L, 4).sum() < 9 * L
        assert strided_pattern(L, 8).sum() <= L * (8 + 1 + L // 8)
    long, short = (pattern_density(sliding_window_pattern(L, 4)) for L in (256, 64))
    assert long < short / 3


# ---------------------------------------------------------------- kernels = exact attention

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window, dilation, causal", [(0, 1, False), (2, 1, False), (3, 1, True),
                                                      (2, 3, False), (2, 2, True), (15, 1, False)])
def test_sliding_window_attention_equals_exact_masked_attention(device, dtype, window, dilation, causal):
    q, k, v = qkv(length=11, dtype=dtype, device=device)
    pattern = sliding_window_pattern(11, window, dilation=dilation, causal=causal, device=device)
    out, banded = sliding_window_attention(q, k, v, window, dilation=dilation, causal=causal)
    assert banded.shape == (2, 3, 11, window + 1 if causal else 2 * window + 1)
    want, want_weights = attention(q, k, v, pattern)
    torch.testing.assert_close(out, want, **tol(dtype))
    torch.testing.assert_close(out, sdpa(q, k, v, attn_mask=pattern), **tol(dtype))
    dense = window_weights_dense(banded, window, dilation=dilation, causal=causal)
    torch.testing.assert_close(dense, want_weights, **tol(dtype))


@FAST
@given(st.integers(1, 13), st.integers(0, 5), st.integers(1, 3), st.booleans(), st.floats(0.1, 3.0))
def test_sliding_window_attention_matches_sdpa_for_any_window(length, window, dilation, causal, scale):
    q, k, v = qkv(batch=(2,), length=length, d=3, dv=2)
    pattern = sliding_window_pattern(length, window, dilation=dilation, causal=causal)
    out, _ = sliding_window_attention(q, k, v, window, dilation=dilation, causal=causal, scale=scale)
    torch.testing.assert_close(out, sdpa(q, k, v, attn_mask=pattern, scale=scale))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length, block", [(10, 3), (10, 5), (7, 1), (7, 7), (6, 9)])
def test_block_local_attention_equals_exact_masked_attention(device, dtype, length, block):
    q, k, v = qkv(length=length, dtype=dtype, device=device)
    pattern = block_local_pattern(length, block, device=device)
    out, blocks = block_local_attention(q, k, v, block)
    assert blocks.shape == (2, 3, -(-length // block), block, block)
    want, want_weights = attention(q, k, v, pattern)
    torch.testing.assert_close(out, want, **tol(dtype))
    torch.testing.assert_close(out, sdpa(q, k, v, attn_mask=pattern), **tol(dtype))
    torch.testing.assert_close(block_weights_dense(blocks, length), want_weights, **tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_attention_equals_sdpa_under_every_pattern(device, dtype):
    L = 13
    g = torch.Generator().manual_seed(3)
    patterns = [strided_pattern(L, 4), strided_pattern(L, 3, causal=False), causal_pattern(L),
                global_tokens_pattern(L, 1, [0, 7]), bigbird_pattern(L, 1, 2, 2, generator=g),
                sliding_window_pattern(L, 2, dilation=2)]
    q, k, v = qkv(length=L, dtype=dtype, device=device)
    for pattern in patterns:
        pattern = pattern.to(device)
        out, weights = sparse_attention(q, k, v, pattern, scale=0.7)
        torch.testing.assert_close(out, sdpa(q, k, v, attn_mask=pattern, scale=0.7), **tol(dtype))
        assert not weights[..., ~pattern].any()


def test_sparse_attention_on_rectangular_patterns_and_empty_rows():
    q, k, v = randn(2, 4, 3), randn(2, 6, 3, seed=1), randn(2, 6, 2, seed=2)
    pattern = torch.rand(4, 6) < 0.5
    pattern[1] = False
    out, weights = sparse_attention(q, k, v, pattern)
    want = torch.nan_to_num(sdpa(q, k, v, attn_mask=pattern), nan=0.0)
    torch.testing.assert_close(out, want)
    assert (out[:, 1] == 0).all() and (weights[:, 1] == 0).all()


@pytest.mark.parametrize("kernel", ["window", "strided", "causal"])
def test_causal_outputs_ignore_later_tokens(kernel):
    q, k, v = qkv(length=12)
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[..., 8:, :] += 5.0                                  # change the later tokens only
    if kernel == "window":
        def run(*a):
            return sliding_window_attention(*a, 3, dilation=2, causal=True)[0]
    else:
        pattern = strided_pattern(12, 3) if kernel == "strided" else causal_pattern(12)

        def run(*a):
            return sparse_attention(*a, pattern)[0]
    before, after = run(q, k, v), run(q2, k2, v2)
    torch.testing.assert_close(before[..., :8, :], after[..., :8, :], rtol=0, atol=0)
    assert not torch.allclose(before[..., 8:, :], after[..., 8:, :])


def test_sparse_kernels_stay_finite_on_huge_logits_and_have_exact_gradients():
    q, k, v = (t * 1e2 for t in qkv(batch=(1,), length=7, d=2, dv=2))
    for out in (sliding_window_attention(q, k, v, 2)[0], block_local_attention(q, k, v, 3)[0],
                lsh_attention(q, v, 2, 3, generator=torch.Generator().manual_seed(0))[0]):
        assert torch.isfinite(out).all()
    q, k, v = qkv(batch=(2,), length=7, d=3, dv=2)
    for t in (q, k, v):
        t.requires_grad_(True)
    def window(*a):
        return sliding_window_attention(*a, 2, dilation=2)[0]

    def lsh(qk, val):
        return lsh_attention(qk, val, 4, 2, n_hashes=2, generator=torch.Generator().manual_seed(0))[0]

    check = dict(fast_mode=True)
    assert torch.autograd.gradcheck(window, (q, k, v), **check)
    assert torch.autograd.gradcheck(lambda *a: block_local_attention(*a, 3)[0], (q, k, v), **check)
    assert torch.autograd.gradcheck(lsh, (q, v), **check)


def test_sliding_window_attention_runs_in_bfloat16():
    q, k, v = qkv(length=9, dtype=torch.bfloat16)
    out, _ = sliding_window_attention(q, k, v, 2)
    want = attention(*(t.double() for t in (q, k, v)), sliding_window_pattern(9, 2))[0]
    torch.testing.assert_close(out.double(), want, **tol(torch.bfloat16))


# ---------------------------------------------------------------- LSH attention

def brute_lsh_pattern(buckets, chunk, causal):
    """The pairs Reformer compares, from the buckets of each round by a loop: (L, L) bool."""
    rounds, length = buckets.shape
    seen = torch.zeros(length, length, dtype=torch.bool)
    for r in range(rounds):
        order = sorted(range(length), key=lambda t: (buckets[r, t].item(), t))
        chunk_of = {t: slot // chunk for slot, t in enumerate(order)}
        for i in range(length):
            for j in range(length):
                if chunk_of[j] in (chunk_of[i], chunk_of[i] - 1) and (j <= i or not causal):
                    seen[i, j] = True
    others = seen & ~torch.eye(length, dtype=torch.bool)
    return others | (torch.eye(length, dtype=torch.bool) & ~others.any(-1, keepdim=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_lsh_with_one_bucket_and_one_chunk_is_exact_shared_qk_attention(device, dtype, causal):
    qk, _, v = qkv(length=9, dtype=dtype, device=device)
    out, buckets, pattern = lsh_attention(qk, v, 1, 9, causal=causal)
    full = causal_pattern(9, device=device) if causal else torch.ones(9, 9, dtype=torch.bool, device=device)
    want, _ = shared_qk_reference(qk, v, full)
    torch.testing.assert_close(out, want, **tol(dtype))
    assert (buckets == 0).all() and buckets.shape == (2, 3, 1, 9)
    eye = torch.eye(9, dtype=torch.bool, device=device)
    others = full & ~eye
    assert torch.equal(pattern, (others | (eye & ~others.any(-1, keepdim=True))).expand_as(pattern))
    if not causal:  # SDPA with the same keys and mask: no self at all
        sdpa_out = sdpa(qk, F.normalize(qk, dim=-1), v, attn_mask=~eye)
        torch.testing.assert_close(out, sdpa_out, **tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_buckets, chunk, n_hashes, causal",
                         [(4, 3, 1, False), (4, 3, 2, True), (8, 4, 3, False), (2, 5, 2, False),
                          (1, 4, 1, True)])
def test_lsh_attention_is_exact_attention_over_the_compared_pairs(device, dtype, n_buckets, chunk, n_hashes,
                                                                  causal):
    qk, _, v = qkv(batch=(2,), length=11, d=6, dv=3, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(7)
    out, buckets, pattern = lsh_attention(qk, v, n_buckets, chunk, n_hashes=n_hashes, causal=causal,
                                          generator=g)
    assert buckets.shape == (2, n_hashes, 11) and pattern.shape == (2, 11, 11)
    for b in range(2):  # the pattern is the pairs that sort-and-chunk compares, by a loop
        assert torch.equal(pattern[b].cpu(), brute_lsh_pattern(buckets[b].cpu(), chunk, causal))
    want, _ = shared_qk_reference(qk, v, pattern)
    torch.testing.assert_close(out, want, **tol(dtype))
    torch.testing.assert_close(out, sdpa(qk, F.normalize(qk, dim=-1), v, attn_mask=pattern), **tol(dtype))
    assert pattern.sum(-1).max() <= 2 * chunk * n_hashes  # each round compares at most 2·chunk keys


def test_lsh_buckets_give_identical_vectors_one_bucket_and_near_ones_often():
    g = torch.Generator().manual_seed(0)
    x = randn(50, 16)
    twins = torch.cat([x, x])
    buckets = lsh_buckets(twins, 8, n_hashes=10, generator=g)
    assert buckets.shape == (10, 100) and buckets.min() >= 0 and buckets.max() < 8
    assert torch.equal(buckets[:, :50], buckets[:, 50:])
    near = x + 0.1 * randn(50, 16, seed=1)
    far = randn(50, 16, seed=2)
    b = lsh_buckets(torch.cat([x, near, far]), 8, n_hashes=100, generator=torch.Generator().manual_seed(1))
    p_near = (b[:, :50] == b[:, 50:100]).double().mean().item()
    p_far = (b[:, :50] == b[:, 100:]).double().mean().item()
    assert p_near > 0.8 and p_far < 0.3, (p_near, p_far)
    assert torch.equal(lsh_buckets(x, 8, generator=torch.Generator().manual_seed(3)),
                       lsh_buckets(x, 8, generator=torch.Generator().manual_seed(3)))
    assert (lsh_buckets(x, 8, n_hashes=1).unique().numel()) > 4   # uses all buckets


@settings(max_examples=12, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**16))
def test_lsh_outputs_are_unsorted_back_to_their_tokens(length, seed):
    """Permuting the tokens permutes buckets and (when all pairs are compared) outputs."""
    qk, _, v = qkv(batch=(2,), length=length, d=4, dv=3, seed=seed % 100)
    perm = torch.randperm(length, generator=torch.Generator().manual_seed(seed))
    g1, g2 = (torch.Generator().manual_seed(seed) for _ in range(2))
    out, buckets, _ = lsh_attention(qk, v, 4, length, n_hashes=2, generator=g1)
    out_p, buckets_p, _ = lsh_attention(qk[:, perm], v[:, perm], 4, length, n_hashes=2, generator=g2)
    assert torch.equal(buckets_p, buckets[..., perm])
    torch.testing.assert_close(out_p, out[:, perm])


def test_lsh_pattern_is_sparse_for_long_sequences():
    qk, _, v = qkv(batch=(1,), length=256, d=8, dv=2)
    out, _, pattern = lsh_attention(qk, v, 16, 16, generator=torch.Generator().manual_seed(0))
    assert pattern_density(pattern) < 2 * 16 / 256 + 1e-9
    none = lsh_attention(qk, v, 16, 16, generator=torch.Generator().manual_seed(0), return_pattern=False)
    assert none[2] is None
    torch.testing.assert_close(none[0], out)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, exc, match", [
    (lambda: sliding_window_pattern(5, -1), ValueError, "window"),
    (lambda: sliding_window_pattern(5, 1.5), TypeError, "window"),
    (lambda: sliding_window_pattern(5, 1, dilation=0), ValueError, "dilation"),
    (lambda: sliding_window_pattern(0, 1), ValueError, "length"),
    (lambda: block_local_pattern(5, 0), ValueError, "block"),
    (lambda: strided_pattern(5, 0), ValueError, "stride"),
    (lambda: strided_pattern(5, -2), ValueError, "stride"),
    (lambda: global_tokens_pattern(5, 1, [5]), ValueError, "global_positions"),
    (lambda: global_tokens_pattern(5, 1, [0.5]), TypeError, "global_positions"),
    (lambda: global_tokens_pattern(5, -1, [0]), ValueError, "window"),
    (lambda: bigbird_pattern(5, 1, 6, 1), ValueError, "global_count"),
    (lambda: bigbird_pattern(5, 1, 1, -1), ValueError, "random_count"),
    (lambda: pattern_density(torch.ones(3, 3)), TypeError, "pattern"),
    (lambda: pattern_density(torch.ones(3, dtype=torch.bool)), ValueError, "pattern"),
    (lambda: sliding_window_attention(*qkv(), -1), ValueError, "window"),
    (lambda: sliding_window_attention(*qkv(), 1, dilation=0), ValueError, "dilation"),
    (lambda: sliding_window_attention(*qkv(), 1, scale=0.0), ValueError, "scale"),
    (lambda: sliding_window_attention(randn(3, 4), randn(5, 4), randn(5, 2), 1), ValueError, "Lq=3"),
    (lambda: sliding_window_attention(randn(3, 4), randn(3, 2), randn(3, 2), 1), ValueError, "query"),
    (lambda: block_local_attention(*qkv(), 0), ValueError, "block"),
    (lambda: block_local_attention(randn(3, 4), randn(3, 4).float(), randn(3, 2), 1), TypeError, "key"),
    (lambda: sparse_attention(*qkv(), torch.ones(10, 10)), TypeError, "pattern"),
    (lambda: sparse_attention(*qkv(), torch.ones(9, 10, dtype=torch.bool)), ValueError, "pattern"),
    (lambda: lsh_buckets(randn(4, 3), 3), ValueError, "n_buckets"),
    (lambda: lsh_buckets(randn(4, 3), 0), ValueError, "n_buckets"),
    (lambda: lsh_buckets(randn(4, 3), 4, n_hashes=0), ValueError, "n_hashes"),
    (lambda: lsh_buckets(randn(4), 4), ValueError, "x"),
    (lambda: lsh_attention(randn(4, 3), randn(4, 2), 4, 0), ValueError, "chunk"),
    (lambda: lsh_attention(randn(4, 3), randn(4, 2), 5, 2), ValueError, "n_buckets"),
    (lambda: lsh_attention(randn(4, 3), randn(5, 2), 4, 2), ValueError, "value"),
    (lambda: window_weights_dense(randn(4, 4), 2), ValueError, "weights"),
    (lambda: block_weights_dense(randn(2, 3, 3), 9), ValueError, "weights"),
])
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_pattern_functions_build_on_the_requested_device():
    for device in DEVICES:
        for m in (sliding_window_pattern(6, 1, device=device), block_local_pattern(6, 2, device=device),
                  strided_pattern(6, 2, device=device), causal_pattern(6, device=device),
                  global_tokens_pattern(6, 1, [0], device=device),
                  bigbird_pattern(6, 1, 1, 1, device=device)):
            assert m.device.type == device and m.dtype == torch.bool
    assert math.isclose(pattern_density(torch.ones(2, 3, 4, dtype=torch.bool)), 1.0)
