"""Exact (soft, global) attention: scores, softmax, weighted sum (§2.1 to §2.4)."""
import math

from . import _checks
from .masks import causal_mask
from .softmax import masked_softmax


def check_qkv(query, key, value):
    """Raise a clear error unless query (..., Lq, d), key (..., Lk, d), value (..., Lk, d_v) fit."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        _checks.tensor(t, name, min_dim=2)
    _checks.same_kind({"query": query, "key": key, "value": value})
    if not query.shape[:-2] == key.shape[:-2] == value.shape[:-2]:
        raise ValueError(
            "query, key and value must share their batch dimensions, got "
            f"{tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}"
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query has width d={query.shape[-1]} but key has d={key.shape[-1]}: "
            f"shapes {tuple(query.shape)} and {tuple(key.shape)}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key has Lk={key.shape[-2]} positions but value has {value.shape[-2]}: "
            f"shapes {tuple(key.shape)} and {tuple(value.shape)}"
        )


def attention(query, key, value, mask=None, *, scale=None, temperature=1.0, is_causal=False):
    """Attention(Q, K, V) = softmax((Q Kᵀ · scale + B) / T) V, with scale = 1/√d by default.

    query (..., Lq, d), key (..., Lk, d), value (..., Lk, d_v) -> output (..., Lq, d_v)
    and weights (..., Lq, Lk). ``mask`` broadcasts to (..., Lq, Lk): boolean, True = may
    attend (PyTorch's convention), or floating, added to the scores as the bias B.
    ``is_causal`` applies the top-left causal mask j ≤ i. A query with no allowed key
    gets zero weights and a zero output. With temperature 1 this equals
    ``torch.nn.functional.scaled_dot_product_attention``.
    Cost O(Lq·Lk·(d + d_v)) time and O(Lq·Lk) memory. Explained in §2.1 to §2.4.
    """
    check_qkv(query, key, value)
    d = query.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else _checks.positive(scale, "scale")
    _checks.positive(temperature, "temperature")
    scores = (query @ key.transpose(-2, -1)) * scale
    if is_causal:
        if mask is not None:
            raise ValueError("pass either mask or is_causal=True, not both")
        mask = causal_mask(query.shape[-2], key.shape[-2], device=query.device)
    weights = masked_softmax(scores, mask, temperature=temperature)
    return weights @ value, weights
