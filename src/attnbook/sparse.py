"""Sparse attention: each query sees a few keys chosen by a pattern, not all L of them (§3.5).

Every pattern has two faces. A ``*_pattern`` function returns the boolean (L, L) mask
(True = may attend) to plot and to check against; a kernel computes attention under it.
:func:`sparse_attention` is the dense reference for any pattern (O(L²)); the kernels
:func:`sliding_window_attention`, :func:`block_local_attention` and :func:`lsh_attention`
only ever touch the allowed pairs, which is where the savings come from.

Sources: the strided pattern of the Sparse Transformer (Child et al., 2019), Longformer's
sliding window and global tokens (Beltagy et al., 2020), BigBird's random keys (Zaheer et
al., 2020) and Reformer's LSH attention (Kitaev et al., 2020).
"""
import math

import torch
import torch.nn.functional as F

from . import _checks
from .attention import attention, check_qkv
from .masks import causal_mask, sliding_window_mask
from .softmax import masked_softmax


# ---------------------------------------------------------------- argument checks

def _scale(scale, width):
    return 1.0 / math.sqrt(width) if scale is None else _checks.positive(scale, "scale")


def _self_attention_shapes(query, key, value):
    """Check query, key, value as for attention, and that they hold one sequence (Lq = Lk)."""
    check_qkv(query, key, value)
    if query.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"this kernel attends within one sequence: query has Lq={query.shape[-2]} positions "
            f"but key has Lk={key.shape[-2]} (shapes {tuple(query.shape)} and {tuple(key.shape)})"
        )


# ---------------------------------------------------------------- patterns

def causal_pattern(length, *, device=None):
    """m_ij = (j ≤ i): the autoregressive pattern, L(L+1)/2 pairs. Returns (L, L) bool. §3.5."""
    _checks.positive(length, "length", integer=True)
    return causal_mask(length, device=device)


def sliding_window_pattern(length, window, *, dilation=1, causal=False, device=None):
    """m_ij = (i − j = m·dilation for some integer |m| ≤ window), and m ≥ 0 when ``causal``.

    Longformer's (dilated) sliding window: each query sees at most 2·window + 1 keys
    (window + 1 when causal), spread ``dilation`` apart. Returns (L, L) bool. §3.5.
    """
    _checks.positive(length, "length", integer=True)
    window = _checks.count(window, "window")
    _checks.positive(dilation, "dilation", integer=True)
    band = sliding_window_mask(length, window=window * dilation, causal=causal, device=device)
    offset = torch.arange(length, device=device)[:, None] - torch.arange(length, device=device)
    return band & (offset % dilation == 0)


def block_local_pattern(length, block, *, device=None):
    """m_ij = (⌊i / block⌋ = ⌊j / block⌋): block-diagonal, queries see their own block.

    The last block is shorter when ``block`` does not divide L. Returns (L, L) bool. §3.5.
    """
    _checks.positive(length, "length", integer=True)
    _checks.positive(block, "block", integer=True)
    which = torch.arange(length, device=device) // block
    return which[:, None] == which[None, :]


def _global_positions(global_positions, length, device):
    """The global positions as a 1-D long tensor, checked to be integers in 0..length−1."""
    try:
        positions = torch.as_tensor(global_positions if isinstance(global_positions, torch.Tensor)
                                    else list(global_positions))
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"global_positions must be a sequence of integers, "
                        f"got {global_positions!r}") from error
    if positions.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    if positions.dim() != 1 or positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise TypeError(f"global_positions must be a 1-D sequence of integers, got {positions.tolist()}")
    if positions.min() < 0 or positions.max() >= length:
        raise ValueError(f"global_positions must lie in 0..{length - 1}, got {positions.tolist()}")
    return positions.to(device=device, dtype=torch.long)


def global_tokens_pattern(length, window, global_positions, *, device=None):
    """m_ij = (|i − j| ≤ window) or i ∈ G or j ∈ G: a sliding window plus global tokens G.

    Longformer and BigBird: a global token attends to every position and every position
    attends to it, so information crosses the sequence in two steps.
    ``global_positions``: a sequence of integers in 0..L−1. Returns (L, L) bool. §3.5.
    """
    _checks.positive(length, "length", integer=True)
    window = _checks.count(window, "window")
    positions = _global_positions(global_positions, length, device)
    is_global = torch.zeros(length, dtype=torch.bool, device=device)
    is_global[positions] = True
    band = sliding_window_mask(length, window=window, device=device)
    return band | is_global[:, None] | is_global[None, :]


def bigbird_pattern(length, window, global_count, random_count, *, generator=None, device=None):
    """BigBird: window |i − j| ≤ window, the first ``global_count`` tokens global, plus random keys.

    Each non-global query also sees ``random_count`` keys drawn uniformly, without
    replacement, among the keys it does not already see (fewer when fewer remain), so
    its row has exactly min(L, n_base + random_count) keys. ``generator`` fixes the draw.
    Returns (L, L) bool. Explained in §3.5.
    """
    _checks.positive(length, "length", integer=True)
    global_count, random_count = _checks.count(global_count, "global_count"), _checks.count(random_count, "random_count")
    if global_count > length:
        raise ValueError(f"global_count must be at most length={length}, got {global_count}")
    base = global_tokens_pattern(length, window, range(global_count))
    source = generator.device if generator is not None else "cpu"
    noise = torch.rand(length, length, generator=generator, device=source).to(base.device)
    noise = noise.masked_fill(base, -1.0)  # keys already seen do not compete
    top = noise.topk(min(random_count, length), dim=-1)
    drawn = torch.zeros_like(base).scatter(-1, top.indices, top.values >= 0)
    return (base | drawn).to(device)


def strided_pattern(length, stride, *, causal=True, device=None):
    """Sparse Transformer: the previous ``stride`` positions and every stride-th one before.

    m_ij = (0 ≤ i − j ≤ stride) or ((i − j) mod stride = 0), the union of Child et al.'s two
    heads A¹ = {i − stride, …, i} and A² = {j : (i − j) mod stride = 0}; with ``causal``
    false, |i − j| replaces i − j. With stride ≈ √L each query sees O(√L) keys.
    Returns (L, L) bool. Explained in §3.5.
    """
    _checks.positive(length, "length", integer=True)
    _checks.positive(stride, "stride", integer=True)
    offset = torch.arange(length, device=device)[:, None] - torch.arange(length, device=device)
    if not causal:
        offset = offset.abs()
    return (offset >= 0) & ((offset <= stride) | (offset % stride == 0))


def pattern_density(pattern):
    """Fraction of allowed pairs, Σ m_ij / (Lq·Lk) (over all leading dims too), as a float. §3.5."""
    _checks.tensor(pattern, "pattern", min_dim=2, floating=False)
    if pattern.dtype != torch.bool:
        raise TypeError(f"pattern must be a boolean tensor (True = may attend), got dtype {pattern.dtype}")
    return pattern.sum().item() / pattern.numel()


# ---------------------------------------------------------------- kernels

def sparse_attention(query, key, value, pattern, *, scale=None):
    """Exact attention restricted to a pattern: softmax over {j : m_ij} of q_i·k_j·scale, times V.

    query (..., Lq, d), key (..., Lk, d), value (..., Lk, d_v), pattern bool broadcasting to
    (..., Lq, Lk) -> output (..., Lq, d_v), weights (..., Lq, Lk). A query whose row of the
    pattern is empty gets zeros. This is the dense reference: O(Lq·Lk·d) time and O(Lq·Lk)
    memory whatever the density. Explained in §3.5.
    """
    check_qkv(query, key, value)
    _checks.mask_for(pattern, (*query.shape[:-1], key.shape[-2]), name="pattern")
    if pattern.dtype != torch.bool:
        raise TypeError(f"pattern must be a boolean tensor (True = may attend), got dtype {pattern.dtype}")
    return attention(query, key, value, pattern, scale=scale)


def _window_keys(length, window, dilation, causal, device):
    """Key j = i + m·dilation for m in −window..window (..0 when causal): (L, K) index, exists."""
    last = 0 if causal else window
    offsets = torch.arange(-window, last + 1, device=device) * dilation
    keys = torch.arange(length, device=device)[:, None] + offsets
    exists = (keys >= 0) & (keys < length)
    return keys.clamp(0, length - 1), exists


def sliding_window_attention(query, key, value, window, *, dilation=1, causal=False, scale=None):
    """Longformer's window: y_i = Σ_m softmax_m(q_i·k_{i+m·δ}·scale) v_{i+m·δ}, |m| ≤ window.

    Only the K = 2·window + 1 keys of each query (window + 1 when ``causal``) are gathered:
    query, key (..., L, d), value (..., L, d_v) -> output (..., L, d_v) and banded weights
    (..., L, K), where weights[..., i, m] belongs to key i + (m − window)·dilation (zero
    when that key lies outside the sequence; :func:`window_weights_dense` expands them).
    Equals :func:`sparse_attention` with :func:`sliding_window_pattern`.
    Cost O(L·K·(d + d_v)) time and memory instead of O(L²). Explained in §3.5.
    """
    _self_attention_shapes(query, key, value)
    window = _checks.count(window, "window")
    _checks.positive(dilation, "dilation", integer=True)
    scale = _scale(scale, query.shape[-1])
    index, exists = _window_keys(query.shape[-2], window, dilation, causal, query.device)
    near_keys, near_values = key[..., index, :], value[..., index, :]      # (..., L, K, d)
    scores = torch.einsum("...id,...ikd->...ik", query, near_keys) * scale
    weights = masked_softmax(scores, exists)
    return torch.einsum("...ik,...ikd->...id", weights, near_values), weights


def window_weights_dense(weights, window, *, dilation=1, causal=False):
    """Banded weights (..., L, K) of :func:`sliding_window_attention` -> dense (..., L, L). §3.5."""
    _checks.tensor(weights, "weights", min_dim=2)
    window = _checks.count(window, "window")
    _checks.positive(dilation, "dilation", integer=True)
    length, width = weights.shape[-2:]
    if width != (window + 1 if causal else 2 * window + 1):
        raise ValueError(f"weights have {width} columns, not the {window}-window's "
                         f"{window + 1 if causal else 2 * window + 1}: shape {tuple(weights.shape)}")
    index, exists = _window_keys(length, window, dilation, causal, weights.device)
    dense = weights.new_zeros(*weights.shape[:-1], length)
    return dense.scatter_add(-1, index.expand_as(weights), weights * exists)


def block_local_attention(query, key, value, block, *, scale=None):
    """Attention within blocks: y_i = Σ_{j in i's block} softmax_j(q_i·k_j·scale) v_j.

    The sequence is padded to n = ⌈L / block⌉ blocks and reshaped to (..., n, block, d), so
    each block is one small exact attention (padding keys are masked out).
    query, key (..., L, d), value (..., L, d_v) -> output (..., L, d_v) and block weights
    (..., n, block, block) (:func:`block_weights_dense` expands them to (..., L, L)).
    Equals :func:`sparse_attention` with :func:`block_local_pattern`.
    Cost O(L·block·(d + d_v)) time and O(L·block) memory. Explained in §3.5.
    """
    _self_attention_shapes(query, key, value)
    _checks.positive(block, "block", integer=True)
    length = query.shape[-2]
    blocks = -(-length // block)
    padding = blocks * block - length

    def in_blocks(t):
        return F.pad(t, (0, 0, 0, padding)).unflatten(-2, (blocks, block))

    is_real = (torch.arange(blocks * block, device=query.device) < length).view(blocks, 1, block)
    out, weights = attention(in_blocks(query), in_blocks(key), in_blocks(value), is_real, scale=scale)
    return out.flatten(-3, -2)[..., :length, :], weights


def block_weights_dense(weights, length):
    """Block weights (..., n, b, b) of :func:`block_local_attention` -> dense (..., L, L). §3.5."""
    _checks.tensor(weights, "weights", min_dim=3)
    _checks.positive(length, "length", integer=True)
    blocks, block = weights.shape[-3], weights.shape[-1]
    if weights.shape[-2] != block or not (blocks - 1) * block < length <= blocks * block:
        raise ValueError(f"weights of shape {tuple(weights.shape)} are not the blocks of length {length}")
    diagonal = torch.diag_embed(weights.movedim(-3, -1))      # (..., b, b, n, n), block k at [k, k]
    dense = diagonal.permute(*range(weights.dim() - 3), -2, -4, -1, -3)
    return dense.reshape(*weights.shape[:-3], blocks * block, blocks * block)[..., :length, :length]


# ---------------------------------------------------------------- LSH attention (Reformer)

def _check_n_buckets(n_buckets):
    _checks.positive(n_buckets, "n_buckets", integer=True)
    if n_buckets != 1 and n_buckets % 2:
        raise ValueError(f"n_buckets must be 1 or even (argmax over [xR; −xR]), got {n_buckets}")


def lsh_buckets(x, n_buckets, *, n_hashes=1, generator=None):
    """Angular LSH: h(x) = argmax([xR; −xR]) with a random Gaussian R of shape (d, n_buckets/2).

    x (..., L, d) -> buckets (..., n_hashes, L), integers in 0..n_buckets−1, one independent
    R per hash round (shared by the leading dims). Vectors at a small angle share a bucket
    with high probability; identical vectors always do. n_buckets must be even, or 1 (one
    bucket: no hashing). ``generator`` fixes R. Cost O(n_hashes·L·d·n_buckets). §3.5.
    """
    _checks.tensor(x, "x", min_dim=2)
    _check_n_buckets(n_buckets)
    _checks.positive(n_hashes, "n_hashes", integer=True)
    length, width = x.shape[-2:]
    if n_buckets == 1:
        return torch.zeros(*x.shape[:-2], n_hashes, length, dtype=torch.long, device=x.device)
    source = generator.device if generator is not None else "cpu"
    rotations = torch.randn(n_hashes, width, n_buckets // 2, generator=generator, device=source,
                            dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    rotated = x.unsqueeze(-3) @ rotations                      # (..., n_hashes, L, n_buckets/2)
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)


def _at_tokens(x, tokens):
    """x (..., L, e) gathered at tokens (..., R, n, m) of indices into L -> (..., R, n, m, e)."""
    flat = tokens.flatten(-3)
    picked = torch.gather(x, -2, flat.unsqueeze(-1).expand(*flat.shape, x.shape[-1]))
    return picked.view(*tokens.shape, x.shape[-1])


def lsh_attention(qk, value, n_buckets, chunk, *, n_hashes=1, causal=False, generator=None,
                  scale=None, return_pattern=True):
    """Reformer's LSH attention: shared-QK attention among the keys hashed near each query.

    Per hash round: bucket every vector (:func:`lsh_buckets`), sort by (bucket, position),
    cut the sorted sequence into chunks of ``chunk``; a query is compared with the keys of
    its chunk and of the previous one, never with itself unless it has no other key, then
    the result is unsorted. Keys are the unit-length queries, k_j = q_j/‖q_j‖, and scores are
    q_i·k_j·scale (scale = 1/√d by default). Over several rounds each compared pair counts
    once, so the output is exact softmax attention restricted to the returned pattern.
    With ``causal`` a query sees only j ≤ i; which earlier keys it is compared with still
    depends on the later tokens (through the sort).
    qk (..., L, d), value (..., L, d_v) -> output (..., L, d_v), buckets (..., n_hashes, L),
    pattern (..., L, L) bool of the pairs attended (None when not ``return_pattern``).
    Cost O(n_hashes·L·chunk·(d + d_v + n_hashes)) time and O(n_hashes·L·chunk) memory;
    the pattern, for plotting, takes O(L²) bits. Explained in §3.5.
    """
    check_qkv(qk, qk, value)
    _checks.positive(chunk, "chunk", integer=True)
    length, device = qk.shape[-2], qk.device
    scale = _scale(scale, qk.shape[-1])
    buckets = lsh_buckets(qk, n_buckets, n_hashes=n_hashes, generator=generator)   # (..., R, L)

    # Sort each round by (bucket, position) and cut the sorted order into chunks.
    order = (buckets * length + torch.arange(length, device=device)).argsort(dim=-1)  # slot -> token
    slot_of = order.argsort(dim=-1)                                                   # token -> slot
    chunk_of = slot_of // chunk                                                       # (..., R, L)
    n = -(-length // chunk)
    query_token = F.pad(order, (0, n * chunk - length)).unflatten(-1, (n, chunk))     # (..., R, n, c)
    query_real = (torch.arange(n * chunk, device=device) < length).view(n, chunk)
    previous_real = query_real.roll(1, dims=0)
    previous_real[0] = False                                       # the first chunk has no previous
    key_token = torch.cat([query_token.roll(1, dims=-2), query_token], dim=-1)      # (..., R, n, 2c)
    key_real = torch.cat([previous_real, query_real], dim=-1)

    # Which pairs are compared: real slots, causal order, and itself only as a last resort.
    i, j = query_token.unsqueeze(-1), key_token.unsqueeze(-2)                      # (..., R, n, c, 2c)
    allowed = query_real[:, :, None] & key_real[:, None, :]
    if causal:
        allowed = allowed & (j <= i)
    is_self = j == i
    other = allowed & ~is_self
    has_other = other.any(-1).flatten(-2)[..., :length].gather(-1, slot_of).any(dim=-2)  # per token
    allowed = other | (allowed & is_self & ~_at_tokens(has_other.unsqueeze(-1), query_token))

    # A pair compared in several rounds must count once: divide by how many rounds compare it.
    times = torch.zeros_like(allowed, dtype=qk.dtype)
    for r in range(chunk_of.shape[-2]):
        chunks = chunk_of[..., r, :].unsqueeze(-1)
        ci, cj = _at_tokens(chunks, query_token), _at_tokens(chunks, key_token).transpose(-2, -1)
        times = times + ((cj == ci) | (cj == ci - 1)).to(qk.dtype)

    q = _at_tokens(qk, query_token)
    k = F.normalize(_at_tokens(qk, key_token), dim=-1)
    scores = q @ k.transpose(-2, -1) * scale - times.clamp_min(1).log()
    weights = masked_softmax(scores, allowed)
    partial = weights @ _at_tokens(value, key_token)                              # (..., R, n, c, d_v)
    log_total = scores.masked_fill(~allowed, float("-inf")).logsumexp(dim=-1)      # (..., R, n, c)

    # Unsort, then mix the rounds in proportion to the softmax mass each one found.
    token_slots = slot_of.unsqueeze(-1).expand(*slot_of.shape, partial.shape[-1])
    partial = partial.flatten(-3, -2).gather(-2, token_slots)                         # (..., R, L, d_v)
    log_total = log_total.flatten(-2).gather(-1, slot_of)                             # (..., R, L)
    share = torch.softmax(log_total, dim=-2).unsqueeze(-1)
    output = (share * partial).sum(dim=-3)

    pattern = None
    if return_pattern:
        pair = torch.where(allowed, i * length + j, length * length).flatten(-4)
        seen = torch.zeros(*pair.shape[:-1], length * length + 1, dtype=torch.bool, device=device)
        pattern = seen.scatter(-1, pair, True)[..., :-1].unflatten(-1, (length, length))
    return output, buckets, pattern
