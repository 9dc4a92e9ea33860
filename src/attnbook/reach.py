"""What a sparse pattern lets through and what it costs: receptive fields, key counts, LSH buckets (§3.5).

A pattern m (True = query i may read key j) is a directed graph on the positions. Stacking
layers composes it: thanks to the residual connection a position keeps what it had, so after
l layers position i holds information from j exactly when the graph has a path from j to i
of at most l steps. :func:`reach` computes that boolean matrix, :func:`reach_curve` how much
of a target it covers layer by layer, and :func:`layers_to_reach` the first layer at which it
covers the whole target (all pairs, or the lower triangle of a causal model).

What a pattern costs is counted by :func:`keys_per_query`: the number of keys each query
sees, from closed forms in O(L) time, so that a pattern can be counted at lengths where its
(L, L) mask would not fit in memory.

For Reformer's LSH attention, :func:`bucket_agreement` measures how often a vector's nearest
neighbours land in its bucket, and :func:`bucket_collision_rate` the same for random pairs.
"""
import inspect

import torch

from . import _checks


def _square_pattern(pattern, name="pattern"):
    """Check a 2-D square boolean pattern and return its length."""
    if not isinstance(pattern, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(pattern).__name__}")
    if pattern.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean tensor (True = may attend), got dtype {pattern.dtype}")
    if pattern.dim() != 2 or pattern.shape[0] != pattern.shape[1]:
        raise ValueError(f"{name} must be a square (L, L) self-attention pattern, got shape {tuple(pattern.shape)}")
    return pattern.shape[0]


def _window_count(i, length, window, dilation, causal):
    """#{m : −window ≤ m ≤ (0 if causal else window), 0 ≤ i + m·dilation < length} for each i."""
    low = torch.maximum(torch.full_like(i, -window), -(i // dilation))
    high = torch.minimum(torch.full_like(i, 0 if causal else window), (length - 1 - i) // dilation)
    return (high - low + 1).clamp_min(0)


def _strided_side(span, stride):
    """Offsets o in 0..span (one side) with o ≤ stride or o a multiple of stride."""
    return torch.minimum(span, torch.full_like(span, stride)) + 1 + (span // stride - 1).clamp_min(0)


def _global_count(i, length, window, positions):
    is_global = torch.zeros(length, dtype=torch.bool)
    is_global[positions] = True
    outside = ((positions[None, :] - i[:, None]).abs() > window).sum(-1)
    base = _window_count(i, length, window, 1, False) + outside
    return torch.where(is_global, torch.full_like(i, length), base), is_global


def keys_per_query(kind, length, **params):
    """k_i = #{j : m_ij}, the number of keys query i sees, for each i, from a closed form.

    ``kind`` and ``params`` mirror the pattern functions of :mod:`attnbook.sparse`:
    "full"; "causal"; "window" (window, dilation=1, causal=False); "block" (block);
    "global" (window, global_positions); "bigbird" (window, global_count, random_count);
    "strided" (stride, causal=True). For example a window of half-width w away from the
    ends gives k_i = 2w + 1. Returns (L,) int64; Σ_i k_i is the number of scores computed,
    and equals ``pattern.sum()`` of the matching pattern. Cost O(L) time and memory
    (O(L·|G|) with global tokens), where the pattern needs O(L²). Explained in §3.5.
    """
    length = _checks.positive(length, "length", integer=True)
    i = torch.arange(length)

    def full():
        return torch.full_like(i, length)

    def causal_():
        return i + 1

    def window(window, dilation=1, causal=False):
        _checks.count(window, "window")
        _checks.positive(dilation, "dilation", integer=True)
        return _window_count(i, length, window, dilation, causal)

    def block(block):
        _checks.positive(block, "block", integer=True)
        return torch.minimum(torch.full_like(i, block), length - (i // block) * block)

    def global_(window, global_positions):
        _checks.count(window, "window")
        positions = torch.as_tensor(list(global_positions), dtype=torch.long).unique()
        if len(positions) and (positions.min() < 0 or positions.max() >= length):
            raise ValueError(f"global_positions must lie in 0..{length - 1}, got {positions.tolist()}")
        return _global_count(i, length, window, positions)[0]

    def bigbird(window, global_count, random_count):
        _checks.count(window, "window")
        if _checks.count(global_count, "global_count") > length:
            raise ValueError(f"global_count must be at most length={length}, got {global_count}")
        counts, is_global = _global_count(i, length, window, torch.arange(global_count))
        extra = counts + _checks.count(random_count, "random_count")
        return torch.where(is_global, counts, extra.clamp_max(length))

    def strided(stride, causal=True):
        _checks.positive(stride, "stride", integer=True)
        before = _strided_side(i, stride)
        if causal:
            return before
        return before + _strided_side(length - 1 - i, stride) - 1      # o = 0 counted once

    kinds = {"full": full, "causal": causal_, "window": window, "block": block, "global": global_,
             "bigbird": bigbird, "strided": strided}
    if kind not in kinds:
        raise ValueError(f"kind must be one of {sorted(kinds)}, got {kind!r}")
    signature = inspect.signature(kinds[kind])
    try:
        signature.bind(**params)
    except TypeError as error:
        raise TypeError(f"keys_per_query({kind!r}, ...) takes the parameters {list(signature.parameters)}: "
                        f"{error}") from None
    return kinds[kind](**params)


def _target(target, length, device):
    if target is None:
        return torch.ones(length, length, dtype=torch.bool, device=device)
    if _square_pattern(target, "target") != length:
        raise ValueError(f"target has shape {tuple(target.shape)} but the pattern is ({length}, {length})")
    return target.to(device)


def _step(pattern):
    """One layer with its residual connection, M ∨ I, as a float 0/1 matrix for matmul."""
    eye = torch.eye(pattern.shape[0], dtype=torch.bool, device=pattern.device)
    return (pattern | eye).float()


def reach(pattern, layers):
    """R_l = (M ∨ I)^l in boolean arithmetic: R_l[i, j] is True when, after ``layers`` layers
    of the pattern M (with residual connections), position i holds information from j.

    pattern (L, L) bool (True = query i may read key j), layers an integer ≥ 0 -> (L, L) bool;
    R_0 is the identity. Cost O(layers·L³) time (one 0/1 matrix product per layer; exact in
    float32 for L < 2²⁴), O(L²) memory. Explained in §3.5.
    """
    length = _square_pattern(pattern)
    layers = _checks.count(layers, "layers")
    step = _step(pattern)
    reached = torch.eye(length, device=pattern.device)
    for _ in range(layers):
        reached = ((step @ reached) > 0).float()
    return reached.bool()


def reach_curve(pattern, layers, *, target=None):
    """c_l = |R_l ∧ T| / |T| for l = 1..``layers``: the fraction of the target pairs T reached.

    pattern (L, L) bool; target (L, L) bool, default all pairs (use the causal mask for a
    causal model, which can never read later positions) -> (layers,) float tensor.
    Cost O(layers·L³) time, O(L²) memory. Explained in §3.5.
    """
    length = _square_pattern(pattern)
    layers = _checks.count(layers, "layers")
    target = _target(target, length, pattern.device)
    total = max(int(target.sum()), 1)
    step = _step(pattern)
    reached = torch.eye(length, device=pattern.device)
    curve = []
    for _ in range(layers):
        reached = ((step @ reached) > 0).float()
        curve.append(int((reached.bool() & target).sum()) / total)
    return torch.tensor(curve, dtype=torch.float64)


def layers_to_reach(pattern, *, target=None, max_layers=None):
    """min {l ≥ 0 : R_l ⊇ T}: how many layers until every target pair (i, j) is connected.

    pattern (L, L) bool; target (L, L) bool, default all pairs -> an int, or None when the
    target is never covered (the reach stops growing first, or ``max_layers`` is passed).
    The answer is the largest shortest-path distance from j to i over the target pairs:
    ⌈(L − 1)/w⌉ for a window of half-width w, 2 with a global token. Cost O(l·L³) time for
    an answer l, O(L²) memory. Explained in §3.5.
    """
    length = _square_pattern(pattern)
    target = _target(target, length, pattern.device)
    limit = length if max_layers is None else _checks.count(max_layers, "max_layers")
    step = _step(pattern)
    reached = torch.eye(length, device=pattern.device).bool()
    for layer in range(limit + 1):
        if not (target & ~reached).any():
            return layer
        grown = (step @ reached.float()) > 0
        if torch.equal(grown, reached):
            return None
        reached = grown
    return None


def _check_buckets(x, buckets):
    _checks.tensor(x, "x", min_dim=2)
    if not isinstance(buckets, torch.Tensor):
        raise TypeError(f"buckets must be a torch.Tensor, got {type(buckets).__name__}")
    if buckets.dtype.is_floating_point or buckets.dtype == torch.bool:
        raise TypeError(f"buckets must hold integer bucket ids, got dtype {buckets.dtype}")
    if buckets.dim() != x.dim() or buckets.shape[:-2] != x.shape[:-2] or buckets.shape[-1] != x.shape[-2]:
        raise ValueError(f"buckets must have shape (..., n_hashes, L) = (..., n_hashes, {x.shape[-2]}) "
                         f"for x of shape {tuple(x.shape)}, got {tuple(buckets.shape)}")


def _shared(buckets):
    """s_ij = (h_r(x_i) = h_r(x_j) for some round r): (..., R, L) -> (..., L, L) bool."""
    return (buckets.unsqueeze(-1) == buckets.unsqueeze(-2)).any(dim=-3)


def bucket_agreement(x, buckets, k):
    """Mean over queries i of |{j ∈ N_k(i) : i and j share a bucket in some round}| / k.

    N_k(i) holds the k vectors j ≠ i with the largest cosine similarity to x_i (ties broken
    by position). x (..., L, d); buckets (..., n_hashes, L) integer ids, e.g. from
    :func:`attnbook.sparse.lsh_buckets`; k in 1..L−1 -> float. Compare it with
    :func:`bucket_collision_rate`, the same fraction for random pairs. Cost O(L²·(d + n_hashes))
    time and O(L²) memory. Explained in §3.5.
    """
    _check_buckets(x, buckets)
    length = x.shape[-2]
    k = _checks.count(k, "k")
    if not 1 <= k <= length - 1:
        raise ValueError(f"k must lie in 1..L−1 = 1..{length - 1}, got {k}")
    unit = torch.nn.functional.normalize(x.double(), dim=-1)
    cosine = unit @ unit.transpose(-2, -1)
    eye = torch.eye(length, dtype=torch.bool, device=x.device)
    neighbours = cosine.masked_fill(eye, float("-inf")).topk(k, dim=-1).indices     # (..., L, k)
    return _shared(buckets).gather(-1, neighbours).double().mean().item()


def bucket_collision_rate(buckets):
    """Fraction of the pairs i ≠ j that share a bucket in at least one hash round.

    buckets (..., n_hashes, L) integer ids -> float; for uniform buckets and one round it is
    about 1/n_buckets. The baseline for :func:`bucket_agreement`. Cost O(n_hashes·L²). §3.5.
    """
    if not isinstance(buckets, torch.Tensor):
        raise TypeError(f"buckets must be a torch.Tensor, got {type(buckets).__name__}")
    if buckets.dim() < 2 or buckets.dtype.is_floating_point or buckets.dtype == torch.bool:
        raise TypeError(f"buckets must be an integer tensor (..., n_hashes, L), got dtype {buckets.dtype} "
                        f"and shape {tuple(buckets.shape)}")
    length = buckets.shape[-1]
    if length < 2:
        raise ValueError(f"buckets must cover at least 2 positions, got shape {tuple(buckets.shape)}")
    shared = _shared(buckets)
    off_diagonal = ~torch.eye(length, dtype=torch.bool, device=buckets.device)
    return (shared & off_diagonal).double().sum().item() / (off_diagonal.sum().item() * shared[..., 0, 0].numel())
