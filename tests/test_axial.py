"""Axial attention (§3.4) against per-row / per-column loops and masked full attention."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from support import DEVICES, DTYPES, randn, tol

from attnbook import attention
from attnbook.axial import AxialAttention, axial_attention, column_attention, row_attention

FAST = settings(max_examples=15, deadline=None)
sdpa = F.scaled_dot_product_attention


def heads_sdpa(seq, heads, scale=None, proj=None):
    """Multi-head self-attention of one sequence (..., L, C) with torch's SDPA."""
    q, k, v = (seq, seq, seq) if proj is None else proj(seq).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(-3, -2) for t in (q, k, v))
    return sdpa(q, k, v, scale=scale).transpose(-3, -2).flatten(-2)


def brute_axial(x, heads=1, scale=None, proj=(None, None)):
    """Attend within each row by a loop, then within each column of the result by a loop."""
    H, W = x.shape[-3], x.shape[-2]
    rows = torch.stack([heads_sdpa(x[..., r, :, :], heads, scale, proj[0]) for r in range(H)], dim=-3)
    return torch.stack([heads_sdpa(rows[..., :, c, :], heads, scale, proj[1]) for c in range(W)], dim=-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, H, W, C, heads",
                         [((), 3, 5, 4, 1), ((2,), 4, 3, 6, 2), ((2, 3), 2, 7, 8, 4)])
def test_axial_attention_equals_a_loop_over_rows_then_columns(device, dtype, batch, H, W, C, heads):
    x = randn(*batch, H, W, C, dtype=dtype, device=device)
    out, (row_w, col_w) = axial_attention(x, heads=heads)
    assert out.shape == x.shape
    assert row_w.shape == (*batch, H, heads, W, W) and col_w.shape == (*batch, W, heads, H, H)
    torch.testing.assert_close(out, brute_axial(x, heads), **tol(dtype))
    torch.testing.assert_close(row_w.sum(-1), torch.ones_like(row_w[..., 0]), **tol(dtype))


def same_row_and_same_column(H, W):
    r, c = torch.arange(H * W) // W, torch.arange(H * W) % W
    return r[:, None] == r[None, :], c[:, None] == c[None, :]


@FAST
@given(st.integers(1, 4), st.integers(1, 5), st.sampled_from([1, 2]), st.floats(0.2, 2.0))
def test_axial_attention_is_full_attention_with_a_row_mask_then_a_column_mask(H, W, heads, scale):
    """On the H·W pixels as one sequence, the row pass is full attention masked to the row
    and the column pass full attention masked to the column."""
    x = randn(2, H, W, 4)
    same_row, same_column = same_row_and_same_column(H, W)
    tokens = x.flatten(-3, -2).unflatten(-1, (heads, -1)).transpose(-3, -2)   # (2, heads, HW, C/heads)
    rows, row_weights = attention(tokens, tokens, tokens, same_row, scale=scale)
    both, column_weights = attention(rows, rows, rows, same_column, scale=scale)
    want = both.transpose(-3, -2).flatten(-2).unflatten(-2, (H, W))
    got, (row_w, col_w) = axial_attention(x, heads=heads, scale=scale)
    torch.testing.assert_close(got, want)
    r, c = torch.arange(H), torch.arange(W)  # the (W, W) block of row r, the (H, H) block of column c
    full_rows = row_weights.unflatten(-2, (H, W)).unflatten(-1, (H, W))[:, :, r, :, r, :]  # (H, 2, ...)
    torch.testing.assert_close(row_w, full_rows.transpose(0, 1))
    full_columns = column_weights.unflatten(-2, (H, W)).unflatten(-1, (H, W))[:, :, :, c, :, c]
    torch.testing.assert_close(col_w, full_columns.transpose(0, 1))


def test_row_and_column_passes_are_attention_on_reshaped_tensors():
    x = randn(2, 3, 5, 4)
    row_out, row_w = row_attention(x)
    want, want_w = attention(x, x, x)                   # rows are the sequences: (2, 3 rows, 5, 4)
    torch.testing.assert_close(row_out, want)
    torch.testing.assert_close(row_w.squeeze(-3), want_w)
    col_out, col_w = column_attention(x)
    columns = x.transpose(-3, -2)                       # (2, 5 columns, 3, 4)
    want, want_w = attention(columns, columns, columns)
    torch.testing.assert_close(col_out, want.transpose(-3, -2))
    torch.testing.assert_close(col_w.squeeze(-3), want_w)


def test_one_pass_sees_one_line_and_two_passes_see_the_whole_image():
    """d out[r, c] / d x[r', c'] ≠ 0 for every input pixel after both passes (H ≠ W)."""
    H, W, r, c = 4, 6, 1, 2
    x = randn(H, W, 3, grad=True)
    grad, = torch.autograd.grad(axial_attention(x)[0][r, c].sum(), x)
    assert (grad.abs().sum(-1) > 0).all()
    grad_row, = torch.autograd.grad(row_attention(x)[0][r, c].sum(), x)
    seen = grad_row.abs().sum(-1) > 0
    assert seen[r].all() and not seen[torch.arange(H) != r].any()
    grad_col, = torch.autograd.grad(column_attention(x)[0][r, c].sum(), x)
    seen = grad_col.abs().sum(-1) > 0
    assert seen[:, c].all() and not seen[:, torch.arange(W) != c].any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_axial_module_equals_the_loop_with_its_projections(device, dtype):
    torch.manual_seed(0)
    layer = AxialAttention(6, heads=3).to(device=device, dtype=dtype)
    x = randn(2, 3, 5, 6, dtype=dtype, device=device)
    out, (row_w, col_w) = layer(x)
    want = brute_axial(x, 3, proj=(layer.row_qkv, layer.column_qkv))
    torch.testing.assert_close(out, want, **tol(dtype))
    assert row_w.shape == (2, 3, 3, 5, 5) and col_w.shape == (2, 5, 3, 3, 3)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_axial_attention_costs_h_plus_w_not_h_times_w_per_pixel():
    H, W = 6, 10
    _, (row_w, col_w) = axial_attention(randn(H, W, 2))
    assert row_w.numel() + col_w.numel() == H * W * (H + W)   # compared pairs: HW·(H+W) vs (HW)²
    assert row_w.numel() + col_w.numel() < (H * W) ** 2 / 3


def test_huge_values_stay_finite():
    out, _ = axial_attention(randn(3, 4, 2) * 1e4)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("call, exc, match", [
    (lambda: axial_attention(randn(4, 3)), ValueError, "x"),
    (lambda: axial_attention([[1.0]]), TypeError, "x"),
    (lambda: axial_attention(torch.ones(2, 2, 2, dtype=torch.long)), TypeError, "x"),
    (lambda: axial_attention(randn(2, 3, 4), heads=3), ValueError, "heads"),
    (lambda: axial_attention(randn(2, 3, 4), heads=0), ValueError, "heads"),
    (lambda: axial_attention(randn(2, 3, 4), scale=-1.0), ValueError, "scale"),
    (lambda: axial_attention(randn(2, 3, 4), scale=math.nan), ValueError, "scale"),
    (lambda: axial_attention(randn(2, 3, 4), proj=torch.nn.Linear(4, 12)), TypeError, "proj"),
    (lambda: axial_attention(randn(2, 3, 4), proj=(lambda t: t.repeat(1, 1, 2), None)), ValueError, "proj"),
    (lambda: axial_attention(randn(2, 3, 4), proj=(3, None)), TypeError, "proj"),
    (lambda: row_attention(randn(2, 3, 4), proj=lambda t: t[..., :1, :]), ValueError, "proj"),
    (lambda: AxialAttention(6, 4), ValueError, "heads"),
    (lambda: AxialAttention(0), ValueError, "channels"),
    (lambda: AxialAttention(4)(randn(2, 3, 5)), ValueError, "channels"),
])
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
