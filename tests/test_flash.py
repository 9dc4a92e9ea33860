"""attnbook.flash (§5.3): tiled attention with the online softmax against SDPA and attention()."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from support import DEVICES, DTYPES, randn, tol
from torch.overrides import TorchFunctionMode

import attnbook.flash as flash
from attnbook import attention, causal_mask
from attnbook.flash import finish, log_sum_exp, online_softmax_step, tile_schedule, tiled_attention

FAST = settings(max_examples=20, deadline=None)
BATCH, LQ, LK, D, DV = (2, 3), 13, 29, 5, 6  # lengths that no block size below divides
BLOCKS = [(1, 1), (3, 7), (7, 3), (16, 16), (64, 64), (100, 30), (1, 64), (16, 3)]


def qkv(batch=BATCH, lq=LQ, lk=LK, d=D, dv=DV, dtype=torch.float64, device="cpu", grad=False, seed=0):
    return (randn(*batch, lq, d, seed=seed, dtype=dtype, device=device, grad=grad),
            randn(*batch, lk, d, seed=seed + 1, dtype=dtype, device=device, grad=grad),
            randn(*batch, lk, dv, seed=seed + 2, dtype=dtype, device=device, grad=grad))


def sdpa(q, k, v, mask=None, **kwargs):
    """torch's SDPA with the rows that have no allowed key set to 0 (SDPA gives NaN there)."""
    return torch.nan_to_num(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs), nan=0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_q,block_k", BLOCKS)
def test_equals_sdpa_and_attention(device, dtype, block_q, block_k):
    q, k, v = qkv(dtype=dtype, device=device)
    out = tiled_attention(q, k, v, block_q=block_q, block_k=block_k)
    assert out.shape == (*BATCH, LQ, DV) and out.dtype == dtype and out.device == q.device
    torch.testing.assert_close(out, sdpa(q, k, v), **tol(dtype))
    torch.testing.assert_close(out, attention(q, k, v)[0], **tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("shape,block_q,block_k", [
    ((*BATCH, LQ, LK), 4, 5), ((LQ, LK), 16, 64), ((BATCH[0], 1, 1, LK), 3, 7), ((LK,), 4, 5),
    ((BATCH[1], LQ, 1), 5, 4)])
def test_mask_equals_sdpa(device, dtype, kind, shape, block_q, block_k):
    q, k, v = qkv(dtype=dtype, device=device)
    g = torch.Generator().manual_seed(1)
    if kind == "bool":
        mask = torch.rand(shape, generator=g) < 0.6
        if len(shape) >= 2 and shape[-2] > 1:
            mask[..., 0, :] = False  # a query that may attend to nothing
    else:
        mask = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    mask = mask.to(device)
    out = tiled_attention(q, k, v, mask, block_q=block_q, block_k=block_k)
    full = mask.expand(*BATCH, LQ, LK)  # SDPA wants at least (Lq, Lk)
    torch.testing.assert_close(out, sdpa(q, k, v, full), **tol(dtype))
    torch.testing.assert_close(out, attention(q, k, v, mask)[0], **tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq,lk", [(13, 29), (29, 13), (16, 16), (1, 9)])
@pytest.mark.parametrize("block_q,block_k", [(3, 7), (8, 4), (64, 64)])
def test_causal_equals_sdpa(device, dtype, lq, lk, block_q, block_k):
    q, k, v = qkv(lq=lq, lk=lk, dtype=dtype, device=device)
    out = tiled_attention(q, k, v, is_causal=True, block_q=block_q, block_k=block_k)
    torch.testing.assert_close(out, sdpa(q, k, v, is_causal=True), **tol(dtype))
    reference = attention(q, k, v, causal_mask(lq, lk, device=device))[0]
    torch.testing.assert_close(out, reference, **tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_scale_and_batch_free_shapes(device):
    """A custom scale, and inputs with no batch dimension or three of them."""
    for batch in [(), (2, 1, 3)]:
        q, k, v = qkv(batch=batch, device=device)
        torch.testing.assert_close(tiled_attention(q, k, v, scale=0.3, block_q=4, block_k=6),
                                   sdpa(q, k, v, scale=0.3), **tol(torch.float64))


@pytest.mark.parametrize("device", DEVICES)
def test_fully_masked_rows_give_zeros_and_finite_gradients(device):
    q, k, v = qkv(device=device, grad=True)
    mask = torch.ones(LQ, LK, dtype=torch.bool, device=device)
    mask[2] = False
    mask[5, :20] = False  # row 5 has allowed keys only in the later blocks
    out, lse = tiled_attention(q, k, v, mask, block_q=4, block_k=8, return_lse=True)
    assert torch.equal(out[..., 2, :], torch.zeros_like(out[..., 2, :]))
    assert torch.all(lse[..., 2] == -math.inf) and torch.isfinite(lse[..., [0, 1, 3, 5]]).all()
    torch.testing.assert_close(out, sdpa(q, k, v, mask), **tol(torch.float64))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[..., 2, :], torch.zeros_like(q.grad[..., 2, :]))
    every = tiled_attention(q, k, v, torch.zeros_like(mask), block_q=4, block_k=8)
    assert torch.equal(every, torch.zeros_like(every))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_keys_give_zeros(device):
    q, k, v = qkv(lk=0, device=device)
    out, lse = tiled_attention(q, k, v, return_lse=True)
    assert out.shape == (*BATCH, LQ, DV) and not out.any() and torch.all(lse == -math.inf)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("is_causal", [False, True])
def test_lse_equals_logsumexp_of_the_scores(device, is_causal):
    q, k, v = qkv(device=device)
    mask = torch.rand(LQ, LK, generator=torch.Generator().manual_seed(3)).to(device) < 0.7
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    keep = causal_mask(LQ, LK, device=device) if is_causal else mask
    expected = torch.logsumexp(scores.masked_fill(~keep, -math.inf), dim=-1)
    _, lse = tiled_attention(q, k, v, None if is_causal else mask, is_causal=is_causal,
                             block_q=5, block_k=4, return_lse=True)
    torch.testing.assert_close(lse, expected, **tol(torch.float64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["plain", "mask", "causal", "causal Lq > Lk"])
def test_gradients_equal_sdpa(device, dtype, case):
    lq, lk = (LK, LQ) if case == "causal Lq > Lk" else (LQ, LK)
    mask = None
    if case == "mask":
        mask = torch.rand(lq, lk, generator=torch.Generator().manual_seed(2)).to(device) < 0.7
    is_causal = case.startswith("causal")
    ours, theirs = qkv(lq=lq, lk=lk, dtype=dtype, device=device, grad=True), \
        qkv(lq=lq, lk=lk, dtype=dtype, device=device, grad=True)
    upstream = randn(*BATCH, lq, DV, seed=9, dtype=dtype, device=device)
    tiled_attention(*ours, mask, is_causal=is_causal, block_q=4, block_k=6).backward(upstream)
    F.scaled_dot_product_attention(*theirs, attn_mask=mask, is_causal=is_causal).backward(upstream)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, **tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_close_to_sdpa(device):
    q, k, v = qkv(dtype=torch.bfloat16, device=device)
    out = tiled_attention(q, k, v, block_q=4, block_k=8)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, sdpa(q, k, v), **tol(torch.bfloat16))


@pytest.mark.parametrize("device", DEVICES)
def test_huge_logits_stay_finite(device):
    """Scores of ±1e4 overflow a naive exp; the running max keeps every exponent ≤ 0."""
    q, k, v = qkv(dtype=torch.float32, device=device)
    q = q.sign() * 100.0  # |scores| up to 1e4 · d with scale 1 / d
    k = k.sign() * 100.0
    out, lse = tiled_attention(q, k, v, scale=1.0 / D, block_q=4, block_k=8, return_lse=True)
    scores = q @ k.transpose(-2, -1) / D
    assert scores.abs().max() >= 1e4
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(out, attention(q, k, v, scale=1.0 / D)[0], **tol(torch.float32))
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1), **tol(torch.float32))


@FAST
@given(lq=st.integers(1, 40), lk=st.integers(1, 40),
       block_q=st.integers(1, 12), block_k=st.integers(1, 12))
def test_causal_schedule_skips_exactly_the_tiles_above_the_diagonal(lq, lk, block_q, block_k):
    keep = causal_mask(lq, lk)
    computed = tile_schedule(lq, lk, block_q, block_k, is_causal=True)
    assert computed.shape == (math.ceil(lq / block_q), math.ceil(lk / block_k))
    for i in range(computed.shape[0]):
        for j in range(computed.shape[1]):
            tile = keep[i * block_q:(i + 1) * block_q, j * block_k:(j + 1) * block_k]
            assert computed[i, j] == tile.any(), (i, j)
    everything = tile_schedule(lq, lk, block_q, block_k, is_causal=False)
    assert everything.shape == computed.shape and everything.all()


class LargestTensor(TorchFunctionMode):
    """Records the largest tensor any torch function returns, and every matmul's output shape."""

    def __init__(self):
        super().__init__()
        self.largest, self.matmuls = 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__):
            self.matmuls.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("is_causal", [False, True])
def test_never_more_than_one_tile_of_scores(is_causal):
    """By design: no tensor is larger than one tile of scores or an (…, L, d) input or output."""
    batch, n, d, block_q, block_k = (2,), 48, 2, 8, 6
    q, k, v = qkv(batch=batch, lq=n, lk=n, d=d, dv=d)
    with LargestTensor() as seen:
        out = tiled_attention(q, k, v, is_causal=is_causal, block_q=block_q, block_k=block_k)
    torch.testing.assert_close(out, sdpa(q, k, v, is_causal=is_causal), **tol(torch.float64))
    assert seen.largest <= max(2 * block_q * block_k, 2 * n * d) < 2 * n * n
    score_tiles = [s for s in seen.matmuls if s[-1] != d]  # Q Kᵀ tiles (P V has d columns)
    assert all(s[-2] <= block_q and s[-1] <= block_k for s in score_tiles)
    assert len(score_tiles) == tile_schedule(n, n, block_q, block_k, is_causal=is_causal).sum()
    every_tile = math.ceil(n / block_q) * math.ceil(n / block_k)
    assert len(score_tiles) < every_tile if is_causal else len(score_tiles) == every_tile


@st.composite
def score_rows(draw):
    """Scores (2, Lq, Lk) with some −inf (masked) keys and some huge logits, values, a block split."""
    lq, lk, dv = draw(st.integers(1, 4)), draw(st.integers(1, 20)), draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    size = draw(st.sampled_from([1.0, 30.0, 1e4]))
    scores = torch.randn(2, lq, lk, generator=g, dtype=torch.float64) * size
    masked = torch.rand(2, lq, lk, generator=g) < draw(st.floats(0.0, 0.7))
    scores = scores.masked_fill(masked, -math.inf)
    values = torch.randn(2, lk, dv, generator=g, dtype=torch.float64)
    cuts = sorted(draw(st.sets(st.integers(1, lk - 1), max_size=lk - 1))) if lk > 1 else []
    blocks = list(zip([0, *cuts], [*cuts, lk]))
    return scores, values, draw(st.permutations(blocks))


@FAST
@given(score_rows())
def test_online_softmax_in_any_block_order_equals_the_softmax_of_the_row(problem):
    scores, values, blocks = problem
    state = None
    for start, stop in blocks:
        state = online_softmax_step(state, scores[..., start:stop], values[..., start:stop, :])
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)  # a row of −inf: zeros
    torch.testing.assert_close(finish(state), weights @ values, **tol(torch.float64))
    torch.testing.assert_close(log_sum_exp(state), torch.logsumexp(scores, dim=-1), **tol(torch.float64))
    assert torch.isfinite(finish(state)).all()


def test_online_softmax_state_is_the_running_max_and_sum():
    scores, values = randn(3, 10, seed=4), randn(10, 2, seed=5)
    state = online_softmax_step(None, scores[:, :4], values[:4])
    m, l, acc = online_softmax_step(state, scores[:, 4:], values[4:])
    torch.testing.assert_close(m, scores.amax(-1, keepdim=True))
    torch.testing.assert_close(l, torch.exp(scores - m).sum(-1, keepdim=True))
    torch.testing.assert_close(acc, torch.exp(scores - m) @ values)


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(block_q=0), ValueError, "block_q"),
    (dict(block_k=-3), ValueError, "block_k"),
    (dict(block_q=2.5), TypeError, "block_q"),
    (dict(block_k="8"), TypeError, "block_k"),
    (dict(block_q=True), TypeError, "block_q"),
    (dict(scale=0.0), ValueError, "scale"),
    (dict(mask=torch.ones(LK, LQ, dtype=torch.bool)), ValueError, "mask"),
    (dict(mask=torch.ones(3, *BATCH, LQ, LK, dtype=torch.bool)), ValueError, "mask"),
    (dict(mask=torch.ones(LQ, LK, dtype=torch.int64)), TypeError, "mask"),
    (dict(mask=torch.ones(LQ, LK, dtype=torch.bool), is_causal=True), ValueError, "is_causal"),
])
def test_bad_arguments_are_named(kwargs, error, name):
    q, k, v = qkv()
    with pytest.raises(error, match=name):
        tiled_attention(q, k, v, **kwargs)


def test_bad_tensors_are_named():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="key"):
        tiled_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="value"):
        tiled_attention(q, k, v[..., :-1, :])
    with pytest.raises(TypeError, match="query"):
        tiled_attention(q.numpy(), k, v)
    with pytest.raises(ValueError, match="value_block"):
        online_softmax_step(None, q @ k.transpose(-2, -1), v[..., :4, :])
    state = online_softmax_step(None, torch.zeros(2, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="state acc"):
        online_softmax_step(state, torch.zeros(2, 5), torch.zeros(5, 1))
    with pytest.raises(ValueError, match="state m"):
        online_softmax_step(state, torch.zeros(4, 5), torch.zeros(5, 4))
    with pytest.raises(TypeError, match="state"):
        finish(None)
    with pytest.raises(ValueError, match="lq"):
        tile_schedule(0, 4, 2, 2, is_causal=True)
    with pytest.raises(TypeError, match="block_k"):
        tile_schedule(4, 4, 2, 2.0, is_causal=False)


def test_module_reads_like_the_book():
    """The public names the book imports exist and each says where it is explained."""
    for name in ("online_softmax_step", "finish", "log_sum_exp", "tiled_attention", "tile_schedule"):
        assert "§5.3" in getattr(flash, name).__doc__
