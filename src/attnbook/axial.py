"""Axial attention: attend along the rows of an image, then along its columns (§3.4).

Full self-attention over an H×W image compares all (HW)² pairs of pixels. Axial attention
(Ho et al., 2019) factorises it into two passes over one axis each: every pixel first
attends to the W pixels of its row, then to the H pixels of its column. After both passes
each output pixel depends on every input pixel, at a cost of O(H·W·(H + W)·C).
"""
import torch
from torch import nn

from . import _checks
from .attention import attention
from .multihead import merge_heads, split_heads


def _check_image(x):
    _checks.tensor(x, "x", min_dim=3)


def _queries_keys_values(x, proj):
    """(q, k, v) of the pass: x itself three times, or proj(x) (..., 3·C') cut in three."""
    if proj is None:
        return x, x, x
    if not callable(proj):
        raise TypeError(f"proj must be callable (e.g. nn.Linear(C, 3·C)) or None, got {type(proj).__name__}")
    packed = proj(x)
    if (not isinstance(packed, torch.Tensor) or packed.shape[:-1] != x.shape[:-1]
            or packed.shape[-1] % 3):
        got = tuple(packed.shape) if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"proj must map x {tuple(x.shape)} to (..., 3·C') packed q, k, v; got {got}")
    return packed.chunk(3, dim=-1)


def row_attention(x, *, heads=1, scale=None, proj=None):
    """y[r, c] = Σ_c' softmax_c'(q[r, c]·k[r, c']·scale) v[r, c']: each row is a sequence of W tokens.

    x (..., H, W, C) -> output (..., H, W, C') and weights (..., H, heads, W, W).
    ``proj`` maps (..., C) to packed (q, k, v) of width 3·C' (None: q = k = v = x);
    ``heads`` splits C' into heads of C'/heads features; scale = 1/√(C'/heads) by default.
    Cost O(H·W²·C') time and O(H·W²) memory. Explained in §3.4.
    """
    _check_image(x)
    _checks.positive(heads, "heads", integer=True)
    q, k, v = (split_heads(t, heads) for t in _queries_keys_values(x, proj))   # (..., H, h, W, C'/h)
    out, weights = attention(q, k, v, scale=scale)
    return merge_heads(out), weights


def column_attention(x, *, heads=1, scale=None, proj=None):
    """y[r, c] = Σ_r' softmax_r'(q[r, c]·k[r', c]·scale) v[r', c]: each column is a sequence of H tokens.

    x (..., H, W, C) -> output (..., H, W, C') and weights (..., W, heads, H, H).
    Arguments as in :func:`row_attention`. Cost O(W·H²·C') time and O(W·H²) memory. §3.4.
    """
    _check_image(x)
    out, weights = row_attention(x.transpose(-3, -2), heads=heads, scale=scale, proj=proj)
    return out.transpose(-3, -2), weights


def axial_attention(x, *, heads=1, scale=None, proj=None):
    """Axial(x) = ColumnAttention(RowAttention(x)) (Ho et al., 2019).

    x (..., H, W, C) -> output (..., H, W, C') and weights (row (..., H, heads, W, W),
    column (..., W, heads, H, H)). ``proj`` is None (q = k = v at each pass) or a pair
    (row_proj, column_proj) of callables mapping (..., C) to packed q, k, v of width 3·C'.
    After both passes every output pixel depends on every input pixel.
    Cost O(H·W·(H + W)·C) time and O(H·W·(H + W)) memory instead of O((HW)²·C) and O((HW)²)
    for full attention over the HW pixels. Explained in §3.4.
    """
    _check_image(x)
    if proj is None:
        row_proj = column_proj = None
    elif isinstance(proj, (tuple, list)) and len(proj) == 2:
        row_proj, column_proj = proj
    else:
        raise TypeError(f"proj must be None or a pair (row_proj, column_proj), got {type(proj).__name__}")
    rows, row_weights = row_attention(x, heads=heads, scale=scale, proj=row_proj)
    out, column_weights = column_attention(rows, heads=heads, scale=scale, proj=column_proj)
    return out, (row_weights, column_weights)


class AxialAttention(nn.Module):
    """Axial self-attention with learned projections: a row pass, then a column pass.

    Each pass has its own q, k, v projection, nn.Linear(C, 3·C), split into ``heads`` heads.
    x (..., H, W, C) -> output (..., H, W, C) and weights (row (..., H, heads, W, W),
    column (..., W, heads, H, H)). Cost O(H·W·(H + W)·C + H·W·C²). Explained in §3.4.
    """

    def __init__(self, channels, heads=1, *, bias=True):
        super().__init__()
        _checks.positive(channels, "channels", integer=True)
        _checks.positive(heads, "heads", integer=True)
        if channels % heads:
            raise ValueError(f"heads={heads} does not divide channels={channels}")
        self.channels, self.heads = channels, heads
        self.row_qkv = nn.Linear(channels, 3 * channels, bias=bias)
        self.column_qkv = nn.Linear(channels, 3 * channels, bias=bias)

    def forward(self, x):
        """Output (..., H, W, C) and the (row, column) weights of the two passes."""
        _check_image(x)
        if x.shape[-1] != self.channels:
            raise ValueError(f"x has {x.shape[-1]} channels (shape {tuple(x.shape)}) but this layer "
                             f"expects {self.channels}")
        return axial_attention(x, heads=self.heads, proj=(self.row_qkv, self.column_qkv))
