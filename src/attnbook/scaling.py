"""Why scaled dot-product attention divides by √d_k, measured on random queries and keys (§2.2).

For a query q and a key k whose d_k components are independent with mean 0 and variance 1,
the logit z = q·k = Σ_i q_i k_i is a sum of d_k independent terms of variance 1, so
Var(z) = d_k. Without the factor 1/√d_k the logits spread out as d_k grows, the softmax
saturates towards a one-hot vector, and the gradient that flows back through it vanishes.
The functions here measure the three effects. Each draws standard-normal samples from
``generator`` (PyTorch's global generator when it is None), so that a study seeded once is
reproducible. Samples are drawn in float32 (fast) and the scores are promoted to float64
before the softmax, so that the tiny gradients of a saturated softmax do not underflow.
"""
import torch

from . import _checks
from .scores import dot_scores, scaled_dot_scores
from .softmax import entropy, masked_softmax

DIMS = (4, 16, 64, 256, 1024)
"""The widths d_k of the study in §2.2: each four times the one before."""

GRADIENT_WRT = ("scores", "query")


def _check_flag(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


def _check_sizes(d_k, n_keys, n_samples):
    _checks.positive(d_k, "d_k", integer=True)
    _checks.positive(n_keys, "n_keys", integer=True)
    _checks.positive(n_samples, "n_samples", integer=True)


def random_logits(d_k, n_keys=64, n_samples=128, generator=None, *, scaled=False):
    """Logits z_sj = q_s · k_sj (times 1/√d_k when ``scaled``), with q, k ~ N(0, I_{d_k}).

    Each of the ``n_samples`` queries q_s gets its own ``n_keys`` fresh keys k_sj, so the
    rows are independent. Returns (n_samples, n_keys), float64 (computed in float32). The
    samples are drawn before scaling: one seed gives the same q and k, scaled or not.
    Cost O(n_samples·n_keys·d_k) time and memory. Explained in §2.2.
    """
    _check_sizes(d_k, n_keys, n_samples)
    _checks.generator(generator)
    _check_flag(scaled, "scaled")
    q, k = _draw(d_k, n_keys, n_samples, generator)
    return _scores(q, k, scaled)


def _draw(d_k, n_keys, n_samples, generator):
    q = torch.randn(n_samples, 1, d_k, generator=generator)
    k = torch.randn(n_samples, n_keys, d_k, generator=generator)
    return q, k


def _scores(q, k, scaled):
    """(n, 1, d) and (n, L, d) -> float64 scores (n, L)."""
    return (scaled_dot_scores(q, k) if scaled else dot_scores(q, k)).squeeze(-2).double()


def logit_variance(d_k, n_samples=4096, generator=None, *, scaled=False):
    """The sample variance of z = q·k (or q·k/√d_k when ``scaled``) over n_samples pairs.

    Theory: Var(q·k) = d_k and Var(q·k/√d_k) = 1 for q, k ~ N(0, I_{d_k}).
    d_k and n_samples (>= 2) are positive ints; returns a float.
    Cost O(n_samples·d_k) time and memory. Explained in §2.2.
    """
    _check_sizes(d_k, 1, n_samples)
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2 to estimate a variance, got {n_samples}")
    z = random_logits(d_k, 1, n_samples, generator, scaled=scaled)
    return float(z.var())


def softmax_saturation(d_k, n_keys=64, n_samples=128, generator=None, *, scaled=False):
    """How peaked softmax(z) is over n_keys random logits z_j = q·k_j (/√d_k when scaled).

    Returns {"max_weight": mean over queries of max_j a_j (1/n_keys = uniform, 1 = one-hot),
    "entropy": mean of H(a) = -Σ_j a_j log a_j in nats (log n_keys = uniform, 0 = one-hot)}.
    Cost O(n_samples·n_keys·d_k) time and memory. Explained in §2.2.
    """
    weights = masked_softmax(random_logits(d_k, n_keys, n_samples, generator, scaled=scaled))
    return {"max_weight": float(weights.amax(-1).mean()),
            "entropy": float(entropy(weights).mean())}


def softmax_gradient(scores, upstream):
    """∂L/∂s for L = Σ_j a_j u_j and a = softmax(s): ∂L/∂s_j = a_j (u_j − Σ_l a_l u_l).

    scores s (..., L) and upstream gradient u = ∂L/∂a (..., L) -> (..., L). When a is
    one-hot every entry vanishes, whatever u: a saturated softmax passes no gradient.
    Cost O(numel) time and memory. Explained in §2.2.
    """
    _checks.tensor(scores, "scores")
    _checks.tensor(upstream, "upstream")
    if scores.shape != upstream.shape:
        raise ValueError(f"upstream has shape {tuple(upstream.shape)} but scores have "
                         f"{tuple(scores.shape)}; they must be equal")
    a = torch.softmax(scores, dim=-1)
    return a * (upstream - (a * upstream).sum(-1, keepdim=True))


def score_gradient_norm(d_k, n_keys=64, n_samples=128, generator=None, *, scaled=False,
                        wrt="scores"):
    """Size of the gradient that reaches the scores (or the query) through the softmax.

    Loss L = Σ_j a_j u_j with a = softmax(s), s_j = q·k_j (/√d_k when scaled) and a random
    upstream gradient u ~ N(0, I) (u_j = g·v_j for an output o = Σ_j a_j v_j and L = g·o).
    ``wrt="scores"``: the norms ‖∂L/∂s‖₂ of the n_samples queries; ``wrt="query"``:
    ‖∂L/∂q‖₂, where ∂L/∂q = c Σ_j (∂L/∂s_j) k_j with c = 1/√d_k (scaled) or 1; by autograd.
    Returns {"mean": mean norm, "median": median norm}: a saturated softmax makes the typical
    (median) gradient vanish while rare near-ties between the two best keys keep the mean up.
    Cost O(n_samples·n_keys·d_k) time and memory. Explained in §2.2.
    """
    _check_sizes(d_k, n_keys, n_samples)
    _checks.generator(generator)
    _check_flag(scaled, "scaled")
    if wrt not in GRADIENT_WRT:
        raise ValueError(f"wrt must be one of {GRADIENT_WRT}, got {wrt!r}")
    q, k = _draw(d_k, n_keys, n_samples, generator)
    u = torch.randn(n_samples, n_keys, generator=generator, dtype=torch.float64)
    q.requires_grad_(True)
    scores = _scores(q, k, scaled)
    loss = (torch.softmax(scores, dim=-1) * u).sum()
    grad = torch.autograd.grad(loss, scores if wrt == "scores" else q)[0]
    norms = grad.reshape(n_samples, -1).double().norm(dim=-1)
    return {"mean": float(norms.mean()), "median": float(norms.median())}


def scaling_study(dims=DIMS, n_keys=64, n_samples=128, seed=0, *, variance_samples=4096):
    """Measure the three effects of the 1/√d_k scale for each width d_k in ``dims``.

    Returns a dict of lists, one entry per d_k: "d_k"; "variance_unscaled" and
    "variance_scaled" (:func:`logit_variance`, ``variance_samples`` pairs); "max_weight_*"
    and "entropy_*" (:func:`softmax_saturation`); "grad_mean_*" and "grad_median_*", the
    mean and median of ‖∂L/∂s‖ (:func:`score_gradient_norm`), for * in unscaled, scaled.
    Each measurement reseeds a generator with ``seed``, so scaled and unscaled see the same
    q and k and the study is deterministic.
    Cost O(Σ_d n_samples·n_keys·d) time, O(n_samples·n_keys·max d) memory.
    Explained in §2.2.
    """
    if not isinstance(dims, (list, tuple, range)):
        raise TypeError(f"dims must be a list or tuple of ints, got {type(dims).__name__}")
    dims = list(dims)
    if not dims:
        raise ValueError("dims must hold at least one width d_k, got an empty sequence")
    for d in dims:
        _checks.positive(d, "dims", integer=True)
    _check_sizes(1, n_keys, n_samples)
    _checks.positive(variance_samples, "variance_samples", integer=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")

    def gen():
        return torch.Generator().manual_seed(seed)

    study = {"d_k": dims}
    for tag, scaled in (("unscaled", False), ("scaled", True)):
        variance, max_weight, ent, grad_mean, grad_median = [], [], [], [], []
        for d in dims:
            variance.append(logit_variance(d, variance_samples, gen(), scaled=scaled))
            sat = softmax_saturation(d, n_keys, n_samples, gen(), scaled=scaled)
            max_weight.append(sat["max_weight"])
            ent.append(sat["entropy"])
            grad = score_gradient_norm(d, n_keys, n_samples, gen(), scaled=scaled)
            grad_mean.append(grad["mean"])
            grad_median.append(grad["median"])
        study.update({f"variance_{tag}": variance, f"max_weight_{tag}": max_weight,
                      f"entropy_{tag}": ent, f"grad_mean_{tag}": grad_mean,
                      f"grad_median_{tag}": grad_median})
    return study


__all__ = ["DIMS", "logit_variance", "random_logits", "scaling_study",
           "score_gradient_norm", "softmax_gradient", "softmax_saturation"]
