"""Hard (sampled) attention trained with REINFORCE, and hybrid coarse-to-fine attention (§3.1).

Soft attention reads a weighted average of all values; hard attention samples one position
(or k) from the same weights and reads only those values (Xu et al., 2015). Sampling has no
gradient, so the scores learn from the score-function estimator of Williams (1992),
∇E[R] = E[(R − b) ∇log p(j)], for which :func:`reinforce_loss` is the surrogate loss.
Hybrid attention picks the best blocks of keys coarsely and attends softly inside them.
"""
import math

import torch
import torch.nn.functional as F

from . import _checks
from .attention import check_qkv
from .scores import scaled_dot_scores
from .softmax import masked_softmax


def sample_positions(weights, k=1, *, generator=None):
    """Draw k positions j ~ Categorical(a) per row, with replacement (k independent draws).

    weights (..., Lq, Lk), ≥ 0, rows proportional to the probabilities (need not sum to 1)
    -> indices (..., Lq, k) (int64) and log_probs (..., Lq, k) = log(a_j / Σ_j' a_j'),
    differentiable with respect to the weights; a joint sample has log-probability
    log_probs.sum(-1). Draws are independent so that the mean of the k values read is an
    unbiased estimate of the soft output. A row of zeros (every key masked) has no position
    to draw: its indices are -1 and its log_probs 0. ``generator`` must be on the weights'
    device. Cost O(Lq·(Lk + k)) time. Explained in §3.1.
    """
    _checks.tensor(weights, "weights", min_dim=1)
    _checks.positive(k, "k", integer=True)
    if weights.shape[-1] == 0:
        raise ValueError(f"weights must have at least one position, got shape {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"weights must be finite and ≥ 0, got values in "
                         f"[{weights.min().item()}, {weights.max().item()}]")
    rows = weights.detach().reshape(-1, weights.shape[-1])
    empty = rows.sum(-1, keepdim=True) == 0
    draw = torch.where(empty, torch.ones_like(rows), rows)  # multinomial refuses an all-zero row
    if draw.dtype not in (torch.float32, torch.float64):
        draw = draw.float()
    indices = torch.multinomial(draw, k, replacement=True, generator=generator)
    indices = indices.reshape(*weights.shape[:-1], k)
    empty = empty.reshape(*weights.shape[:-1], 1)
    picked = weights.gather(-1, indices)
    total = weights.sum(-1, keepdim=True)
    one = torch.ones((), dtype=weights.dtype, device=weights.device)
    log_probs = torch.log(torch.where(empty, one, picked)) - torch.log(torch.where(empty, one, total))
    return indices.masked_fill(empty, -1), log_probs


def hard_attention(query, key, value, mask=None, *, k=1, scale=None, generator=None):
    """Hard attention: sample j_1 … j_k ~ a_i = softmax(q_i Kᵀ · scale), output (1/k) Σ_m v_{j_m}.

    query (..., Lq, d), key (..., Lk, d), value (..., Lk, d_v), mask (boolean or float,
    broadcast to (..., Lq, Lk)) -> output (..., Lq, d_v), weights a (..., Lq, Lk) (the soft
    distribution), indices (..., Lq, k) and log_prob (..., Lq) = Σ_m log a_{i j_m}, the
    log-probability of the row's sample, for :func:`reinforce_loss`. E[output] equals soft
    attention's output. The output has a gradient with respect to value only; the scores
    get theirs through log_prob. A query with no allowed key reads a zero output.
    scale defaults to 1/√d. Cost O(Lq·Lk·d) time for the weights, O(Lq·k·d_v) for the read.
    Explained in §3.1 (Xu et al., 2015).
    """
    check_qkv(query, key, value)
    weights = masked_softmax(scaled_dot_scores(query, key, scale), mask)
    indices, log_probs = sample_positions(weights, k, generator=generator)
    read = torch.take_along_dim(value.unsqueeze(-3), indices.clamp_min(0).unsqueeze(-1), dim=-2)
    read = read * (indices >= 0).unsqueeze(-1)  # (..., Lq, k, d_v)
    return read.mean(-2), weights, indices, log_probs.sum(-1)


def reinforce_loss(log_prob, reward, baseline=None):
    """REINFORCE surrogate (Williams, 1992): L = −mean((R − b)·log p), with R and b held constant.

    Its gradient −mean((R − b)·∇log p) is an unbiased estimate of −∇E[R] for any b that does
    not depend on the sample; a b near E[R] lowers its variance. log_prob (...), reward
    broadcastable to log_prob's shape (without enlarging it), baseline a number or a tensor
    broadcastable to reward (default 0) -> a scalar. Cost O(numel). Explained in §3.1.
    """
    _checks.tensor(log_prob, "log_prob", min_dim=0)
    _checks.tensor(reward, "reward", min_dim=0)
    _checks.same_kind({"log_prob": log_prob, "reward": reward})
    try:
        ok = tuple(torch.broadcast_shapes(reward.shape, log_prob.shape)) == tuple(log_prob.shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"reward has shape {tuple(reward.shape)} but log_prob has "
                         f"{tuple(log_prob.shape)}; reward must broadcast to log_prob's shape")
    advantage = reward.detach()
    if baseline is not None:
        if isinstance(baseline, torch.Tensor):
            _checks.same_kind({"reward": reward, "baseline": baseline})
            try:
                ok = tuple(torch.broadcast_shapes(baseline.shape, reward.shape)) == tuple(reward.shape)
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f"baseline has shape {tuple(baseline.shape)} but reward has "
                                 f"{tuple(reward.shape)}; baseline must broadcast to reward")
            baseline = baseline.detach()
        elif (isinstance(baseline, bool) or not isinstance(baseline, (int, float))
              or not math.isfinite(baseline)):
            raise TypeError(f"baseline must be a finite number, a tensor or None, got {baseline!r}")
        advantage = advantage - baseline
    return -(advantage * log_prob).mean()


class MovingAverageBaseline:
    """b ← m·b + (1 − m)·mean(R): a running estimate of E[R] for :func:`reinforce_loss`.

    Xu et al. (2015) use momentum m = 0.9. Read ``value`` for the current batch's loss,
    then call :meth:`update` with its rewards, so that b never depends on the sample it
    corrects. ``value`` is 0 before the first update, which sets it to the first mean
    (no warm-up bias). Explained in §3.1.
    """

    def __init__(self, momentum=0.9):
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"momentum must be a number, got {type(momentum).__name__}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.momentum, self.value, self.updates = momentum, 0.0, 0

    def update(self, reward):
        """Fold the mean of ``reward`` (a tensor or a number) into b; return the new b."""
        mean = float(reward.detach().mean()) if isinstance(reward, torch.Tensor) else float(reward)
        if not math.isfinite(mean):
            raise ValueError(f"reward must be finite, got mean {mean}")
        m = self.momentum
        self.value = mean if self.updates == 0 else m * self.value + (1 - m) * mean
        self.updates += 1
        return self.value


def hybrid_attention(query, key, value, mask=None, *, block, top=1, scale=None):
    """Coarse-to-fine attention: pick the top blocks by q·k̄_b, then softmax(q Kᵀ·scale) V inside them.

    The keys are cut into ⌈Lk/block⌉ blocks (the last may be shorter); k̄_b is the mean of
    block b's keys. Each query keeps the ``top`` blocks with the highest q_i·k̄_b·scale
    among those holding an allowed key (top is capped at the number of blocks) and attends
    exactly to the keys of those blocks only. top = number of blocks gives exact attention.
    query (..., Lq, d), key (..., Lk, d), value (..., Lk, d_v), boolean mask broadcast to
    (..., Lq, Lk) -> output (..., Lq, d_v), weights (..., Lq, Lk) (zero outside the chosen
    blocks, rows summing to 1, or 0 with no allowed key), chosen block indices (..., Lq, top)
    best first. Cost O(Lq·Lk/block·d + Lq·top·block·(d + d_v)) time; O(Lq·top·block·d)
    memory, plus O(Lq·Lk) for the returned dense weights. Explained in §3.1.
    """
    check_qkv(query, key, value)
    _checks.positive(block, "block", integer=True)
    _checks.positive(top, "top", integer=True)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else _checks.positive(scale, "scale")
    *batch, lq, _ = query.shape
    lk = key.shape[-2]
    if lk == 0:
        raise ValueError(f"key must hold at least one position, got shape {tuple(key.shape)}")
    if mask is not None:
        _checks.mask_for(mask, (*batch, lq, lk))
        if mask.dtype != torch.bool:
            raise TypeError(f"hybrid attention needs a boolean mask, got dtype {mask.dtype}")
    blocks = -(-lk // block)
    top, pad = min(top, blocks), blocks * block - lk
    real = torch.arange(blocks * block, device=key.device) < lk
    keys = F.pad(key, (0, 0, 0, pad)).unflatten(-2, (blocks, block))  # (..., nb, block, d)
    values = F.pad(value, (0, 0, 0, pad)).unflatten(-2, (blocks, block))
    summaries = keys.sum(-2) / real.view(blocks, block).sum(-1, keepdim=True)  # k̄_b (..., nb, d)
    allowed = real.expand(*batch, lq, blocks * block)
    if mask is not None:
        allowed = allowed & F.pad(mask.expand(*batch, lq, lk), (0, pad), value=False)
    allowed = allowed.unflatten(-1, (blocks, block))  # (..., Lq, nb, block)
    coarse = (query @ summaries.transpose(-2, -1)) * scale  # (..., Lq, nb)
    coarse = coarse.masked_fill(~allowed.any(-1), float("-inf"))
    chosen = coarse.topk(top, dim=-1).indices  # (..., Lq, top)
    pick = chosen[..., None, None]
    keys = torch.take_along_dim(keys.unsqueeze(-4), pick, dim=-3)  # (..., Lq, top, block, d)
    values = torch.take_along_dim(values.unsqueeze(-4), pick, dim=-3)
    allowed = torch.take_along_dim(allowed, chosen[..., None], dim=-2)  # (..., Lq, top, block)
    fine = torch.einsum("...qd,...qtbd->...qtb", query, keys) * scale
    weights = masked_softmax(fine.flatten(-2), allowed.flatten(-2))  # (..., Lq, top·block)
    output = (weights.unsqueeze(-2) @ values.flatten(-3, -2)).squeeze(-2)
    dense = query.new_zeros(*batch, lq, blocks, block)
    dense = dense.scatter(-2, chosen[..., None].expand(*chosen.shape, block),
                          weights.unflatten(-1, (top, block)))
    return output, dense.flatten(-2)[..., :lk], chosen
