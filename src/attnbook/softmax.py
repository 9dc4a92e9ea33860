"""Step 2 of attention: turning scores into weights with a masked, tempered softmax (§2.3)."""
import torch

from . import _checks


def masked_softmax(scores, mask=None, *, temperature=1.0, dim=-1):
    """Weights a_ij = exp(s_ij / T) / Σ_j' exp(s_ij' / T) over the allowed positions j.

    scores (..., Lq, Lk); mask broadcastable to the scores: boolean (True = may attend)
    or floating (added to the scores before dividing by T). Masked weights are exactly 0;
    a row with no allowed position gets all-zero weights, never NaN.
    T → 0 approaches the one-hot argmax, T → ∞ the uniform distribution.
    Cost O(Lq·Lk) time and memory. Explained in §2.3.
    """
    _checks.tensor(scores, "scores", min_dim=1)
    _checks.positive(temperature, "temperature")
    keep = None
    if mask is not None:
        _checks.mask_for(mask, scores.shape, dtype=scores.dtype)
        if mask.dtype == torch.bool:
            keep = mask
        else:
            scores = scores + mask
    if scores.shape[dim] == 0:
        return torch.zeros_like(scores)  # no key at all: like a fully masked row
    logits = scores / temperature
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    top = logits.amax(dim=dim, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(logits - top)
    total = e.sum(dim=dim, keepdim=True)
    return e / total.clamp_min(torch.finfo(e.dtype).tiny)


def entropy(weights, dim=-1):
    """Shannon entropy H(a) = -Σ_j a_j log a_j of each weight row, in nats (0 log 0 = 0).

    weights (..., Lk) -> (...). Ranges from 0 (one-hot) to log Lk (uniform). §2.3.
    """
    _checks.tensor(weights, "weights", min_dim=1)
    logs = torch.log(torch.where(weights > 0, weights, torch.ones_like(weights)))  # finite gradient at 0
    return -(weights * logs).sum(dim=dim)
