"""How good are the efficient approximations of attention, and from which length do they pay off? (§5.2)

The kernels live elsewhere (:mod:`attnbook.lowrank`: Nyström, Linformer; :mod:`attnbook.linear`:
linear attention, the Performer); they return outputs only. This module measures them:

* :func:`synthetic_qk`: queries and keys whose attention matrix is nearly random, clustered
  (low rank) or local (a band, high rank).
* :func:`implied_weights`: the (Lq, Lk) matrix W with output = W V that each approximation
  applies without ever forming it, so that it can be compared with the exact weights;
  :func:`linformer_projection` gives the projections it uses.
* :func:`relative_error`, :func:`rank_floor`, :func:`error_curve`, :func:`rank_grid`: errors
  against exact attention, the Eckart–Young floor that no rank-r matrix can beat, and the
  effective rank of attention over head widths and temperatures.
* :class:`Crossover`, :func:`crossover_length`, :func:`find_crossovers`, :func:`describe`: the
  sequence length from which a kernel beats SDPA, found in the measurements of
  :func:`attnbook.bench.run` (interpolated between the measured lengths), not assumed.

References (book/references.bib): ``xiong2021nystromformer``, ``wang2020linformer``,
``katharopoulos2020transformers``, ``choromanski2021rethinking``, ``tay2022efficient``.
"""
import dataclasses
import math
import numbers

import torch

from . import _checks
from .attention import check_qkv
from .bench import crossover, growth_exponent
from .linear import elu_plus_one, favor_features, orthogonal_random_features
from .lowrank import attention_singular_values, effective_rank, iterative_pinv, landmark_means
from .softmax import masked_softmax

KINDS = ("random", "clustered", "local")
METHODS = ("exact", "nystrom", "linformer", "linformer_random", "performer", "linear")
SIZED = ("nystrom", "linformer", "linformer_random", "performer")  # methods with a size m
PROJECTIONS = ("pool", "random")
STATUSES = ("between", "below", "beyond", "never")


def _generator(generator):
    _checks.generator(generator)
    return generator


def _dtype(dtype):
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


# ---------------------------------------------------------------- inputs with known structure

def synthetic_qk(kind, length, dim, *, clusters=4, noise=0.5, contiguous=False, generator=None,
                 dtype=torch.float64):
    """Queries and keys (length, dim) whose attention matrix has a known structure.

    * "random": q_i, k_j ~ N(0, I_d), independent. With scale 1/√d the scores are ~N(0, 1):
      the weights are a uniform average plus noise.
    * "clustered": each token belongs to one of ``clusters`` groups, drawn at random (sorted,
      so that each group is one run of neighbouring tokens, when ``contiguous``);
      q_i = μ_c(i) + noise·ε_i, k_i = μ_c(i) + noise·ε'_i with centres μ_c ~ N(0, I_d).
      A query attends to the keys of its own group: nearly ``clusters`` distinct rows, low rank.
    * "local": q_i = k_i = √(d/F)·(cos θ_i1, sin θ_i1, …, cos θ_iF, sin θ_iF), θ_if = 2π f i / L,
      F = ⌊d/2⌋ (a zero last coordinate when d is odd). Then q_i·k_j = (d/F) Σ_f cos(2π f (i − j)/L),
      a kernel peaked at i = j (circularly): each token attends to its neighbours, a band of
      high rank. Deterministic: ``generator`` is not used.

    Every kind has E‖q‖² ≈ d (clustered: d(1 + noise²)), like standard-normal vectors.
    Returns (query, key). Cost O(length·dim). Explained in §5.2.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    _checks.positive(length, "length", integer=True)
    _checks.positive(dim, "dim", integer=True)
    _generator(generator)
    _dtype(dtype)
    if kind == "random":
        query = torch.randn(length, dim, generator=generator, dtype=dtype)
        return query, torch.randn(length, dim, generator=generator, dtype=dtype)
    if kind == "clustered":
        _checks.positive(clusters, "clusters", integer=True)
        if (isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not math.isfinite(noise)
                or noise < 0):
            raise ValueError(f"noise must be a finite number ≥ 0, got {noise!r}")
        centres = torch.randn(clusters, dim, generator=generator, dtype=dtype)
        labels = torch.randint(clusters, (length,), generator=generator)
        if contiguous:
            labels = labels.sort().values
        query = centres[labels] + noise * torch.randn(length, dim, generator=generator, dtype=dtype)
        return query, centres[labels] + noise * torch.randn(length, dim, generator=generator, dtype=dtype)
    pairs = dim // 2
    x = torch.zeros(length, dim, dtype=dtype)
    if pairs:
        angles = (2 * math.pi / length) * torch.outer(torch.arange(length, dtype=dtype),
                                                      torch.arange(1, pairs + 1, dtype=dtype))
        x[:, 0:2 * pairs:2], x[:, 1:2 * pairs:2] = angles.cos(), angles.sin()
        x = x * math.sqrt(dim / pairs)
    return x, x.clone()


# ---------------------------------------------------------------- the weights an approximation applies

def linformer_projection(length, k, *, kind="pool", generator=None, dtype=torch.float64, device=None):
    """A Linformer projection E (k, length) that maps the keys (and values) to k positions.

    "pool": E_sj = 1/|segment s| for j in the s-th of k contiguous segments (the segment means
    of :func:`attnbook.lowrank.landmark_means`; k = length gives E = I, exact attention).
    "random": E_sj ~ N(0, 1/k), the initialisation of a Linformer layer before training
    (:class:`attnbook.lowrank.LinformerSelfAttention`). Cost O(k·length). Explained in §5.2.
    """
    if kind not in PROJECTIONS:
        raise ValueError(f"kind must be one of {PROJECTIONS}, got {kind!r}")
    _checks.positive(length, "length", integer=True)
    _checks.positive(k, "k", integer=True)
    if k > length:
        raise ValueError(f"k={k} must be ≤ length={length}: the projection compresses the sequence")
    _generator(generator)
    _dtype(dtype)
    if kind == "pool":
        return landmark_means(torch.eye(length, dtype=dtype, device=device), k)
    source = generator.device if generator is not None else torch.device("cpu")
    e = torch.randn(k, length, generator=generator, dtype=dtype, device=source) / math.sqrt(k)
    return e.to(device=device)


def _scale(scale, d):
    return 1.0 / math.sqrt(d) if scale is None else _checks.positive(scale, "scale")


def _normalise_rows(similarity):
    """s_ij / Σ_j s_ij: the weights of attention with a positive similarity s (a feature map)."""
    return similarity / similarity.sum(-1, keepdim=True)


def implied_weights(method, query, key, size=None, *, scale=None, generator=None):
    """The (…, Lq, Lk) matrix W that ``method`` applies to the values: its output is W V.

    * "exact": softmax(Q Kᵀ·s), s = ``scale`` (1/√d by default).
    * "nystrom": F A⁺ B with m = ``size`` landmarks (segment means), F = softmax(Q K̃ᵀ·s),
      A = softmax(Q̃ K̃ᵀ·s), B = softmax(Q̃ Kᵀ·s), A⁺ by 6 steps of :func:`iterative_pinv`,
      as :func:`attnbook.lowrank.nystrom_attention`.
    * "linformer", "linformer_random": softmax(Q (E K)ᵀ·s) E with E (k = ``size``, Lk) from
      :func:`linformer_projection` ("pool" or "random", drawn from ``generator``), shared by
      keys and values, as :func:`attnbook.lowrank.linformer_attention` with proj_v = None.
    * "performer": D⁻¹ φ(Q) φ(K)ᵀ, φ = :func:`attnbook.linear.favor_features` with m = ``size``
      orthogonal random features drawn from ``generator``, D = diag(φ(Q) φ(K)ᵀ 1), as
      :func:`attnbook.linear.performer_attention` (the same generator gives the same features).
    * "linear": D⁻¹ φ(Q) φ(K)ᵀ with φ(x) = elu(x) + 1 (no scale, no size), as
      :func:`attnbook.linear.linear_attention`.

    Every W except the exact one has rank ≤ its size (≤ d for "linear"), so its error is at
    least :func:`rank_floor`. query (…, Lq, d), key (…, Lk, d) -> (…, Lq, Lk).
    Cost O(Lq·Lk·(d + m)) time and O(Lq·Lk) memory: meant for measuring, not for speed
    (the kernels never form W). Explained in §5.2.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_qkv(query, key, key)
    _generator(generator)
    lq, lk, d = query.shape[-2], key.shape[-2], query.shape[-1]
    if method in SIZED:
        _checks.positive(size, "size", integer=True)
    elif size is not None:
        raise ValueError(f"method {method!r} has no size to choose, got size={size!r}")
    if method == "linear":
        if scale is not None:
            raise ValueError("linear attention (elu + 1 features) has no scale; got scale="
                             f"{scale!r}")
        return _normalise_rows(elu_plus_one(query) @ elu_plus_one(key).transpose(-2, -1))
    s = _scale(scale, d)
    if method == "exact":
        return masked_softmax(query @ key.transpose(-2, -1) * s)
    if method == "nystrom":
        if size > min(lq, lk):
            raise ValueError(f"size={size} landmarks must be ≤ min(Lq, Lk) = {min(lq, lk)} for query "
                             f"{tuple(query.shape)} and key {tuple(key.shape)}")
        q_marks, k_marks = landmark_means(query, size), landmark_means(key, size)
        f = masked_softmax(query @ k_marks.transpose(-2, -1) * s)
        a = masked_softmax(q_marks @ k_marks.transpose(-2, -1) * s)
        b = masked_softmax(q_marks @ key.transpose(-2, -1) * s)
        return f @ iterative_pinv(a, 6) @ b
    if method in ("linformer", "linformer_random"):
        if size > lk:
            raise ValueError(f"size={size} must be ≤ Lk={lk} for key {tuple(key.shape)}: "
                             "the projection compresses the sequence")
        e = linformer_projection(lk, size, kind="pool" if method == "linformer" else "random",
                                 generator=generator, dtype=key.dtype, device=key.device)
        return masked_softmax(query @ (e @ key).transpose(-2, -1) * s) @ e
    projection = orthogonal_random_features(d, size, generator=generator, dtype=query.dtype,
                                            device=query.device)
    phi_q = favor_features(query, projection, scale=s, stabiliser="row")
    phi_k = favor_features(key, projection, scale=s, stabiliser="sequence")
    return _normalise_rows(phi_q @ phi_k.transpose(-2, -1))


# ---------------------------------------------------------------- errors and spectra

def relative_error(approx, exact):
    """‖approx − exact‖_F / ‖exact‖_F over the last two dimensions: (…, m, n) -> (…,).

    0 for a perfect approximation, 1 for returning zeros. Cost O(m·n). Explained in §5.2.
    """
    _checks.tensor(approx, "approx", min_dim=2)
    _checks.tensor(exact, "exact", min_dim=2)
    _checks.same_kind({"approx": approx, "exact": exact})
    if approx.shape != exact.shape:
        raise ValueError(f"approx has shape {tuple(approx.shape)} but exact has {tuple(exact.shape)}")
    norm = torch.linalg.matrix_norm(exact)
    if (norm == 0).any():
        raise ValueError("exact has a zero matrix: the relative error is undefined")
    return torch.linalg.matrix_norm(approx - exact) / norm


def rank_floor(sv, rank):
    """√(Σ_{i>r} σ_i² / Σ_i σ_i²): the smallest relative Frobenius error of any matrix of rank ≤ r.

    By the Eckart–Young theorem the best rank-r approximation keeps the r largest singular
    values; no approximation whose matrix has rank ≤ r (Nyström with r landmarks, Linformer
    with k = r, a feature map with r features) can do better. sv (…, n) ≥ 0 -> (…,);
    rank 0 gives 1, rank ≥ n gives 0. Cost O(n log n). Explained in §5.2.
    """
    _checks.tensor(sv, "sv", min_dim=1)
    if not (sv >= 0).all():
        raise ValueError(f"sv must hold singular values ≥ 0 (and no NaN), got min {sv.min().item()}")
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 0:
        raise ValueError(f"rank must be an integer ≥ 0, got {rank!r}")
    power = sv.sort(dim=-1, descending=True).values ** 2
    total = power.sum(-1)
    if (total == 0).any():
        raise ValueError("sv is all zero: the relative error is undefined")
    return (power[..., rank:].sum(-1) / total).sqrt()


def error_curve(method, query, key, value, sizes, *, scale=None, draws=1, seed=0):
    """Relative errors of ``method`` against exact attention for each size in ``sizes``.

    For each size m, the errors ‖W_m − A‖_F/‖A‖_F of the weights (:func:`implied_weights`)
    and ‖W_m V − A V‖_F/‖A V‖_F of the outputs, averaged over ``draws`` random draws
    (generators seeded seed, seed + 1, …; draws only matter for the random methods).
    query (…, Lq, d), key (…, Lk, d), value (…, Lk, dv); sizes: increasing positive ints.
    Returns {"sizes": [...], "weights": [...], "output": [...]} (floats; batch dimensions
    averaged). Cost O(len(sizes)·draws·Lq·Lk·(d + m + dv)). Explained in §5.2.
    """
    if method not in SIZED:
        raise ValueError(f"method must be one of {SIZED} (the methods with a size), got {method!r}")
    check_qkv(query, key, value)
    sizes = list(sizes)
    if not sizes:
        raise ValueError("sizes must not be empty")
    for m in sizes:
        _checks.positive(m, "sizes[i]", integer=True)
    _checks.positive(draws, "draws", integer=True)
    exact = implied_weights("exact", query, key, scale=scale)
    exact_out = exact @ value
    curve = {"sizes": sizes, "weights": [], "output": []}
    for m in sizes:
        w_err, o_err = 0.0, 0.0
        for i in range(draws):
            weights = implied_weights(method, query, key, m, scale=scale,
                                      generator=torch.Generator(device=query.device).manual_seed(seed + i))
            w_err += relative_error(weights, exact).mean().item()
            o_err += relative_error(weights @ value, exact_out).mean().item()
        curve["weights"].append(w_err / draws)
        curve["output"].append(o_err / draws)
    return curve


def rank_grid(length, dims, betas, *, energy=0.9, seed=0, dtype=torch.float64):
    """Effective rank of softmax(β Q Kᵀ/√d) for random q, k ~ N(0, I_d): one per (d, β).

    For each width d in ``dims`` one pair of (length, d) Gaussian queries and keys is drawn
    (generator seeded seed + d) and, for each inverse temperature β in ``betas``, the rank
    that keeps ``energy`` of Σσ² (:func:`attnbook.lowrank.effective_rank`) is computed.
    Returns an int64 tensor (len(dims), len(betas)). Cost O(len(dims)·len(betas)·length³).
    Explained in §5.2.
    """
    _checks.positive(length, "length", integer=True)
    dims, betas = list(dims), list(betas)
    if not dims or not betas:
        raise ValueError(f"dims and betas must not be empty, got {dims} and {betas}")
    for d in dims:
        _checks.positive(d, "dims[i]", integer=True)
    for beta in betas:
        _checks.positive(beta, "betas[i]")
    grid = torch.empty(len(dims), len(betas), dtype=torch.int64)
    for i, d in enumerate(dims):
        query, key = synthetic_qk("random", length, d, dtype=dtype,
                                  generator=torch.Generator().manual_seed(seed + d))
        for j, beta in enumerate(betas):
            sv = attention_singular_values(query, key, scale=beta / math.sqrt(d))
            grid[i, j] = effective_rank(sv, energy)
    return grid


# ---------------------------------------------------------------- where a kernel starts to pay off

@dataclasses.dataclass(frozen=True)
class Crossover:
    """The length n* from which a kernel is faster than the reference (time ratio < 1).

    status "between": measured slower at ``bracket[0]`` and faster from ``bracket[1]`` on;
    ``length`` is interpolated in between. "below": faster at every measured length, so
    n* ≤ ``measured[0]`` (``length`` None). "beyond": still slower at the longest length but
    the ratio is falling; ``length`` extrapolates the last points (a guess, > measured[1]).
    "never": slower at the longest length and the ratio is not falling (``length`` None).
    ``measured`` = (shortest, longest) length measured. Explained in §5.2.
    """

    length: float | None
    status: str
    bracket: tuple | None
    measured: tuple


def _check_sizes_ratios(sizes, ratios):
    sizes, ratios = list(sizes), list(ratios)
    if not sizes:
        raise ValueError("sizes must not be empty")
    if len(sizes) != len(ratios):
        raise ValueError(f"sizes has {len(sizes)} entries but ratios has {len(ratios)}")
    for n in sizes:
        _checks.positive(n, "sizes[i]")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"sizes must increase strictly, got {sizes}")
    for r in ratios:
        if r is not None:
            _checks.positive(r, "ratios[i]")
    return sizes, ratios


def crossover_length(sizes, ratios, *, tail=3):
    """Find n* where the time ratio (kernel / reference) falls below 1, from measurements.

    ``ratios[i]`` is the ratio measured at ``sizes[i]`` (None: not measured, counted as
    not faster). The crossover is bracketed by the first size from which the kernel stays
    faster (:func:`attnbook.bench.crossover`) and the size before it; in between, log r is
    interpolated linearly in log n:
    n* = exp(log n₀ + log r₀ · (log n₁ − log n₀)/(log r₀ − log r₁)).
    When the kernel is not faster at the longest length, a line fitted to log r against log n
    over the last ``tail`` measured points is extrapolated to r = 1 if it falls.
    Returns a :class:`Crossover`. Cost O(len(sizes)). Explained in §5.2.
    """
    sizes, ratios = _check_sizes_ratios(sizes, ratios)
    _checks.positive(tail, "tail", integer=True)
    measured = (sizes[0], sizes[-1])
    first = crossover(sizes, ratios)
    if first is None:
        points = [(n, r) for n, r in zip(sizes, ratios) if r is not None][-tail:]
        slope = (growth_exponent([n for n, _ in points], [r for _, r in points]) if len(points) > 1
                 else math.nan)
        if not slope < 0:
            return Crossover(None, "never", None, measured)
        xs, ys = [math.log(n) for n, _ in points], [math.log(r) for _, r in points]
        centre_x, centre_y = sum(xs) / len(xs), sum(ys) / len(ys)
        return Crossover(math.exp(centre_x - centre_y / slope), "beyond", None, measured)
    i = sizes.index(first)
    if i == 0:
        return Crossover(None, "below", None, measured)
    n0, n1, r0, r1 = sizes[i - 1], sizes[i], ratios[i - 1], ratios[i]
    if r0 is None:  # slower side not measured: only the bracket is known
        return Crossover(None, "between", (n0, n1), measured)
    t = math.log(r0) / (math.log(r0) - math.log(r1))  # in [0, 1): r0 ≥ 1 > r1
    return Crossover(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))), "between", (n0, n1),
                     measured)


def find_crossovers(result, *, ratio="time_ratio"):
    """{kernel: :class:`Crossover`} for every kernel of an :func:`attnbook.bench.run` result
    except the reference "sdpa", from its ``ratio`` ("time_ratio" or "memory_ratio"). §5.2."""
    if not isinstance(result, dict) or "sizes" not in result or "summary" not in result:
        raise TypeError("result must be the dict returned by attnbook.bench.run")
    if ratio not in ("time_ratio", "memory_ratio"):
        raise ValueError(f"ratio must be 'time_ratio' or 'memory_ratio', got {ratio!r}")
    return {name: crossover_length(result["sizes"], s[ratio])
            for name, s in result["summary"].items() if name != "sdpa"}


def _round_within(x, lo, hi):
    """x rounded to two significant digits (more if that leaves [lo, hi]), with thousands separators."""
    for significant in range(2, 20):
        digits = max(0, math.floor(math.log10(x)) - significant + 1)
        rounded = round(x / 10 ** digits) * 10 ** digits
        if lo <= rounded <= hi or digits == 0:
            return f"{rounded:,}"


def describe(found, unit="tokens"):
    """Where the crossover lies, as a phrase for the text: "at about 690 tokens (between the
    measured 512 and 1,024)", "below 256 tokens (…)", "beyond the longest length measured, …".
    ``found`` is a :class:`Crossover`. §5.2."""
    if not isinstance(found, Crossover):
        raise TypeError(f"found must be a Crossover, got {type(found).__name__}")
    shortest, longest = (f"{n:,}" for n in found.measured)
    if found.status == "between":
        lo, hi = (f"{n:,}" for n in found.bracket)
        if found.length is None:
            return f"between {lo} and {hi} {unit}"
        return f"at about {_round_within(found.length, *found.bracket)} {unit} (between the measured {lo} and {hi})"
    if found.status == "below":
        return f"below {shortest} {unit} (it was faster at every length measured)"
    if found.status == "beyond":
        return f"beyond the longest length measured, {longest} {unit} (extrapolated: about " \
               f"{_round_within(found.length, found.measured[1], math.inf)})"
    return f"beyond the longest length measured, {longest} {unit}, and its time ratio was not falling"
