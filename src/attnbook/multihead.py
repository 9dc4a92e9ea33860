"""Multi-head attention: h attentions in learned subspaces, concatenated and mixed (§2.4, §3)."""
import torch
from torch import nn

from . import _checks
from .attention import attention


def split_heads(x, heads):
    """(..., L, h·d) -> (..., h, L, d): view the width as h heads of d features each. §2.4."""
    _checks.tensor(x, "x", min_dim=2)
    _checks.positive(heads, "heads", integer=True)
    if x.shape[-1] % heads:
        raise ValueError(f"heads={heads} does not divide the width {x.shape[-1]} of x {tuple(x.shape)}")
    return x.unflatten(-1, (heads, x.shape[-1] // heads)).transpose(-3, -2)


def merge_heads(x):
    """(..., h, L, d) -> (..., L, h·d): concatenate the heads again. §2.4."""
    _checks.tensor(x, "x", min_dim=3)
    return x.transpose(-3, -2).flatten(-2)


def heads_mask(mask, batch, heads, lq, lk, *, name="mask", dtype=None):
    """Check a mask (Lq, Lk), (B, Lq, Lk), (B, 1, Lk) or (B, h, Lq, Lk); return it broadcastable
    to the multi-head scores (B, h, Lq, Lk). ``name`` is the argument named in errors. §2.4."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    targets = {2: (lq, lk), 3: (batch, lq, lk), 4: (batch, heads, lq, lk)}
    if mask.dim() not in targets:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)}; multi-head attention takes (Lq, Lk) = ({lq}, {lk}), "
            f"(B, Lq, Lk) = ({batch}, {lq}, {lk}) or (B, h, Lq, Lk) = ({batch}, {heads}, {lq}, {lk})"
        )
    _checks.mask_for(mask, targets[mask.dim()], name=name, dtype=dtype)
    return mask.unsqueeze(-3) if mask.dim() == 3 else mask


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, …, head_h) Wᴼ, head_i = Attention(Q W_iQ, K W_iK, V W_iV).

    Batch-first: query (B, Lq, E), key (B, Lk, E_k), value (B, Lk, E_v) -> output (B, Lq, E)
    and weights (B, h, Lq, Lk). Each head works in E/h dimensions, so h heads cost about
    as much as one: O(B·Lq·Lk·E) time and O(B·h·Lq·Lk) memory for the weights.
    Same parameters as ``torch.nn.MultiheadAttention``; :meth:`from_torch` copies them.
    Explained in §2.4.
    """

    def __init__(self, embed_dim, num_heads, *, kdim=None, vdim=None, bias=True):
        super().__init__()
        _checks.positive(embed_dim, "embed_dim", integer=True)
        _checks.positive(num_heads, "num_heads", integer=True)
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide embed_dim={embed_dim}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_torch(cls, mha):
        """A copy of a ``torch.nn.MultiheadAttention`` (without bias_k/v) with the same weights."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported")
        bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, bias=bias)
        p = new.to(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.chunk(3) if bias else (None,) * 3
            for proj, w, b in zip((p.q_proj, p.k_proj, p.v_proj), weights, biases):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            p.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                p.out_proj.bias.copy_(mha.out_proj.bias)
        return p

    def forward(self, query, key, value, mask=None, *, is_causal=False, temperature=1.0):
        """Outputs (B, Lq, E) and per-head weights (B, h, Lq, Lk); mask True = may attend."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            _checks.tensor(t, name, min_dim=3)
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise ValueError(
                "query, key and value must be batch-first 3-D tensors (B, L, E), got "
                f"{tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}"
            )
        if query.shape[-1] != self.embed_dim:
            raise ValueError(f"query has width {query.shape[-1]} but embed_dim is {self.embed_dim}")
        for name, t, proj in (("key", key, self.k_proj), ("value", value, self.v_proj)):
            if t.shape[-1] != proj.in_features:
                raise ValueError(f"{name} has width {t.shape[-1]} but this layer expects {proj.in_features}")
        h = self.num_heads
        q = split_heads(self.q_proj(query), h)
        k = split_heads(self.k_proj(key), h)
        v = split_heads(self.v_proj(value), h)
        mask = heads_mask(mask, query.shape[0], h, query.shape[1], key.shape[1], dtype=query.dtype)
        out, weights = attention(q, k, v, mask, is_causal=is_causal, temperature=temperature)
        return self.out_proj(merge_heads(out)), weights
