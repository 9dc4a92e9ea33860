"""Boolean attention masks, PyTorch's convention: True means "may attend" (§2.3).

Every function returns a bool tensor whose last two dimensions are (Lq, Lk).
"""
import numbers

import torch

from . import _checks

KINDS = ("none", "causal", "padding", "sliding window")


def _lengths(lq, lk):
    _checks.positive(lq, "lq", integer=True)
    lk = lq if lk is None else lk
    _checks.positive(lk, "lk", integer=True)
    return lq, lk


def causal_mask(lq, lk=None, *, offset=0, device=None):
    """m_ij = (j ≤ i + offset): query i sees keys 0..i+offset.

    offset 0 aligns top-left, as PyTorch's SDPA does; offset Lk - Lq aligns bottom-right,
    as decoding with a KV cache needs (the Lq new queries are the last Lq positions).
    Returns (Lq, Lk) bool. Cost O(Lq·Lk) memory. Explained in §2.3 and §5.3.
    """
    lq, lk = _lengths(lq, lk)
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise TypeError(f"offset must be an integer, got {type(offset).__name__}")
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(int(offset))


def padding_mask(lengths, lk, *, device=None):
    """m_bj = (j < length_b): ignore the padding keys at the end of each sequence.

    lengths: B ints (a list or a 1-D integer tensor), each in 1..lk.
    Returns (B, 1, Lk) bool, which broadcasts over the queries of scores (B, Lq, Lk);
    for multi-head scores (B, h, Lq, Lk) use ``mask.unsqueeze(1)``. Explained in §2.3.
    """
    _checks.positive(lk, "lk", integer=True)
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be a 1-D list of integers, got {lengths.tolist()}")
    if len(lengths) and (lengths.min() < 1 or lengths.max() > lk):
        raise ValueError(f"lengths must lie in 1..lk={lk}, got {lengths.tolist()}")
    positions = torch.arange(lk, device=device)
    return (positions < lengths[:, None]).unsqueeze(1)


def sliding_window_mask(lq, lk=None, *, window, causal=False, device=None):
    """m_ij = (|i - j| ≤ window), or (0 ≤ i - j ≤ window) when ``causal``.

    Each query sees at most 2·window + 1 keys (window + 1 when causal), so attention
    costs O(L·window) instead of O(L²) when computed sparsely (Longformer).
    Returns (Lq, Lk) bool. Explained in §2.3.
    """
    lq, lk = _lengths(lq, lk)
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise TypeError(f"window must be an integer ≥ 0, got {type(window).__name__} {window!r}")
    if window < 0:
        raise ValueError(f"window must be an integer ≥ 0, got {window!r}")
    offset = torch.arange(lq, device=device)[:, None] - torch.arange(lk, device=device)
    if causal:
        return (offset >= 0) & (offset <= window)
    return offset.abs() <= window


def make_mask(kind, lq, lk=None, *, window=1, lengths=None):
    """One of :data:`KINDS` as an (..., Lq, Lk) bool mask, or None for "none".

    "padding" uses ``lengths`` (default: the last third of the keys are padding) and
    returns (B, 1, Lk). The widgets use this to switch masks by name. §2.3.
    """
    lq, lk = _lengths(lq, lk)
    if kind == "none":
        return None
    if kind == "causal":
        return causal_mask(lq, lk)
    if kind == "padding":
        return padding_mask([max(1, lk - lk // 3)] if lengths is None else lengths, lk)
    if kind == "sliding window":
        return sliding_window_mask(lq, lk, window=window)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
