"""Step 1 of attention: similarity scores between every query and every key (§2.2).

Each function maps query (..., Lq, d_q) and key (..., Lk, d_k) to scores (..., Lq, Lk).
"""
import math

import torch

from . import _checks


def _pair(query, key, *, same_width=True):
    _checks.tensor(query, "query", min_dim=2)
    _checks.tensor(key, "key", min_dim=2)
    _checks.same_kind({"query": query, "key": key})
    if query.shape[:-2] != key.shape[:-2]:
        raise ValueError(
            f"query has batch shape {tuple(query.shape[:-2])} but key has "
            f"{tuple(key.shape[:-2])}; they must be equal"
        )
    if same_width and query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query has width d={query.shape[-1]} but key has d={key.shape[-1]}; "
            "a dot product needs equal widths"
        )


def dot_scores(query, key):
    """Dot-product scores s_ij = q_i · k_j.

    query (..., Lq, d), key (..., Lk, d) -> (..., Lq, Lk).
    Cost O(Lq·Lk·d) time, O(Lq·Lk) memory. Explained in §2.2.
    """
    _pair(query, key)
    return query @ key.transpose(-2, -1)


def scaled_dot_scores(query, key, scale=None):
    """Scaled dot-product scores s_ij = q_i · k_j / √d (or times ``scale`` when given).

    Dividing by √d keeps the variance of the scores near 1 whatever the width d.
    query (..., Lq, d), key (..., Lk, d) -> (..., Lq, Lk).
    Cost O(Lq·Lk·d) time, O(Lq·Lk) memory. Explained in §2.2.
    """
    _pair(query, key)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    else:
        _checks.positive(scale, "scale")
    return (query @ key.transpose(-2, -1)) * scale


def cosine_scores(query, key, eps=1e-8):
    """Cosine scores s_ij = q_i · k_j / (‖q_i‖ ‖k_j‖), each in [-1, 1].

    query (..., Lq, d), key (..., Lk, d) -> (..., Lq, Lk); norms below ``eps`` count as eps.
    Cost O(Lq·Lk·d) time, O(Lq·Lk) memory. Explained in §2.2.
    """
    _pair(query, key)
    _checks.positive(eps, "eps")
    q = query / query.norm(dim=-1, keepdim=True).clamp_min(eps)
    k = key / key.norm(dim=-1, keepdim=True).clamp_min(eps)
    return q @ k.transpose(-2, -1)


def general_scores(query, key, weight):
    """Bilinear ("general", Luong et al.) scores s_ij = q_iᵀ W k_j.

    query (..., Lq, d_q), key (..., Lk, d_k), weight (d_q, d_k) -> (..., Lq, Lk).
    Cost O(Lk·d_q·d_k + Lq·Lk·d_q) time, O(Lq·Lk) memory. Explained in §2.2.
    """
    _pair(query, key, same_width=False)
    _checks.tensor(weight, "weight", min_dim=2)
    _checks.same_kind({"query": query, "weight": weight})
    if tuple(weight.shape) != (query.shape[-1], key.shape[-1]):
        raise ValueError(
            f"weight has shape {tuple(weight.shape)} but must be (d_q, d_k) = "
            f"({query.shape[-1]}, {key.shape[-1]})"
        )
    return query @ (key @ weight.transpose(0, 1)).transpose(-2, -1)


def additive_scores(query, key, w_query, w_key, v):
    """Additive (Bahdanau et al.) scores s_ij = vᵀ tanh(W q_i + U k_j).

    query (..., Lq, d_q), key (..., Lk, d_k), w_query W (h, d_q), w_key U (h, d_k),
    v (h,) -> (..., Lq, Lk). A one-hidden-layer MLP scores each pair.
    Cost O((Lq·d_q + Lk·d_k)·h + Lq·Lk·h) time and O(Lq·Lk·h) memory. Explained in §2.2.
    """
    _pair(query, key, same_width=False)
    for name, t, dim in (("w_query", w_query, 2), ("w_key", w_key, 2), ("v", v, 1)):
        _checks.tensor(t, name, min_dim=dim)
    _checks.same_kind({"query": query, "w_query": w_query, "w_key": w_key, "v": v})
    h = v.shape[0]
    want = {"w_query": (h, query.shape[-1]), "w_key": (h, key.shape[-1]), "v": (h,)}
    for name, t in (("w_query", w_query), ("w_key", w_key), ("v", v)):
        if tuple(t.shape) != want[name]:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but must be {want[name]}")
    hidden = (query @ w_query.T).unsqueeze(-2) + (key @ w_key.T).unsqueeze(-3)
    return torch.tanh(hidden) @ v


class AdditiveScore(torch.nn.Module):
    """Learnable additive scoring vᵀ tanh(W q + U k) (Bahdanau et al., 2015). See §2.2."""

    def __init__(self, query_dim, key_dim, hidden_dim):
        super().__init__()
        self.w_query = torch.nn.Linear(query_dim, hidden_dim, bias=False)
        self.w_key = torch.nn.Linear(key_dim, hidden_dim, bias=False)
        self.v = torch.nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, query, key):
        """Scores (..., Lq, Lk) for query (..., Lq, d_q) and key (..., Lk, d_k)."""
        return additive_scores(
            query, key, self.w_query.weight, self.w_key.weight, self.v.weight[0]
        )


SCORES = {
    "dot": dot_scores,
    "scaled dot": scaled_dot_scores,
    "cosine": cosine_scores,
}
