"""attnbook.positions (§5.1, §3.2) against loops written from each paper's definition."""
import cmath
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from support import DEVICES, DTYPES, randn, tol

from attnbook import attention
from attnbook.positions import (LearnedPositionalEmbedding, RelativePositionEmbedding, T5RelativeBias,
                                alibi_bias, alibi_slopes, apply_rope, relative_attention,
                                relative_positions, rope_attention, rope_frequencies,
                                sinusoidal_encoding, t5_relative_bucket)

FAST = settings(max_examples=20, deadline=None)


# ---------------------------------------------------------------- references from the papers

def brute_sinusoids(length, dim, base=10000.0):
    """Vaswani et al. (2017), eq. in §3.5, one entry at a time."""
    pe = torch.zeros(length, dim, dtype=torch.float64)
    for p in range(length):
        for c in range(dim):
            i = c // 2
            angle = p / base ** (2 * i / dim)
            pe[p, c] = math.sin(angle) if c % 2 == 0 else math.cos(angle)
    return pe


def brute_shaw(q, k, v, rel_k, rel_v, keep=None, scale=None):
    """Shaw et al. (2018), eqs. (3)-(4), one (batch, i, j) at a time in float64."""
    Q, K, V = (t.double().reshape(-1, *t.shape[-2:]) for t in (q, k, v))
    lq, lk, d, dv = Q.shape[1], K.shape[1], Q.shape[2], V.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    keep = torch.ones(lq, lk, dtype=torch.bool) if keep is None else keep
    out = torch.zeros(Q.shape[0], lq, dv, dtype=torch.float64)
    w = torch.zeros(Q.shape[0], lq, lk, dtype=torch.float64)
    for b in range(Q.shape[0]):
        for i in range(lq):
            e = {j: (Q[b, i] @ (K[b, j] + rel_k[i, j].double())).item() * scale
                 for j in range(lk) if keep[i, j]}
            if not e:
                continue
            top = max(e.values())
            total = sum(math.exp(x - top) for x in e.values())
            for j, x in e.items():
                w[b, i, j] = math.exp(x - top) / total
                value = V[b, j] + (rel_v[i, j].double() if rel_v is not None else 0)
                out[b, i] += w[b, i, j] * value
    shape = q.shape[:-2]
    return out.reshape(*shape, lq, dv).to(q.dtype), w.reshape(*shape, lq, lk).to(q.dtype)


def t5_reference(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """T5's _relative_position_bucket (Mesh TensorFlow / t5 code) for one integer offset."""
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val_if_large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                                   * (num_buckets - max_exact))
    return ret + min(val_if_large, num_buckets - 1)


def brute_rope(x, positions, base=10000.0):
    """RoFormer eq. (12) as complex numbers: z_i = x_2i + i·x_2i+1 times e^(i·m·θ_i)."""
    out = torch.zeros_like(x, dtype=torch.float64)
    flat_x, flat_out = x.double().reshape(-1, *x.shape[-2:]), out.view(-1, *x.shape[-2:])
    length, d = x.shape[-2:]
    for b in range(flat_x.shape[0]):
        for m in range(length):
            for i in range(d // 2):
                theta = base ** (-2 * i / d)
                z = complex(flat_x[b, m, 2 * i], flat_x[b, m, 2 * i + 1])
                z = z * cmath.exp(1j * float(positions[m]) * theta)
                flat_out[b, m, 2 * i], flat_out[b, m, 2 * i + 1] = z.real, z.imag
    return out.to(x.dtype)


def paper_alibi_slopes(n):
    """Press et al. (2022), the authors' get_slopes, verbatim in spirit."""
    def get_slopes_power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        ratio = start
        return [start * ratio ** i for i in range(n)]
    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (get_slopes_power_of_2(closest_power_of_2)
            + paper_alibi_slopes(2 * closest_power_of_2)[0::2][:n - closest_power_of_2])


# ---------------------------------------------------------------- sinusoids

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length, dim, base", [(7, 6, 10000.0), (12, 5, 10000.0), (3, 1, 100.0), (9, 16, 50.0)])
def test_sinusoids_equal_the_loop(length, dim, base, dtype, device):
    pe = sinusoidal_encoding(length, dim, base=base, dtype=dtype, device=device)
    assert pe.shape == (length, dim) and pe.dtype == dtype and pe.device.type == device
    torch.testing.assert_close(pe.cpu(), brute_sinusoids(length, dim, base).to(dtype), **tol(dtype))


@FAST
@given(k=st.integers(1, 40), half=st.integers(1, 6))
def test_sinusoid_shift_is_a_rotation_of_each_pair(k, half):
    """PE[p + k] = M_k PE[p] for every p, with M_k block-diagonal rotations by k·ω_i."""
    dim, base = 2 * half, 10000.0
    pe = sinusoidal_encoding(60, dim, dtype=torch.float64)
    m = torch.zeros(dim, dim, dtype=torch.float64)
    for i in range(half):
        a = k / base ** (2 * i / dim)
        # (sin(x + a), cos(x + a)) = [[cos a, sin a], [−sin a, cos a]] (sin x, cos x)
        m[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[math.cos(a), math.sin(a)],
                                                            [-math.sin(a), math.cos(a)]],
                                                           dtype=torch.float64)
    torch.testing.assert_close(pe[k:], pe[:-k] @ m.T, **tol(torch.float64))


# ---------------------------------------------------------------- learned absolute positions

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_learned_positions_add_the_table_rows(dtype, device):
    emb = LearnedPositionalEmbedding(10, 4).to(dtype=dtype, device=device)
    x = randn(2, 3, 7, 4, dtype=dtype, device=device)
    table = emb.embedding.weight.detach()
    torch.testing.assert_close(emb(x), x + table[:7], **tol(dtype))
    positions = torch.tensor([9, 0, 3, 3, 1, 2, 8], device=device)
    torch.testing.assert_close(emb(x, positions), x + table[positions], **tol(dtype))
    assert emb(x).requires_grad


def test_learned_positions_reject_bad_input():
    emb = LearnedPositionalEmbedding(5, 4)
    with pytest.raises(ValueError, match="length 6 > max_length=5"):
        emb(torch.zeros(6, 4))
    with pytest.raises(ValueError, match="positions must lie in"):
        emb(torch.zeros(3, 4), torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="positions has shape"):
        emb(torch.zeros(3, 4), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="positions must be an integer"):
        emb(torch.zeros(3, 4), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="x has width 3"):
        emb(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="max_length"):
        LearnedPositionalEmbedding(0, 4)
    with pytest.raises(TypeError, match="dim"):
        LearnedPositionalEmbedding(4, 2.5)


# ---------------------------------------------------------------- Shaw et al. (2018)

def test_relative_positions_are_key_minus_query():
    r = relative_positions(3, 5)
    assert r.shape == (3, 5)
    assert all(r[i, j] == j - i for i in range(3) for j in range(5))


@pytest.mark.parametrize("lq, lk, k", [(4, 7, 2), (6, 3, 1), (5, 5, 10)])
def test_relative_embedding_clips_the_offsets(lq, lk, k):
    rel = RelativePositionEmbedding(k, 3, value_dim=5)
    rel_k, rel_v = rel(lq, lk)
    assert rel_k.shape == (lq, lk, 3) and rel_v.shape == (lq, lk, 5)
    for i in range(lq):
        for j in range(lk):
            row = max(-k, min(k, j - i)) + k
            assert torch.equal(rel_k[i, j], rel.key_table.weight[row])
            assert torch.equal(rel_v[i, j], rel.value_table.weight[row])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq, lk, with_values, masked", [(4, 6, True, False), (5, 3, False, True),
                                                          (6, 6, True, True)])
def test_relative_attention_equals_shaw_loop(lq, lk, with_values, masked, dtype, device):
    d, dv = 4, 3
    rel = RelativePositionEmbedding(2, d, value_dim=dv).to(dtype=dtype, device=device)
    rel_k, rel_v = (t.detach() for t in rel(lq, lk))
    rel_v = rel_v if with_values else None
    q = randn(2, 3, lq, d, seed=1, dtype=dtype, device=device)
    k = randn(2, 3, lk, d, seed=2, dtype=dtype, device=device)
    v = randn(2, 3, lk, dv, seed=3, dtype=dtype, device=device)
    keep = (torch.rand(lq, lk, generator=torch.Generator().manual_seed(4)) > 0.4) if masked else None
    if masked:
        keep[0] = False  # a query that may attend to nothing
    out, w = relative_attention(q, k, v, rel_k, rel_v, None if keep is None else keep.to(device))
    ref_out, ref_w = brute_shaw(q.cpu(), k.cpu(), v.cpu(), rel_k.cpu(),
                                None if rel_v is None else rel_v.cpu(), keep)
    torch.testing.assert_close(w.cpu(), ref_w, **tol(dtype))
    torch.testing.assert_close(out.cpu(), ref_out, **tol(dtype))
    if masked:
        assert (out[..., 0, :] == 0).all() and (w[..., 0, :] == 0).all()


def test_relative_attention_with_zero_tables_is_sdpa():
    q, k, v = randn(2, 5, 4, seed=1), randn(2, 7, 4, seed=2), randn(2, 7, 6, seed=3)
    out, _ = relative_attention(q, k, v, torch.zeros(5, 7, 4, dtype=q.dtype),
                                torch.zeros(5, 7, 6, dtype=q.dtype), scale=0.3)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.3))


def test_relative_attention_rejects_bad_input():
    q, k, v = randn(5, 4), randn(7, 4), randn(7, 6)
    with pytest.raises(ValueError, match=r"rel_k has shape \(7, 5, 4\)"):
        relative_attention(q, k, v, torch.zeros(7, 5, 4, dtype=q.dtype))
    with pytest.raises(ValueError, match="rel_v has shape"):
        relative_attention(q, k, v, torch.zeros(5, 7, 4, dtype=q.dtype), torch.zeros(5, 7, 4, dtype=q.dtype))
    with pytest.raises(TypeError, match="rel_k has dtype"):
        relative_attention(q, k, v, torch.zeros(5, 7, 4))
    with pytest.raises(ValueError, match="key has Lk"):
        relative_attention(q, k, v[:6], torch.zeros(5, 7, 4, dtype=q.dtype))
    with pytest.raises(ValueError, match="mask"):
        relative_attention(q, k, v, torch.zeros(5, 7, 4, dtype=q.dtype), mask=torch.ones(5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="scale"):
        relative_attention(q, k, v, torch.zeros(5, 7, 4, dtype=q.dtype), scale=-1.0)
    with pytest.raises(ValueError, match="max_distance"):
        RelativePositionEmbedding(0, 4)


# ---------------------------------------------------------------- T5 (Raffel et al., 2020)

@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (16, 64), (8, 20), (33, 100), (4, 3)])
def test_t5_buckets_equal_the_reference(bidirectional, num_buckets, max_distance):
    if not bidirectional and max_distance <= num_buckets // 2:
        pytest.skip("max_distance must exceed the exact buckets")
    r = torch.arange(-400, 401)
    got = t5_relative_bucket(r, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    ref = [t5_reference(int(x), bidirectional, num_buckets, max_distance) for x in r]
    assert got.dtype == torch.int64 and got.tolist() == ref
    assert got.min() >= 0 and got.max() < num_buckets


def test_t5_buckets_keep_any_shape_and_integer_dtype():
    r = relative_positions(6, 9).to(torch.int32)
    got = t5_relative_bucket(r, num_buckets=8, max_distance=16)
    assert got.shape == (6, 9)
    assert got.tolist() == [[t5_reference(j - i, True, 8, 16) for j in range(9)] for i in range(6)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_bias_is_a_lookup_and_an_additive_mask(bidirectional, dtype, device):
    heads, lq, lk = 3, 5, 8
    module = T5RelativeBias(8, 16, heads, bidirectional).to(dtype=dtype, device=device)
    bias = module(lq, lk)
    assert bias.shape == (heads, lq, lk) and bias.dtype == dtype
    w = module.embedding.weight.detach().cpu()
    for h in range(heads):
        for i in range(lq):
            for j in range(lk):
                assert bias[h, i, j].item() == w[t5_reference(j - i, bidirectional, 8, 16), h].item()
    q = randn(2, heads, lq, 4, seed=1, dtype=dtype, device=device)
    k = randn(2, heads, lk, 4, seed=2, dtype=dtype, device=device)
    v = randn(2, heads, lk, 3, seed=3, dtype=dtype, device=device)
    out, _ = attention(q, k, v, bias.detach())
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias.detach()), **tol(dtype))


def test_t5_rejects_bad_input():
    r = torch.arange(-3, 4)
    with pytest.raises(ValueError, match="num_buckets"):
        t5_relative_bucket(r, num_buckets=0)
    with pytest.raises(ValueError, match="num_buckets must be ≥ 4"):
        t5_relative_bucket(r, num_buckets=3)
    with pytest.raises(ValueError, match="max_distance"):
        t5_relative_bucket(r, num_buckets=32, max_distance=8)
    with pytest.raises(TypeError, match="relative_position must be an integer"):
        t5_relative_bucket(r.float())
    with pytest.raises(TypeError, match="relative_position"):
        t5_relative_bucket([1, 2])
    with pytest.raises(TypeError, match="bidirectional"):
        t5_relative_bucket(r, bidirectional=1)
    with pytest.raises(ValueError, match="heads"):
        T5RelativeBias(32, 128, 0)
    with pytest.raises(ValueError, match="num_buckets"):
        T5RelativeBias(-1, 128, 4)


# ---------------------------------------------------------------- RoPE (Su et al., 2021)

def test_rope_frequencies_follow_the_formula():
    theta = rope_frequencies(8, base=100.0)
    torch.testing.assert_close(theta, torch.tensor([100.0 ** (-2 * i / 8) for i in range(4)], dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_equals_complex_rotation(dtype, device):
    x = randn(2, 3, 7, 6, seed=5, dtype=dtype, device=device)
    positions = torch.tensor([0, 1, 2, 5, 9, 100, 4000])
    got = apply_rope(x, positions.to(device), base=500.0)
    torch.testing.assert_close(got.cpu(), brute_rope(x.cpu(), positions, base=500.0), **tol(dtype))
    torch.testing.assert_close(apply_rope(x).cpu(), brute_rope(x.cpu(), range(7)), **tol(dtype))


def test_rope_in_bfloat16_is_close():
    x = randn(4, 9, 8, seed=6)
    got = apply_rope(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), apply_rope(x), atol=5e-2, rtol=5e-2)


@FAST
@given(seed=st.integers(0, 2 ** 16), length=st.integers(1, 8), half=st.integers(1, 5))
def test_rope_preserves_norms(seed, length, half):
    x = randn(2, length, 2 * half, seed=seed)
    positions = torch.randint(-1000, 1000, (length,), generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(apply_rope(x, positions).norm(dim=-1), x.norm(dim=-1))


@FAST
@given(seed=st.integers(0, 2 ** 16), m=st.integers(-500, 500), n=st.integers(-500, 500),
       shift=st.integers(-500, 500))
def test_rope_scores_depend_only_on_the_offset(seed, m, n, shift):
    q, k = randn(1, 8, seed=seed), randn(1, 8, seed=seed + 1)

    def score(a, b):
        return (apply_rope(q, torch.tensor([a])) @ apply_rope(k, torch.tensor([b])).T).item()

    assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq, lk, causal", [(4, 6, False), (5, 5, True), (6, 3, True)])
def test_rope_attention_is_sdpa_on_rotated_queries_and_keys(lq, lk, causal, dtype, device):
    q = randn(2, 3, lq, 4, seed=1, dtype=dtype, device=device)
    k = randn(2, 3, lk, 4, seed=2, dtype=dtype, device=device)
    v = randn(2, 3, lk, 5, seed=3, dtype=dtype, device=device)
    out, w = rope_attention(q, k, v, is_causal=causal)
    rq, rk = (brute_rope(t.cpu(), range(t.shape[-2])).to(device) for t in (q, k))
    mask = torch.ones(lq, lk, dtype=torch.bool, device=device).tril() if causal else None
    torch.testing.assert_close(out, F.scaled_dot_product_attention(rq, rk, v, attn_mask=mask), **tol(dtype))
    torch.testing.assert_close(out, attention(rq, rk, v, is_causal=causal)[0], **tol(dtype))
    assert w.shape == (2, 3, lq, lk)


def test_rope_attention_with_a_cache_matches_the_full_sequence():
    """The last 2 queries at positions 4, 5 against all 6 keys = the last rows of the full causal run."""
    x = randn(2, 6, 8, seed=7)
    full, _ = rope_attention(x, x, x, is_causal=True)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()[4:]
    last, _ = rope_attention(x[:, 4:], x, x, mask, positions_q=torch.tensor([4, 5]))
    torch.testing.assert_close(last, full[:, 4:])


def test_rope_rejects_bad_input():
    with pytest.raises(ValueError, match="x must have an even width"):
        apply_rope(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="dim must be even"):
        rope_frequencies(7)
    with pytest.raises(ValueError, match="positions has shape"):
        apply_rope(torch.zeros(3, 4), torch.arange(4))
    with pytest.raises(ValueError, match="positions has shape"):
        apply_rope(torch.zeros(3, 4), torch.zeros(2, 3))  # would enlarge x: no silent broadcast
    with pytest.raises(TypeError, match="positions must be a real"):
        apply_rope(torch.zeros(3, 4), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="positions must be finite"):
        apply_rope(torch.zeros(3, 4), torch.tensor([0.0, math.inf, 1.0]))
    with pytest.raises(ValueError, match="base"):
        apply_rope(torch.zeros(3, 4), base=0.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        apply_rope([[1.0, 2.0]])
    q, k, v = randn(3, 4), randn(5, 4), randn(5, 2)
    with pytest.raises(ValueError, match="positions_k has shape"):
        rope_attention(q, k, v, positions_k=torch.arange(3))
    with pytest.raises(ValueError, match="query must have an even width"):
        rope_attention(randn(3, 3), randn(5, 3), v)
    with pytest.raises(ValueError, match="query has width"):
        rope_attention(q, randn(5, 6), v)


# ---------------------------------------------------------------- ALiBi (Press et al., 2022)

def test_alibi_slopes_for_8_heads_are_powers_of_one_half():
    torch.testing.assert_close(alibi_slopes(8, dtype=torch.float64),
                               torch.tensor([2.0 ** -h for h in range(1, 9)], dtype=torch.float64))


def test_alibi_slopes_for_6_heads_follow_the_paper_rule():
    """4 slopes of 4 heads (1/4 … 1/256), then every other slope of 8 heads (1/2, 1/8)."""
    expected = [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    torch.testing.assert_close(alibi_slopes(6, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("heads", list(range(1, 40)) + [64, 100])
def test_alibi_slopes_equal_the_authors_code(heads):
    torch.testing.assert_close(alibi_slopes(heads, dtype=torch.float64),
                               torch.tensor(paper_alibi_slopes(heads), dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("lq, lk", [(4, 7), (6, 3), (5, 5)])
def test_alibi_bias_equals_the_loop(lq, lk, causal, dtype, device):
    heads = 6
    bias = alibi_bias(heads, lq, lk, causal=causal, dtype=dtype, device=device)
    assert bias.shape == (heads, lq, lk) and bias.dtype == dtype and bias.device.type == device
    slopes = paper_alibi_slopes(heads)
    ref = torch.zeros(heads, lq, lk, dtype=torch.float64)
    for h in range(heads):
        for i in range(lq):
            for j in range(lk):
                if causal and j > i:
                    ref[h, i, j] = -math.inf
                else:
                    ref[h, i, j] = -slopes[h] * abs(i - j)
    torch.testing.assert_close(bias.cpu(), ref.to(dtype), **tol(dtype))
    q = randn(2, heads, lq, 4, seed=1, dtype=dtype, device=device)
    k = randn(2, heads, lk, 4, seed=2, dtype=dtype, device=device)
    v = randn(2, heads, lk, 3, seed=3, dtype=dtype, device=device)
    out, w = attention(q, k, v, bias)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias), **tol(dtype))


def test_alibi_rejects_bad_input():
    with pytest.raises(ValueError, match="heads"):
        alibi_slopes(0)
    with pytest.raises(ValueError, match="heads"):
        alibi_bias(-2, 3, 3)
    with pytest.raises(TypeError, match="heads"):
        alibi_slopes(2.0)
    with pytest.raises(ValueError, match="lk"):
        alibi_bias(4, 3, 0)
    with pytest.raises(TypeError, match="causal"):
        alibi_bias(4, 3, 3, causal="yes")
    with pytest.raises(TypeError, match="dtype"):
        alibi_bias(4, 3, 3, dtype=torch.int64)


def test_positions_reject_bad_sizes():
    with pytest.raises(ValueError, match="length"):
        sinusoidal_encoding(0, 4)
    with pytest.raises(TypeError, match="dim"):
        sinusoidal_encoding(3, 4.0)
    with pytest.raises(ValueError, match="base"):
        sinusoidal_encoding(3, 4, base=-1.0)
    with pytest.raises(TypeError, match="dtype"):
        sinusoidal_encoding(3, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="lq"):
        relative_positions(0)


# ---------------------------------------------------------------- order: §3.2

def _self_attention(x, seed, positions=None):
    """Single-head self-attention with separate projections, optionally with positions."""
    d = x.shape[-1]
    wq, wk, wv = (randn(d, d, seed=seed + s) / math.sqrt(d) for s in range(3))
    if positions == "sinusoids":
        x = x + sinusoidal_encoding(x.shape[-2], d, dtype=x.dtype)
    q, k, v = x @ wq, x @ wk, x @ wv
    if positions == "rope":
        return rope_attention(q, k, v)[0]
    if positions == "alibi":
        return attention(q, k, v, alibi_bias(1, x.shape[-2], causal=False, dtype=x.dtype)[0])[0]
    return attention(q, k, v)[0]


@FAST
@given(seed=st.integers(0, 2 ** 16), perm=st.permutations(range(6)))
def test_self_attention_without_positions_is_permutation_equivariant(seed, perm):
    x = randn(6, 8, seed=seed)
    perm = list(perm)
    torch.testing.assert_close(_self_attention(x[perm], seed), _self_attention(x, seed)[perm])


@FAST
@given(seed=st.integers(0, 2 ** 16), perm=st.permutations(range(6)),
       positions=st.sampled_from(["sinusoids", "rope", "alibi"]))
def test_positions_break_permutation_equivariance(seed, perm, positions):
    perm = list(perm)
    assume(perm != sorted(perm))
    x = randn(6, 8, seed=seed)
    gap = (_self_attention(x[perm], seed, positions) - _self_attention(x, seed, positions)[perm]).abs().max()
    assert gap > 1e-4
