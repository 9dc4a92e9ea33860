"""FlashAttention in plain PyTorch: exact attention, tile by tile, with an online softmax (§5.3).

Exact attention softmax(Q Kᵀ · scale) V seems to need the whole Lq × Lk score matrix, because
each softmax row is normalised by a sum over all keys. The online softmax (Milakov and
Gimelshein 2018) removes that need: it keeps, per query, a running max m, a running sum of
exponentials l and a running numerator acc, and rescales them whenever a new block of keys
raises the max. FlashAttention (Dao et al. 2022) runs this recurrence over tiles of
block_q queries × block_k keys, so at most one tile of scores exists at a time. The GPU
kernel does it in fast on-chip memory; here each tile is one batched matmul over all the
leading (batch, head) dimensions, to show the algorithm, not the kernel.

References (book/references.bib): ``milakov2018online``, ``dao2022flashattention``.
"""
import math

import torch

from . import _checks
from .attention import check_qkv

LOG2_E = math.log2(math.e)  # e^s = 2^{s·log₂e}: tiled_attention computes 2^x, cheaper than e^x


def _unpack(state):
    """(m, l, acc) from a state, or a TypeError that names the state."""
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise TypeError(f"state must be a tuple (m, l, acc), got {type(state).__name__}")
    return state


def _check_step(state, scores_block, value_block):
    """Raise unless the blocks (and the state, when given) describe the same queries."""
    _checks.tensor(scores_block, "scores_block", min_dim=2)
    _checks.tensor(value_block, "value_block", min_dim=2)
    if scores_block.shape[-1] != value_block.shape[-2]:
        raise ValueError(
            f"scores_block has {scores_block.shape[-1]} keys but value_block has "
            f"{value_block.shape[-2]}: shapes {tuple(scores_block.shape)} and {tuple(value_block.shape)}"
        )
    if state is None:
        return
    m, l, acc = _unpack(state)
    rows = (*scores_block.shape[:-1], 1)
    want = {"m": rows, "l": rows, "acc": (*scores_block.shape[:-1], value_block.shape[-1])}
    for name, t in (("m", m), ("l", l), ("acc", acc)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want[name]:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"state {name} must have shape {want[name]} for these blocks, got {got}")


def online_softmax_step(state, scores_block, value_block, *, base2=False, overwrite=False):
    """Fold one block of keys into the running state: m' = max(m, rowmax S),
    l' = e^{m−m'} l + rowsum e^{S−m'}, acc' = e^{m−m'} acc + e^{S−m'} V.

    state: None before the first block, else (m, l, acc) with m (..., Lq, 1) the running max,
    l (..., Lq, 1) the running sum of exponentials and acc (..., Lq, dv) the running numerator;
    scores_block (..., Lq, b) with −inf where a key is masked; value_block (..., b, dv).
    Returns the new (m, l, acc). After any blocks, in any order, ``finish(state)`` equals
    softmax(S) V over the keys seen so far. The max m only keeps e^{S−m} ≤ 1 (no overflow);
    it cancels in acc / l, so it is detached from autograd. With ``base2`` every e^x becomes
    2^x, for scores already multiplied by log₂ e (2^{s·log₂ e} = e^s, and 2^x is cheaper).
    With ``overwrite`` the scores block becomes scratch space for e^{S−m'} (one tile less
    allocated per step: :func:`tiled_attention` does so). A row with no allowed key keeps
    m at the dtype's lowest finite value, so that no step computes −inf − (−inf).
    Cost O(Lq·b·dv) time, O(Lq·b) memory. Explained in §5.3.
    """
    _check_step(state, scores_block, value_block)
    lowest = torch.finfo(scores_block.dtype).min
    row_max = scores_block.amax(dim=-1, keepdim=True).detach()
    if state is None:
        m_new = row_max.clamp_min(lowest)
        rescale = l = acc = None
    else:
        m, l, acc = state
        m_new = torch.maximum(m, row_max)
        rescale = torch.exp2(m - m_new) if base2 else torch.exp(m - m_new)  # e^{m−m'}
    p = scores_block.sub_(m_new) if overwrite else scores_block - m_new
    p = p.exp2_() if base2 else p.exp_()  # e^{S−m'}: 0 where a key is masked
    if state is None:
        return m_new, p.sum(dim=-1, keepdim=True), p @ value_block
    l_new = torch.addcmul(p.sum(dim=-1, keepdim=True), rescale, l)  # e^{m−m'} l + rowsum e^{S−m'}
    acc_new = torch.addcmul(p @ value_block, rescale, acc)  # e^{m−m'} acc + e^{S−m'} V
    return m_new, l_new, acc_new


def finish(state):
    """Output = acc / l, the softmax-weighted sum of the values seen; zero where l = 0.

    state (m (..., Lq, 1), l (..., Lq, 1), acc (..., Lq, dv)) -> (..., Lq, dv). A query that
    saw no allowed key (l = 0) gets a zero output, never NaN. Cost O(Lq·dv). Explained in §5.3.
    """
    _, l, acc = _unpack(state)
    return acc / torch.where(l > 0, l, torch.ones_like(l))


def log_sum_exp(state, *, base2=False):
    """log Σ_j e^{s_ij} = m + log l for each query row; −inf for a row with no allowed key.

    state (m, l, acc) -> (..., Lq), natural log; with ``base2`` the state is in base 2
    (see :func:`online_softmax_step`) and the result is (m + log₂ l) · ln 2. FlashAttention
    keeps it to recompute the weights e^{s_ij − lse_i} in its backward pass. Explained in §5.3.
    """
    m, l, _ = _unpack(state)
    lse = m + (torch.log2(l) if base2 else torch.log(l))
    return (lse * math.log(2) if base2 else lse).squeeze(-1)


def tile_schedule(lq, lk, block_q, block_k, *, is_causal):
    """computed[i, j] = (tile (i, j) holds an allowed score): the tiles the loop visits.

    Tile (i, j) covers queries i·block_q … and keys j·block_k …; without a causal mask every
    tile is computed; with one (top-left aligned, key ≤ query) a tile strictly above the
    diagonal, whose first key comes after its last query, is skipped: about half the work.
    Returns a (⌈lq/block_q⌉, ⌈lk/block_k⌉) bool tensor, True = computed. Explained in §5.3.
    """
    for name, n in (("lq", lq), ("lk", lk), ("block_q", block_q), ("block_k", block_k)):
        _checks.positive(n, name, integer=True)
    first_query = torch.arange(0, lq, block_q)
    last_query = (first_query + block_q).clamp(max=lq) - 1
    first_key = torch.arange(0, lk, block_k)
    if not is_causal:
        return torch.ones(len(first_query), len(first_key), dtype=torch.bool)
    return first_key[None, :] <= last_query[:, None]


def _check_mask(mask, query, key, is_causal):
    """Check ``mask`` as attention() does; lift it to at least 2-D so that tiles can be sliced."""
    if mask is None:
        return None
    if is_causal:
        raise ValueError("pass either mask or is_causal=True, not both")
    _checks.mask_for(mask, (*query.shape[:-2], query.shape[-2], key.shape[-2]), dtype=query.dtype)
    return mask.reshape((1,) * (2 - mask.dim()) + tuple(mask.shape))


def _mask_tile(scores, mask, rows, cols, is_causal):
    """Apply the boolean/float mask, or the causal mask, to one tile of base-2 scores."""
    if mask is not None:
        # a mask dimension of size 1 broadcasts over all the queries (or keys): keep it whole
        rows = rows if mask.shape[-2] > 1 else slice(None)
        cols = cols if mask.shape[-1] > 1 else slice(None)
        tile = mask[..., rows, cols]
        if tile.dtype == torch.bool:
            return scores.masked_fill(~tile, -math.inf)
        return scores + tile * LOG2_E  # a float mask is a bias on the scores, in base 2 too
    if is_causal and cols.stop - 1 > rows.start:  # the tile crosses the diagonal
        queries = torch.arange(rows.start, rows.stop, device=scores.device)
        keys = torch.arange(cols.start, cols.stop, device=scores.device)
        return scores.masked_fill(keys[None, :] > queries[:, None], -math.inf)
    return scores


def tiled_attention(query, key, value, mask=None, *, block_q=512, block_k=256, is_causal=False,
                    scale=None, return_lse=False):
    """Exact attention softmax(Q Kᵀ · scale + B) V computed tile by tile with the online softmax.

    query (..., Lq, d), key (..., Lk, d), value (..., Lk, dv) -> output (..., Lq, dv), and the
    log-sum-exp (..., Lq) of each score row when ``return_lse``. ``mask`` as in
    :func:`attnbook.attention` (boolean True = may attend, or float added to the scores),
    sliced per tile; ``is_causal`` uses the top-left causal mask and skips the tiles above
    the diagonal (see :func:`tile_schedule`). Block sizes need not divide the lengths.
    A query with no allowed key gets a zero output (and lse = −inf).
    Cost O(Lq·Lk·(d + dv)) time like attention, but extra memory O(L·(d + dv) + block_q·block_k)
    per (batch, head) instead of O(Lq·Lk). Under autograd the loop saves every tile for the
    backward pass (O(Lq·Lk) again); FlashAttention's backward recomputes the tiles from the lse
    instead. Equals ``torch.nn.functional.scaled_dot_product_attention``. The default tile,
    512 × 256 scores (512 KiB per head in float32), was the fastest of a sweep of block sizes
    on a 2-core CPU (B=1, h=8, d=64); ``python -m attnbook.bench`` measures its time against
    torch's fused SDPA kernel on the reader's machine.
    Explained in §5.3.
    """
    check_qkv(query, key, value)
    _checks.positive(block_q, "block_q", integer=True)
    _checks.positive(block_k, "block_k", integer=True)
    mask = _check_mask(mask, query, key, is_causal)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else _checks.positive(scale, "scale")
    lq, lk = query.shape[-2], key.shape[-2]
    if lq == 0 or lk == 0:  # nothing to attend to (or no query): zeros
        out = query.new_zeros((*query.shape[:-1], value.shape[-1]))
        return (out, query.new_full(query.shape[:-1], -math.inf)) if return_lse else out
    # Split once into blocks (views, no copies); the scores are in base 2: s·log₂e.
    query_blocks = (query * (scale * LOG2_E)).split(block_q, dim=-2)
    key_blocks = key.transpose(-2, -1).split(block_k, dim=-1)  # Kᵀ, block_k columns each
    value_blocks = value.split(block_k, dim=-2)
    computed = tile_schedule(lq, lk, block_q, block_k, is_causal=is_causal).tolist()
    outputs, lses = [], []
    for i, query_block in enumerate(query_blocks):
        rows = slice(i * block_q, i * block_q + query_block.shape[-2])
        state = None
        for j in (j for j, yes in enumerate(computed[i]) if yes):
            cols = slice(j * block_k, j * block_k + key_blocks[j].shape[-1])
            scores = query_block @ key_blocks[j]  # (..., ≤ block_q, ≤ block_k): one tile
            scores = _mask_tile(scores, mask, rows, cols, is_causal)
            state = online_softmax_step(state, scores, value_blocks[j], base2=True, overwrite=True)
        outputs.append(finish(state))
        if return_lse:
            lses.append(log_sum_exp(state, base2=True))
    out = torch.cat(outputs, dim=-2)
    return (out, torch.cat(lses, dim=-1)) if return_lse else out
