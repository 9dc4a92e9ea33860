"""Positional information for attention, which by itself ignores order (§5.1, §3.2).

Attention without positions is permutation-equivariant: shuffle the tokens and the outputs
shuffle the same way. Each kernel here breaks that symmetry in one published way:

- absolute positions added to the tokens: sinusoids (Vaswani et al., 2017) or a learned
  table (BERT, Devlin et al., 2019);
- relative positions inside the scores: learned vectors per clipped offset (Shaw et al., 2018),
  a learned scalar per log-spaced bucket (T5, Raffel et al., 2020), a rotation of queries and
  keys (RoPE, Su et al., 2021) or a fixed linear penalty (ALiBi, Press et al., 2022).

Query i sits at position i and key j at position j (aligned top-left, like ``causal_mask``);
the offset of key j from query i is j − i.

References (book/references.bib): vaswani2017attention, devlin2019bert, shaw2018self,
raffel2020exploring, su2021roformer, press2022train.
"""
import math

import torch
from torch import nn

from . import _checks
from .attention import attention, check_qkv
from .softmax import masked_softmax


def _float_dtype(dtype):
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _scale(scale, d):
    return 1.0 / math.sqrt(d) if scale is None else _checks.positive(scale, "scale")


def relative_positions(lq, lk=None, *, device=None):
    """Offsets r_ij = j − i of key j from query i, as integers.

    Returns (Lq, Lk) int64 (Lk = Lq by default). Cost O(Lq·Lk). Explained in §5.1.
    """
    _checks.positive(lq, "lq", integer=True)
    lk = lq if lk is None else _checks.positive(lk, "lk", integer=True)
    return torch.arange(lk, device=device) - torch.arange(lq, device=device)[:, None]


# ---------------------------------------------------------------- absolute positions

def sinusoidal_encoding(length, dim, *, base=10000.0, dtype=torch.float32, device=None):
    """PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d)) (Vaswani et al.).

    Returns (length, dim); add it to the token embeddings (..., length, dim). Each pair of
    columns turns at its own frequency, from 1 down to 1/base radians per position, so
    PE[p + k] is a rotation of PE[p] that depends only on k. An odd ``dim`` is allowed:
    the last column is the sine of the next frequency, i = (d − 1)/2.
    Computed in float64, returned in ``dtype``. Cost O(length·dim). Explained in §5.1.
    """
    _checks.positive(length, "length", integer=True)
    _checks.positive(dim, "dim", integer=True)
    _checks.positive(base, "base")
    dtype = _float_dtype(dtype)
    position = torch.arange(length, dtype=torch.float64, device=device)[:, None]
    two_i = torch.arange(0, dim, 2, dtype=torch.float64, device=device)
    angle = position / base ** (two_i / dim)                        # (length, ⌈dim/2⌉)
    pe = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)  # sin, cos, sin, cos, …
    return pe[:, :dim].to(dtype)


class LearnedPositionalEmbedding(nn.Module):
    """x_p + P[p] with a learned table P of max_length × dim vectors (BERT, GPT).

    forward(x (..., L, dim), positions=None) -> (..., L, dim); ``positions`` are integers in
    0..max_length−1 broadcasting to (..., L), by default 0..L−1. A longer sequence than
    max_length is an error: a learned table cannot extrapolate. Initialised N(0, 0.02²) as
    in BERT. Cost O(L·dim) time, O(max_length·dim) parameters. Explained in §5.1.
    """

    def __init__(self, max_length, dim):
        super().__init__()
        self.max_length = _checks.positive(max_length, "max_length", integer=True)
        self.dim = _checks.positive(dim, "dim", integer=True)
        self.embedding = nn.Embedding(max_length, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, x, positions=None):
        _checks.tensor(x, "x", min_dim=2)
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has width {x.shape[-1]} but the embedding has dim={self.dim}: "
                             f"x has shape {tuple(x.shape)}")
        length = x.shape[-2]
        if positions is None:
            if length > self.max_length:
                raise ValueError(f"x has length {length} > max_length={self.max_length}; "
                                 "a learned table has no vector for the later positions")
            positions = torch.arange(length, device=x.device)
        else:
            _check_positions(positions, x, "positions", "x", integer=True)
            if len(positions.flatten()) and (positions.min() < 0 or positions.max() >= self.max_length):
                raise ValueError(f"positions must lie in 0..max_length−1 = 0..{self.max_length - 1}, "
                                 f"got values from {positions.min().item()} to {positions.max().item()}")
        return x + self.embedding(positions).to(x.dtype)


# ---------------------------------------------------------------- Shaw et al. (2018)

class RelativePositionEmbedding(nn.Module):
    """a^K_ij = w^K_clip(j−i, k), a^V_ij = w^V_clip(j−i, k), clip(x, k) = max(−k, min(k, x)).

    Two learned tables of 2k + 1 vectors, one per offset from −k to k (k = max_distance);
    farther keys share the vector of offset ±k (Shaw et al., 2018).
    forward(lq, lk=None) -> (rel_k (Lq, Lk, dim), rel_v (Lq, Lk, value_dim)) for
    :func:`relative_attention`. Cost O(Lq·Lk·dim) memory, O(k·dim) parameters. §5.1.
    """

    def __init__(self, max_distance, dim, *, value_dim=None):
        super().__init__()
        self.max_distance = _checks.positive(max_distance, "max_distance", integer=True)
        _checks.positive(dim, "dim", integer=True)
        value_dim = dim if value_dim is None else _checks.positive(value_dim, "value_dim", integer=True)
        self.key_table = nn.Embedding(2 * max_distance + 1, dim)
        self.value_table = nn.Embedding(2 * max_distance + 1, value_dim)

    def forward(self, lq, lk=None):
        k = self.max_distance
        offset = relative_positions(lq, lk, device=self.key_table.weight.device)
        index = offset.clamp(-k, k) + k                               # offset −k..k -> row 0..2k
        return self.key_table(index), self.value_table(index)


def _check_table(table, name, shape, like):
    _checks.tensor(table, name, min_dim=1)
    _checks.same_kind({"query": like, name: table})
    if tuple(table.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(table.shape)} but must be "
                         f"(Lq, Lk, width) = {tuple(shape)}")


def relative_attention(query, key, value, rel_k, rel_v=None, mask=None, *, scale=None):
    """e_ij = q_i·(k_j + a^K_ij)·scale, a_ij = softmax_j(e_ij), o_i = Σ_j a_ij (v_j + a^V_ij).

    Shaw et al. (2018). query (..., Lq, d), key (..., Lk, d), value (..., Lk, dv),
    rel_k (Lq, Lk, d), rel_v (Lq, Lk, dv) or None (no value term) -> output (..., Lq, dv)
    and weights (..., Lq, Lk). ``mask`` as in :func:`attnbook.attention` (boolean, True =
    may attend, or float bias); a query with no allowed key gets zero weights and output.
    scale = 1/√d by default. Cost O(Lq·Lk·(d + dv)) time and memory. Explained in §5.1.
    """
    check_qkv(query, key, value)
    lq, lk, d, dv = query.shape[-2], key.shape[-2], query.shape[-1], value.shape[-1]
    _check_table(rel_k, "rel_k", (lq, lk, d), query)
    if rel_v is not None:
        _check_table(rel_v, "rel_v", (lq, lk, dv), query)
    scale = _scale(scale, d)
    scores = (query @ key.transpose(-2, -1) + torch.einsum("...id,ijd->...ij", query, rel_k)) * scale
    weights = masked_softmax(scores, mask)
    output = weights @ value
    if rel_v is not None:
        output = output + torch.einsum("...ij,ijd->...id", weights, rel_v)
    return output, weights


# ---------------------------------------------------------------- T5 (Raffel et al., 2020)

def _check_buckets(bidirectional, num_buckets, max_distance):
    if not isinstance(bidirectional, bool):
        raise TypeError(f"bidirectional must be a bool, got {bidirectional!r}")
    _checks.positive(num_buckets, "num_buckets", integer=True)
    _checks.positive(max_distance, "max_distance", integer=True)
    max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    if max_exact < 1:
        raise ValueError(f"num_buckets must be ≥ {4 if bidirectional else 2} "
                         f"(bidirectional={bidirectional}), got {num_buckets}")
    if max_distance <= max_exact:
        raise ValueError(f"max_distance must exceed the {max_exact} exact buckets, got {max_distance}")


def t5_relative_bucket(relative_position, *, bidirectional=True, num_buckets=32, max_distance=128):
    """T5's bucket of each offset r = j − i: exact for small |r|, log-spaced up to max_distance.

    As T5's reference code: when ``bidirectional``, half of the buckets are for r > 0 (keys
    after the query) and n = |r|, else n = max(−r, 0) (later keys all share bucket 0). Of the
    B buckets left, n < B/2 gets bucket n; larger n gets B/2 + ⌊log(n / (B/2)) /
    log(max_distance / (B/2)) · B/2⌋, capped at B − 1 (the log in float32, as in T5).
    relative_position: integer tensor of any shape -> int64 buckets of the same shape. §5.1.
    """
    _checks.tensor(relative_position, "relative_position", min_dim=0, floating=False)
    if relative_position.is_floating_point() or relative_position.is_complex() \
            or relative_position.dtype == torch.bool:
        raise TypeError(f"relative_position must be an integer tensor, got dtype {relative_position.dtype}")
    _check_buckets(bidirectional, num_buckets, max_distance)
    n = relative_position.long()
    bucket = torch.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (n > 0).long() * num_buckets
        n = n.abs()
    else:
        n = (-n).clamp_min(0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    ratio = n.clamp_min(max_exact).float() / max_exact               # ≥ 1: the log is finite
    if_large = max_exact + (torch.log(ratio) / math.log(max_distance / max_exact)
                            * (num_buckets - max_exact)).long()
    if_large = if_large.clamp_max(num_buckets - 1)
    return bucket + torch.where(is_small, n, if_large)


class T5RelativeBias(nn.Module):
    """B_hij = w_h[bucket(j − i)]: one learned scalar per head and T5 bucket (Raffel et al.).

    forward(lq, lk=None) -> float bias (heads, Lq, Lk), to add to the scores: pass it as the
    float ``mask`` of :func:`attnbook.attention` (it broadcasts over the batch of scores
    (B, heads, Lq, Lk)). Cost O(heads·Lq·Lk) memory, O(num_buckets·heads) parameters. §5.1.
    """

    def __init__(self, num_buckets, max_distance, heads, bidirectional=True):
        super().__init__()
        _check_buckets(bidirectional, num_buckets, max_distance)
        _checks.positive(heads, "heads", integer=True)
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.heads, self.bidirectional = heads, bidirectional
        self.embedding = nn.Embedding(num_buckets, heads)

    def forward(self, lq, lk=None):
        offset = relative_positions(lq, lk, device=self.embedding.weight.device)
        bucket = t5_relative_bucket(offset, bidirectional=self.bidirectional,
                                    num_buckets=self.num_buckets, max_distance=self.max_distance)
        return self.embedding(bucket).permute(2, 0, 1)                 # (Lq, Lk, h) -> (h, Lq, Lk)


# ---------------------------------------------------------------- RoPE (Su et al., 2021)

def rope_frequencies(dim, *, base=10000.0, dtype=torch.float64, device=None):
    """θ_i = base^(−2i/d) for i = 0 … d/2 − 1: the angle per position of each pair.

    dim even -> (dim/2,) in ``dtype``. Explained in §5.1.
    """
    _checks.positive(dim, "dim", integer=True)
    if dim % 2:
        raise ValueError(f"dim must be even: RoPE rotates pairs of features, got dim={dim}")
    _checks.positive(base, "base")
    two_i = torch.arange(0, dim, 2, dtype=torch.float64, device=device)
    return (base ** (-two_i / dim)).to(_float_dtype(dtype))


def _check_positions(positions, x, name, x_name, *, integer=False):
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(positions).__name__}")
    if positions.dtype == torch.bool or positions.is_complex() or (integer and positions.is_floating_point()):
        kind = "an integer" if integer else "a real"
        raise TypeError(f"{name} must be {kind} tensor, got dtype {positions.dtype}")
    if positions.device != x.device:
        raise ValueError(f"{name} is on {positions.device} but {x_name} is on {x.device}")
    target = tuple(x.shape[:-1])
    ok = positions.dim() <= len(target)
    if ok:
        try:
            ok = tuple(torch.broadcast_shapes(positions.shape, target)) == target
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(f"{name} has shape {tuple(positions.shape)} but must broadcast to "
                         f"(..., L) = {target}, the shape of {x_name} {tuple(x.shape)} without its width")
    if positions.is_floating_point() and not torch.isfinite(positions).all():
        raise ValueError(f"{name} must be finite")


def _rotate(x, positions, base, name, positions_name):
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"{name} must have an even width: RoPE rotates pairs of features, "
                         f"got shape {tuple(x.shape)}")
    if positions is None:
        positions = torch.arange(x.shape[-2], device=x.device)
    else:
        _check_positions(positions, x, positions_name, name)
    theta = rope_frequencies(d, base=base, device=x.device)
    angle = positions.to(torch.float64)[..., None] * theta          # (..., L, d/2), m·θ_i
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]                      # the pair (x_2i, x_2i+1)
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2)


def apply_rope(x, positions=None, *, base=10000.0):
    """RoPE: rotate each pair (x_2i, x_2i+1) of the vector at position m by the angle m·θ_i.

    (x_2i, x_2i+1) -> (x_2i cos mθ_i − x_2i+1 sin mθ_i, x_2i sin mθ_i + x_2i+1 cos mθ_i),
    θ_i = base^(−2i/d). Pairs are *interleaved* (features 0-1, 2-3, …) as in the RoFormer
    paper; some libraries (e.g. GPT-NeoX, Llama in Hugging Face) pair feature i with
    i + d/2 instead, which is the same map up to a permutation of the features.
    Then (R_m q)·(R_n k) depends on m − n only. x (..., L, d) with d even; ``positions``
    (real, broadcasting to (..., L)) default to 0..L−1 -> (..., L, d), norms unchanged.
    Angles are computed in float64. Cost O(L·d). Explained in §5.1.
    """
    _checks.tensor(x, "x", min_dim=2)
    return _rotate(x, positions, base, "x", "positions")


def rope_attention(query, key, value, mask=None, *, is_causal=False, scale=None,
                   positions_q=None, positions_k=None, base=10000.0):
    """Attention(R_m q, R_n k, v): exact attention on RoPE-rotated queries and keys.

    query (..., Lq, d), key (..., Lk, d) with d even, value (..., Lk, dv) -> output
    (..., Lq, dv) and weights (..., Lq, Lk); mask, is_causal and scale as in
    :func:`attnbook.attention`. Positions default to 0..L−1 for both; with a cache of past
    keys pass ``positions_q`` (e.g. Lk − Lq … Lk − 1). The scores depend only on the offsets
    m − n. Cost as attention, O(Lq·Lk·(d + dv)) time and O(Lq·Lk) memory. §5.1.
    """
    check_qkv(query, key, value)
    query = _rotate(query, positions_q, base, "query", "positions_q")
    key = _rotate(key, positions_k, base, "key", "positions_k")
    return attention(query, key, value, mask, scale=scale, is_causal=is_causal)


# ---------------------------------------------------------------- ALiBi (Press et al., 2022)

def _alibi_slope_list(heads):
    def power_of_2(n):                                  # 2^(−8/n), 2^(−16/n), …, 2^(−8)
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]
    closest = 1 << (heads.bit_length() - 1)             # largest power of 2 ≤ heads
    if closest == heads:
        return power_of_2(heads)
    return power_of_2(closest) + power_of_2(2 * closest)[0::2][:heads - closest]


def alibi_slopes(heads, *, dtype=torch.float32, device=None):
    """ALiBi's head slopes m_h = 2^(−8h/n), h = 1 … n, for n = heads a power of 2.

    Otherwise, as in Press et al. (2022): the n' = 2^⌊log2 heads⌋ slopes of n', then the
    odd-numbered slopes of 2n' (2^(−4/n'), 2^(−12/n'), …) until there are ``heads``.
    8 heads: 1/2, 1/4, …, 1/256. Returns (heads,) in ``dtype``. Explained in §5.1.
    """
    _checks.positive(heads, "heads", integer=True)
    return torch.tensor(_alibi_slope_list(heads), dtype=_float_dtype(dtype), device=device)


def alibi_bias(heads, lq, lk=None, *, causal=True, dtype=torch.float32, device=None):
    """B_hij = −m_h·(i − j): a penalty growing linearly with the distance of key j from query i.

    ``causal``: B_hij = −m_h·(i − j) for j ≤ i and −inf for j > i, so the bias is also the
    causal mask; otherwise the symmetric B_hij = −m_h·|i − j|. Returns (heads, Lq, Lk) in
    ``dtype`` (Lk = Lq by default), to pass as the float ``mask`` of
    :func:`attnbook.attention`. No parameters. Cost O(heads·Lq·Lk) memory. §5.1.
    """
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    dtype = _float_dtype(dtype)
    slopes = alibi_slopes(heads, dtype=torch.float64, device=device)[:, None, None]
    distance = -relative_positions(lq, lk, device=device)              # i − j
    if causal:
        bias = (-slopes * distance).masked_fill(distance < 0, float("-inf"))
    else:
        bias = -slopes * distance.abs()
    return bias.to(dtype)
