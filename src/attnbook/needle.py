"""Find one item: a needle-in-a-haystack task for soft and hard attention, and local-p in O(n·D) (§3.1).

A sequence holds L random items; exactly one of them carries a marker and its label is the
answer. A retriever with one learned query reads the labels (one-hot values) through soft
attention, trained by backpropagation, or through hard attention, trained with REINFORCE
(Williams, 1992) as in Xu et al. (2015). Both estimate the gradient of the same objective,
the expected reward E_{j~a}[R_j] = Σ_j a_j R_j with R_j = 1[y_j = y*]: soft attention
computes it exactly, REINFORCE from one sampled position; :func:`gradient_estimates` and
:func:`gradient_variance` measure how far apart they are by sampling, :func:`estimator_statistics`
by enumerating the positions.

:func:`windowed_local_attention` computes Luong et al.'s (2015) local attention on the
2D + 1 keys of each window only, where :class:`attnbook.rnn.LuongLocalAttention` works densely.
"""
import math
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .attention import attention, check_qkv
from .hard import hard_attention
from .softmax import masked_softmax

ESTIMATORS = ("exact", "reinforce")


class NeedleBatch(NamedTuple):
    """A batch of the find-one-item task (see :func:`needle_batch`)."""

    items: torch.Tensor  # (..., L, d) float: item vectors, the marker in coordinate 0
    labels: torch.Tensor  # (..., L) int64: every item's label in 0..classes-1
    position: torch.Tensor  # (...,) int64: where the marked item (the needle) is
    target: torch.Tensor  # (...,) int64: the needle's label, the answer


def _shape(batch):
    """``batch`` as a tuple of positive ints (an int or a tuple of ints)."""
    shape = (batch,) if isinstance(batch, numbers.Integral) and not isinstance(batch, bool) else batch
    if not isinstance(shape, tuple) or not shape:
        raise TypeError(f"batch must be a positive int or a tuple of them, got {batch!r}")
    for n in shape:
        _checks.positive(n, "batch", integer=True)
    return shape


def needle_batch(batch, length, *, dim=8, classes=8, signal=3.0, generator=None, dtype=torch.float32):
    """Draw a batch of the find-one-item task: output the label of the one marked item.

    Item j of a sequence is x_j = (m_j, z_j) with z_j ~ N(0, I_{d−1}) (distractor features)
    and a marker m_j = ``signal`` for the one needle, 0 for every other item; its label y_j is
    uniform in 0..classes−1, and the needle's position n is uniform in 0..L−1. The answer is
    y* = y_n (other items may share that label by chance, with probability 1/classes each).
    batch (an int B or a tuple of batch sizes), length L ≥ 1, dim d ≥ 2, classes ≥ 2 ->
    :class:`NeedleBatch` with items (*batch, L, d), labels (*batch, L), position (*batch,)
    and target (*batch,). The same ``generator`` state gives the same batch. Cost O(B·L·d).
    Explained in §3.1.
    """
    shape = _shape(batch)
    _checks.positive(length, "length", integer=True)
    _checks.positive(dim, "dim", integer=True)
    _checks.positive(classes, "classes", integer=True)
    _checks.positive(signal, "signal")
    if dim < 2:
        raise ValueError(f"dim must be ≥ 2 (a marker and at least one distractor feature), got {dim}")
    if classes < 2:
        raise ValueError(f"classes must be ≥ 2, got {classes}")
    _checks.generator(generator)
    features = torch.randn(*shape, length, dim - 1, generator=generator, dtype=dtype)
    labels = torch.randint(0, classes, (*shape, length), generator=generator)
    position = torch.randint(0, length, shape, generator=generator)
    marker = F.one_hot(position, length).to(dtype) * signal
    items = torch.cat([marker.unsqueeze(-1), features], dim=-1)
    target = labels.gather(-1, position.unsqueeze(-1)).squeeze(-1)
    return NeedleBatch(items, labels, position, target)


class NeedleRetriever(nn.Module):
    """A one-query retriever: a_j = softmax_j(q·x_j / √d), reading the one-hot labels e_{y_j}.

    The learned query q (d) scores the items; the values are the labels' one-hot vectors,
    so the soft read r = Σ_j a_j e_{y_j} is a distribution over the classes whose entry
    r_{y*} is the expected reward Σ_j a_j 1[y_j = y*] of hard attention. ``soft`` and
    ``hard`` call :func:`attnbook.attention.attention` and :func:`attnbook.hard.hard_attention`.
    q starts at ``init`` · N(0, I) (drawn from torch's global generator).
    Cost O(B·L·(d + classes)) per call. Explained in §3.1.
    """

    def __init__(self, dim, classes, *, init=0.1):
        super().__init__()
        self.dim = _checks.positive(dim, "dim", integer=True)
        self.classes = _checks.positive(classes, "classes", integer=True)
        self.query = nn.Parameter(torch.randn(dim) * init)

    def _check(self, batch):
        if not isinstance(batch, NeedleBatch):
            raise TypeError(f"batch must be a NeedleBatch (from needle_batch), got {type(batch).__name__}")
        if batch.items.shape[-1] != self.dim:
            raise ValueError(f"items have width {batch.items.shape[-1]} but the retriever has "
                             f"dim={self.dim}: items of shape {tuple(batch.items.shape)}")
        if batch.labels.numel() and int(batch.labels.max()) >= self.classes:
            raise ValueError(f"labels go up to {int(batch.labels.max())} but the retriever has "
                             f"classes={self.classes}")

    def _inputs(self, batch):
        self._check(batch)
        query = self.query.to(batch.items.dtype).expand(*batch.items.shape[:-2], 1, self.dim)
        values = F.one_hot(batch.labels, self.classes).to(batch.items.dtype)
        return query, batch.items, values

    def soft(self, batch):
        """Soft attention: read r (..., classes) = Σ_j a_j e_{y_j}, weights a (..., L)."""
        read, weights = attention(*self._inputs(batch))
        return read.squeeze(-2), weights.squeeze(-2)

    def hard(self, batch, *, generator=None):
        """Hard attention: one j ~ a per sequence -> read e_{y_j} (..., classes), weights a
        (..., L), the sampled position j (...,) and its log-probability log a_j (...,)."""
        read, weights, index, log_prob = hard_attention(*self._inputs(batch), generator=generator)
        return read.squeeze(-2), weights.squeeze(-2), index[..., 0, 0], log_prob.squeeze(-1)


def soft_loss(model, batch):
    """Cross-entropy of the soft read: −mean log r_{y*} (r_{y*} clamped to ≥ 1e-12). §3.1."""
    read, _ = model.soft(batch)
    picked = read.gather(-1, batch.target.unsqueeze(-1)).squeeze(-1)
    return -picked.clamp_min(1e-12).log().mean()


def hard_reward(read, target):
    """R = 1[the label read is y*]: read (..., classes) one-hot, target (...,) -> (...,) float."""
    return read.gather(-1, target.unsqueeze(-1)).squeeze(-1)


def accuracy(model, batch, *, mode="soft", generator=None):
    """Fraction of sequences answered right: "soft" (argmax of r), "sample" (the label read
    at one sampled position) or "greedy" (the label at argmax_j a_j). §3.1."""
    with torch.no_grad():
        if mode == "soft":
            guess = model.soft(batch)[0].argmax(-1)
        elif mode == "sample":
            guess = model.hard(batch, generator=generator)[0].argmax(-1)
        elif mode == "greedy":
            top = model.soft(batch)[1].argmax(-1, keepdim=True)
            guess = batch.labels.gather(-1, top).squeeze(-1)
        else:
            raise ValueError(f"mode must be 'soft', 'sample' or 'greedy', got {mode!r}")
        return (guess == batch.target).double().mean().item()


def gradient_estimates(model, batch, *, estimator, baseline=0.0, generator=None):
    """Estimates of g = ∇_q E[R], the gradient of the expected reward, one per draw.

    E[R] = (1/B) Σ_b Σ_j a_bj R_bj with R_bj = 1[y_bj = y*_b]. "exact" differentiates this
    sum through soft attention: the gradient every soft model follows (its only noise is
    which sequences were drawn). "reinforce" samples one j_b ~ a_b per sequence and returns
    (1/B) Σ_b (R_{b j_b} − b) ∇_q log a_{b j_b} (the gradient of −reinforce_loss), which is
    unbiased for any ``baseline`` b fixed before the draw.
    batch: a NeedleBatch of shape (N, B, L, d), N draws of B sequences -> (N, d): the
    estimates of the N draws, all at the model's current q. Each draw gets its own copy of
    q, so one backward pass gives all N. Cost O(N·B·L·d). Explained in §3.1.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if not isinstance(batch, NeedleBatch) or batch.items.dim() != 4:
        shape = tuple(batch.items.shape) if isinstance(batch, NeedleBatch) else type(batch).__name__
        raise ValueError(f"batch must be a NeedleBatch of items (N, B, L, d) (N draws of B "
                         f"sequences), got {shape}")
    if isinstance(baseline, bool) or not isinstance(baseline, numbers.Real) or not math.isfinite(baseline):
        raise TypeError(f"baseline must be a finite number, got {baseline!r}")
    query, items, values = model._inputs(batch)
    copies = model.query.detach().to(items.dtype).repeat(items.shape[0], 1).requires_grad_()
    query = copies[:, None, None, :].expand_as(query)  # (N, B, 1, d): one q per draw
    if estimator == "exact":
        read, _ = attention(query, items, values)
        objective = hard_reward(read.squeeze(-2), batch.target).mean(-1)  # Σ_j a_j R_j, (N,)
    else:
        read, _, _, log_prob = hard_attention(query, items, values, generator=generator)
        reward = hard_reward(read.squeeze(-2), batch.target)
        objective = ((reward - baseline) * log_prob.squeeze(-1)).mean(-1)  # surrogate, (N,)
    grad, = torch.autograd.grad(objective.sum(), copies)
    return grad


def gradient_variance(estimates):
    """Total variance of gradient estimates: (1/N) Σ_n ‖g_n − ḡ‖², the trace of their
    covariance. estimates (N, d) with N ≥ 2 -> a float. Cost O(N·d). §3.1."""
    _checks.tensor(estimates, "estimates", min_dim=2)
    if estimates.dim() != 2 or estimates.shape[0] < 2:
        raise ValueError(f"estimates must have shape (N, d) with N ≥ 2, got {tuple(estimates.shape)}")
    centred = estimates - estimates.mean(0)
    return centred.pow(2).sum(-1).mean().item()


class EstimatorStatistics(NamedTuple):
    """Exact statistics of the one-sequence gradient estimators (see :func:`estimator_statistics`)."""

    expected_reward: float  # E[R] = (1/N) Σ_n Σ_j a_nj R_nj
    mean: torch.Tensor  # (d,) E[g]: the gradient of the expected reward, averaged over sequences
    exact_variance: float  # E‖g_exact − E g‖²: noise from the choice of sequence only
    reinforce_variance: float  # E‖g_reinforce − E g‖²: sequence and sampled position
    exact_positive: torch.Tensor  # (d,) P(g_exact,i > 0) over sequences
    exact_negative: torch.Tensor  # (d,) P(g_exact,i < 0)
    reinforce_positive: torch.Tensor  # (d,) P(g_reinforce,i > 0) over sequences and positions
    reinforce_negative: torch.Tensor  # (d,) P(g_reinforce,i < 0)


def estimator_statistics(model, batch, *, baseline=0.0):
    """Variance of the exact and the one-sample REINFORCE gradient, by enumerating positions.

    For a sequence x, ∇_q log a_j = u_j = (x_j − Σ_i a_i x_i)/√d (the retriever's scores are
    q·x_j/√d), the exact gradient is m(x) = Σ_j a_j R_j u_j and one REINFORCE sample gives
    (R_j − b) u_j with probability a_j. Over the N sequences of ``batch`` (items (N, L, d)):
    mean = (1/N) Σ_n m(x_n); exact_variance = (1/N) Σ_n ‖m(x_n) − mean‖²;
    reinforce_variance = (1/N) Σ_n Σ_j a_nj (R_nj − b)² ‖u_nj‖² − ‖mean‖²; and the
    fractions of estimates whose coordinate i is positive or negative (the rest are 0).
    Every position is weighed by its probability instead of being sampled, so a rare
    position (the needle, early on) costs no extra noise. A batch of B sequences divides
    both variances by B. Returns :class:`EstimatorStatistics`. Cost O(N·L·d). §3.1.
    """
    if not isinstance(batch, NeedleBatch) or batch.items.dim() != 3:
        shape = tuple(batch.items.shape) if isinstance(batch, NeedleBatch) else type(batch).__name__
        raise ValueError(f"batch must be a NeedleBatch of items (N, L, d), got {shape}")
    if isinstance(baseline, bool) or not isinstance(baseline, numbers.Real) or not math.isfinite(baseline):
        raise TypeError(f"baseline must be a finite number, got {baseline!r}")
    model._check(batch)
    with torch.no_grad():
        items, scale = batch.items, 1.0 / math.sqrt(batch.items.shape[-1])
        a = torch.softmax(items @ model.query.to(items.dtype) * scale, -1)  # (N, L)
        reward = (batch.labels == batch.target.unsqueeze(-1)).to(a.dtype)  # R_nj
        u = (items - (a.unsqueeze(-1) * items).sum(-2, keepdim=True)) * scale  # ∇ log a_nj
        exact = torch.einsum("nl,nld->nd", a * reward, u)  # m(x_n)
        mean = exact.mean(0)
        advantage = reward - baseline
        second = (a * advantage ** 2 * u.pow(2).sum(-1)).sum(-1).mean()
        sign = torch.sign(u) * torch.sign(advantage).unsqueeze(-1)  # sign of (R − b) u, (N, L, d)
        return EstimatorStatistics(
            expected_reward=(a * reward).sum(-1).mean().item(),
            mean=mean,
            exact_variance=(exact - mean).pow(2).sum(-1).mean().item(),
            reinforce_variance=(second - mean.pow(2).sum()).item(),
            exact_positive=(exact > 0).to(a.dtype).mean(0),
            exact_negative=(exact < 0).to(a.dtype).mean(0),
            reinforce_positive=(a.unsqueeze(-1) * (sign > 0)).sum((0, 1)) / len(a),
            reinforce_negative=(a.unsqueeze(-1) * (sign < 0)).sum((0, 1)) / len(a),
        )


# ---------------------------------------------------------------- local-p on its window only

def windowed_local_attention(query, key, value, centers, window, *, gaussian=True, scale=None):
    """Luong's local attention on the window only: keys s with |s − p_i| ≤ D, s in 0..Lk−1.

    a_i(s) = softmax_{s in window}(q_i·k_s·scale) · exp(−(s − p_i)² / (2σ²)), σ = D/2 (local-p,
    ``gaussian=True``; without the Gaussian it is local-m, rows summing to 1). Only the
    K = 2D + 1 candidate keys ⌊p_i⌋ − D … ⌊p_i⌋ + D of each query are gathered.
    query (..., Lq, d), key (..., Lk, d), value (..., Lk, d_v), centers p (..., Lq) real,
    window D ≥ 1 -> output (..., Lq, d_v), weights (..., Lq, K) and their key positions s
    (..., Lq, K) (weights are 0 where s is outside the window or the sequence;
    :func:`local_weights_dense` spreads them to (..., Lq, Lk)). The Gaussian carries the
    gradient to p. With scale=1 and p from :class:`attnbook.rnn.LuongLocalAttention`
    (score="dot") it gives that module's weights. scale defaults to 1/√d.
    Cost O(Lq·K·(d + d_v)) time and memory instead of O(Lq·Lk·d). Explained in §3.1.
    """
    check_qkv(query, key, value)
    window = _checks.positive(window, "window", integer=True)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else _checks.positive(scale, "scale")
    _checks.tensor(centers, "centers", min_dim=0)
    if tuple(centers.shape) != tuple(query.shape[:-1]):
        raise ValueError(f"centers has shape {tuple(centers.shape)} but must be (..., Lq) = "
                         f"{tuple(query.shape[:-1])} for query of shape {tuple(query.shape)}")
    if not torch.isfinite(centers).all():
        raise ValueError("centers must be finite")
    lk = key.shape[-2]
    offsets = torch.arange(-window, window + 1, device=query.device)
    positions = centers.detach().floor().long().unsqueeze(-1) + offsets  # s (..., Lq, K)
    distance = positions.to(query.dtype) - centers.unsqueeze(-1)  # s − p_i, differentiable in p
    allowed = (distance.detach().abs() <= window) & (positions >= 0) & (positions < lk)
    index = positions.clamp(0, lk - 1).unsqueeze(-1)
    near_keys = torch.take_along_dim(key.unsqueeze(-3), index, dim=-2)  # (..., Lq, K, d)
    near_values = torch.take_along_dim(value.unsqueeze(-3), index, dim=-2)
    scores = torch.einsum("...qd,...qkd->...qk", query, near_keys) * scale
    weights = masked_softmax(scores, allowed)
    if gaussian:
        sigma = window / 2
        weights = weights * torch.exp(-distance ** 2 / (2 * sigma ** 2))
    output = torch.einsum("...qk,...qkd->...qd", weights, near_values)
    return output, weights, positions


def local_weights_dense(weights, positions, length):
    """Windowed weights (..., Lq, K) at key positions (..., Lq, K) -> dense (..., Lq, length),
    dropping positions outside 0..length−1. Cost O(Lq·length). §3.1."""
    _checks.tensor(weights, "weights", min_dim=1)
    _checks.positive(length, "length", integer=True)
    if not isinstance(positions, torch.Tensor) or positions.shape != weights.shape:
        raise ValueError(f"positions must be a tensor of the weights' shape {tuple(weights.shape)}, "
                         f"got {tuple(getattr(positions, 'shape', ()))}")
    inside = (positions >= 0) & (positions < length)
    dense = weights.new_zeros(*weights.shape[:-1], length)
    return dense.scatter_add(-1, positions.clamp(0, length - 1), weights * inside)
