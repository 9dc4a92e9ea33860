"""Budgets for long sequences: the memory a run may use, the longest sequence that fits in it,
and what the lengths a machine cannot run would cost (§6.1).

Exact attention over n tokens computes n² scores, so its cost outgrows any machine at some
length. This module puts numbers on that. It reads how much memory this machine has free
(``/proc/meminfo``) and how much this process already holds (``/proc/self/status``), and
turns them into a cap: ``min(limit − in use, fraction × available)``, 1 GB for the whole
process by default. It counts the numbers each of five kernels holds at its peak (naive
exact attention, PyTorch's fused SDPA, tiled attention, a sliding window, linear
attention), finds the longest sequence whose count stays under the cap, fits a power law
c·nᵖ to measured costs, and projects it to lengths that cannot be run. It also counts the
tokens of real workloads (documents, images cut into patches or pixels) and the bytes of
their n × n score matrices, and draws the memory of each kernel against the cap.

Sizes are in bytes; the text uses decimal units (1 GB = 10⁹ bytes).
References (book/references.bib): ``dao2022flashattention``, ``beltagy2020longformer``,
``katharopoulos2020transformers``, ``tay2021long``.
"""
import dataclasses
import math
import numbers
import pathlib

import torch

from . import _checks

METHODS = ("naive", "sdpa", "tiled", "window", "linear")
LABELS = {
    "naive": "naive exact",
    "sdpa": "SDPA (fused, exact)",
    "tiled": "tiled (exact)",
    "window": "sliding window",
    "linear": "linear attention",
}
COLOURS = {  # Okabe & Ito's palette, distinguishable with the common colour-vision deficiencies
    "naive": "#d55e00",
    "sdpa": "#0072b2",
    "tiled": "#56b4e9",
    "window": "#009e73",
    "linear": "#cc79a7",
}
TIME_EXPONENTS = {  # growth of the FLOPs with n: every score for exact kernels, n·K or n·d² for the others
    "naive": 2, "sdpa": 2, "tiled": 2, "window": 1, "linear": 1,
}
DEFAULT_LIMIT = 10**9          # 1 GB for the whole process: the book's budget for a notebook
DEFAULT_FRACTION = 0.25        # and at most a quarter of the memory the machine has available
SDPA_TILE = (256, 512)         # queries × keys of one tile of PyTorch's CPU flash kernel (an estimate)


# ---------------------------------------------------------------- reading this machine

def _kib_field(text, field):
    """The value of ``field:  <n> kB`` in a /proc file, in bytes, or None."""
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def _proc_text(text, path, name):
    if text is None:
        try:
            return pathlib.Path(path).read_text()
        except OSError:
            return None
    if not isinstance(text, str):
        raise TypeError(f"{name} must be the text of {path} or None, got {type(text).__name__}")
    return text


def available_bytes(meminfo=None):
    """Memory the machine can give to new work without swapping, in bytes, or None if unknown.

    Read from ``MemAvailable`` of Linux's ``/proc/meminfo`` (or from ``meminfo``, its text);
    kernels older than 3.14 lack that line, and then MemFree + Buffers + Cached is used, a
    slight overestimate. None where there is no such file (macOS, Windows). Explained in §6.1.
    """
    text = _proc_text(meminfo, "/proc/meminfo", "meminfo")
    if text is None:
        return None
    value = _kib_field(text, "MemAvailable")
    if value is not None:
        return value
    parts = [_kib_field(text, f) for f in ("MemFree", "Buffers", "Cached")]
    return sum(parts) if None not in parts else None


def resident_bytes(status=None):
    """Memory this process holds now (its resident set, ``VmRSS``), in bytes, or None.

    Read from Linux's ``/proc/self/status`` (or from ``status``, its text). Without that file
    the peak so far from ``resource.getrusage`` is used (an upper bound of the current value;
    kilobytes on Linux, bytes on macOS), and None where neither exists. Explained in §6.1.
    """
    text = _proc_text(status, "/proc/self/status", "status")
    if text is not None:
        return _kib_field(text, "VmRSS")
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@dataclasses.dataclass(frozen=True)
class MemoryCap:
    """How much memory a measurement may add: ``cap`` bytes, and why.

    cap = min(limit − in_use, fraction × available), or limit − in_use when the available
    memory is unknown. ``bound`` names the term that decided it ("limit" or "available").
    """

    cap: int
    limit: int
    fraction: float
    available: object   # int bytes, or None when unknown
    in_use: int

    @property
    def bound(self):
        """Which bound set the cap: "limit" (the process's budget) or "available" (the machine)."""
        if self.available is None or self.limit - self.in_use <= self.fraction * self.available:
            return "limit"
        return "available"

    def __str__(self):
        free = "unknown" if self.available is None else format_bytes(self.available)
        return (f"cap {format_bytes(self.cap)} = min({format_bytes(self.limit)} limit − "
                f"{format_bytes(self.in_use)} in use, {self.fraction:g} × {free} available): "
                f"set by the {self.bound}")


def memory_cap(limit=DEFAULT_LIMIT, fraction=DEFAULT_FRACTION, *, available=None, in_use=None):
    """The memory a measurement may add: min(limit − in_use, fraction × available), in bytes.

    ``limit`` is the budget of the whole process (1 GB by default), of which ``in_use`` bytes
    are already held (default: this process's resident memory, :func:`resident_bytes`);
    ``fraction`` of the ``available`` memory (default: :func:`available_bytes`) keeps the run
    polite on a machine that is short of memory or shared. An unknown available memory leaves
    only the first bound; an unknown in_use counts as 0. Returns a :class:`MemoryCap`; raises
    ValueError when nothing is left. Cost O(1). Explained in §6.1.
    """
    _checks.positive(limit, "limit")
    _checks.positive(fraction, "fraction")
    if fraction > 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if available is None:
        available = available_bytes()
    elif isinstance(available, bool) or not isinstance(available, numbers.Real) or available < 0:
        raise ValueError(f"available must be a number of bytes >= 0 or None, got {available!r}")
    if in_use is None:
        in_use = resident_bytes() or 0
    elif isinstance(in_use, bool) or not isinstance(in_use, numbers.Real) or in_use < 0:
        raise ValueError(f"in_use must be a number of bytes >= 0 or None, got {in_use!r}")
    cap = limit - in_use
    if available is not None:
        cap = min(cap, fraction * available)
    if cap <= 0:
        raise ValueError(f"no memory left: limit {format_bytes(limit)}, in use {format_bytes(in_use)}, "
                         f"available {format_bytes(available) if available is not None else 'unknown'} "
                         f"(× {fraction:g}); raise limit or free memory")
    return MemoryCap(cap=int(cap), limit=int(limit), fraction=float(fraction),
                     available=None if available is None else int(available), in_use=int(in_use))


# ---------------------------------------------------------------- the kernels and their peak memory

def kernels(window=32):
    """name -> fn(query, key, value) -> output, for the five kernels of :data:`METHODS`.

    ``naive`` is :func:`attnbook.attention` (the whole score matrix), ``sdpa`` PyTorch's
    ``scaled_dot_product_attention``, ``tiled`` :func:`attnbook.flash.tiled_attention`,
    ``window`` :func:`attnbook.sparse.sliding_window_attention` with ``window`` keys on each
    side (K = 2·window + 1 keys per query), ``linear`` :func:`attnbook.linear.linear_attention`
    (φ(x) = elu(x) + 1). All take (..., n, d) tensors; ``window`` needs self-attention
    (as many keys as queries). Explained in §6.1.
    """
    from .attention import attention
    from .flash import tiled_attention
    from .linear import linear_attention
    from .sparse import sliding_window_attention

    window = _checks.integer(window, "window")
    return {
        "naive": lambda q, k, v: attention(q, k, v)[0],
        "sdpa": torch.nn.functional.scaled_dot_product_attention,
        "tiled": tiled_attention,
        "window": lambda q, k, v: sliding_window_attention(q, k, v, window)[0],
        "linear": linear_attention,
    }


def _method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def peak_numbers(method, n, d=64, dv=None, *, window=32, block_q=512, block_k=256):
    """Numbers one (batch, head) of a kernel holds at its peak, besides its inputs, counted.

    For self-attention over n tokens with query/key width d and value width dv (default d):

    * ``naive`` (:func:`attnbook.attention`): 4·n² + 3·n: the scores, the scaled logits, the
      shifted logits and their exponentials are alive together in the softmax, with a row
      max (twice) and a row sum;
    * ``sdpa`` (PyTorch's fused CPU kernel): n·(dv + 1), the output and one log-sum-exp per
      query, plus one tile of bq × bk scores and bq·(dv + 2) running numbers, with
      (bq, bk) = :data:`SDPA_TILE` per thread (an estimate: the tile is internal to PyTorch,
      which picks smaller tiles for short sequences, where the count is then an upper one).
      The fused kernel needs dv = d (otherwise PyTorch falls back to a path that forms the
      n × n matrix, which this count does not describe: a ValueError);
    * ``tiled`` (:func:`attnbook.flash.tiled_attention` with block_q × block_k tiles): an upper
      count n·(d + 2·dv) (the scaled queries, the output blocks and their concatenation)
      + 2·bq·bk (a new tile is made while the last is still referenced) + bq·(2·dv + 4),
      within a factor 1.4 of the true peak for n ≥ 1000 and 2.2 below;
    * ``window`` (:func:`attnbook.sparse.sliding_window_attention`, K = 2·window + 1 keys per
      query): an upper count n·K·(d + dv + 6) + 3·n: the gathered keys and values, and per
      pair a few numbers (the score, softmax temporaries, an int64 key index and its flag);
    * ``linear`` (:func:`attnbook.linear.linear_attention`): n·(2·d + dv + 1) + d·(dv + 1): the
      features φ(Q) and φ(K), the output, the denominators, and the d × dv summary φ(K)ᵀV.

    Only ``naive`` grows like n²; the others are linear in n. Returns an int; multiply by
    batch · heads · itemsize for bytes (:func:`peak_bytes`). SDPA's tile belongs to a thread,
    not a head, so counting it per head is an upper count when heads share a thread.
    These are the tensors the code creates, checked against a trace of the live tensors in
    tests/test_budget.py. The resident memory the operating system measures can be higher:
    kernels' internal workspaces and the allocator add to it (for naive and SDPA the two
    agree to a few per cent at most lengths; for tiled and linear attention we measured up
    to about twice the count at some lengths). Explained in §6.1.
    """
    _method(method)
    n, d = _checks.integer(n, "n"), _checks.integer(d, "d", 1)
    dv = d if dv is None else _checks.integer(dv, "dv", 1)
    window = _checks.integer(window, "window")
    block_q, block_k = _checks.integer(block_q, "block_q", 1), _checks.integer(block_k, "block_k", 1)
    if n == 0:
        return 0
    if method == "naive":
        return 4 * n * n + 3 * n
    if method == "sdpa":
        if dv != d:
            raise ValueError(f"sdpa's fused kernel needs dv = d, got d={d} and dv={dv}; PyTorch would "
                             "fall back to a path that forms the n × n matrix")
        bq, bk = min(SDPA_TILE[0], n), min(SDPA_TILE[1], n)
        return n * (dv + 1) + bq * bk + bq * (dv + 2)
    if method == "tiled":
        bq, bk = min(block_q, n), min(block_k, n)
        return n * (d + 2 * dv) + 2 * bq * bk + bq * (2 * dv + 4)
    if method == "window":
        return n * (2 * window + 1) * (d + dv + 6) + 3 * n
    return n * (2 * d + dv + 1) + d * (dv + 1)


def peak_bytes(method, n, d=64, dv=None, *, batch=1, heads=1, itemsize=4, **sizes):
    """Peak extra bytes of one call: batch · heads · itemsize · :func:`peak_numbers`.

    ``sizes`` passes window, block_q and block_k on. itemsize 4 for float32, 2 for
    bfloat16/float16. Returns an int (exact for any n, however large). Explained in §6.1.
    """
    _checks.integer(batch, "batch", 1), _checks.integer(heads, "heads", 1), _checks.integer(itemsize, "itemsize", 1)
    return batch * heads * itemsize * peak_numbers(method, n, d, dv, **sizes)


def max_length(method, cap_bytes, d=64, dv=None, **options):
    """The longest n whose :func:`peak_bytes` stays within ``cap_bytes``; 0 if not even n = 1.

    The count grows with n, so an exponential search followed by bisection finds the exact
    answer in O(log n) counts. ``options`` are those of :func:`peak_bytes`. For naive
    attention (one head, float32) n ≈ √(cap / 16). Explained in §6.1.
    """
    _method(method)
    _checks.positive(cap_bytes, "cap_bytes")

    def fits(n):
        return peak_bytes(method, n, d, dv, **options) <= cap_bytes

    if not fits(1):
        return 0
    high = 2
    while fits(high):
        high *= 2
    low = high // 2                      # fits(low), not fits(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def length_ladder(cap_bytes, method="naive", *, start=256, factor=2, longest=None, **options):
    """Lengths start, start·factor, start·factor², … that fit under ``cap_bytes`` for ``method``.

    Stops at :func:`max_length` (and at ``longest`` when given): the lengths a measurement can
    safely run. An empty list when even ``start`` does not fit. Explained in §6.1.
    """
    start, factor = _checks.integer(start, "start", 1), _checks.integer(factor, "factor", 2)
    top = max_length(method, cap_bytes, **options)
    if longest is not None:
        top = min(top, _checks.integer(longest, "longest", 1))
    ladder, n = [], start
    while n <= top:
        ladder.append(n)
        n *= factor
    return ladder


# ---------------------------------------------------------------- fitting and projecting

@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """cost(n) = coefficient · n ** exponent, fitted on ``lengths`` (the range it has seen)."""

    coefficient: float
    exponent: float
    lengths: tuple = ()

    def __call__(self, n):
        """The cost at n (a number): a projection when n lies outside the fitted lengths."""
        _checks.positive(n, "n")
        return self.coefficient * n ** self.exponent

    def is_projection(self, n):
        """True when n lies beyond the lengths the law was fitted on: an extrapolation."""
        return bool(self.lengths) and not min(self.lengths) <= n <= max(self.lengths)


def fit_power_law(lengths, values):
    """Least-squares line through (log n, log value): value ≈ c · nᵖ. Returns a :class:`PowerLaw`.

    p ≈ 2 for quadratic, ≈ 1 for linear growth. lengths and values are sequences of positive
    numbers of one length, with at least two distinct lengths. The slope is the growth
    exponent of :func:`attnbook.bench.growth_exponent`; the intercept gives c, so that the
    law can be evaluated (projected) at any n. Cost O(len(lengths)). Explained in §6.1.
    """
    lengths, values = list(lengths), list(values)
    if len(lengths) != len(values):
        raise ValueError(f"lengths and values must have one length, got {len(lengths)} and {len(values)}")
    for name, seq in (("lengths", lengths), ("values", values)):
        for x in seq:
            if isinstance(x, bool) or not isinstance(x, numbers.Real) or not (x > 0 and math.isfinite(x)):
                raise ValueError(f"{name} must be finite numbers > 0, got {x!r} in {seq}")
    if len(set(lengths)) < 2:
        raise ValueError(f"lengths must hold at least two distinct values to fit a slope, got {lengths}")
    xs, ys = [math.log(n) for n in lengths], [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return PowerLaw(math.exp(my - slope * mx), slope, tuple(sorted(set(lengths))))


def anchored_power_law(n, value, exponent):
    """The law c·nᵖ with a given exponent through one measured point: c = value / nᵖ.

    A second way to project: keep the exponent the count predicts (:data:`TIME_EXPONENTS`:
    2 for exact attention, 1 for the window and linear attention) and take the constant from
    the longest measurement, instead of fitting both. Where the fitted exponent mixes in the
    memory hierarchy (matrices outgrowing a cache), the two projections bracket the
    plausible range. Returns a :class:`PowerLaw` with lengths (n,). Explained in §6.1.
    """
    for name, x in (("n", n), ("value", value)):
        _checks.positive(x, name)
    if isinstance(exponent, bool) or not isinstance(exponent, numbers.Real) or not math.isfinite(exponent):
        raise ValueError(f"exponent must be a finite number, got {exponent!r}")
    return PowerLaw(value / n ** exponent, float(exponent), (n,))


# ---------------------------------------------------------------- real workloads

def document_tokens(words, tokens_per_word=4 / 3):
    """Tokens of a text of ``words`` words: round(words × tokens_per_word).

    4/3 tokens per word is a rule of thumb for English with a GPT-2-style BPE vocabulary (a
    thousand tokens hold about 750 words); other languages and tokenisers differ. §6.1.
    """
    _checks.integer(words, "words", 1)
    _checks.positive(tokens_per_word, "tokens_per_word")
    return round(words * tokens_per_word)


def image_tokens(height, width, patch=1):
    """Tokens of a height × width image cut into patch × patch squares: ⌈H/p⌉ · ⌈W/p⌉.

    patch = 1 makes every pixel a token; a ViT uses patch = 16 (the image is padded to a
    whole number of patches). Explained in §6.1.
    """
    height, width, patch = _checks.integer(height, "height", 1), _checks.integer(width, "width", 1), _checks.integer(patch, "patch", 1)
    return -(-height // patch) * -(-width // patch)


def score_matrix_bytes(n, *, heads=1, layers=1, batch=1, itemsize=4):
    """Bytes of the n × n score matrices: batch · layers · heads · n² · itemsize (an int).

    One matrix per head of each layer; a forward pass needs one layer's at a time, training
    keeps them all for the backward pass unless it recomputes them (§5.3). §6.1.
    """
    n = _checks.integer(n, "n")
    for name, v in (("heads", heads), ("layers", layers), ("batch", batch), ("itemsize", itemsize)):
        _checks.integer(v, name, 1)
    return batch * layers * heads * n * n * itemsize


# ---------------------------------------------------------------- text and figures

_BYTE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def format_bytes(nbytes):
    """A byte count in decimal units with three significant digits: '268 MB', '1.6 TB'.

    NaN, what :mod:`attnbook.bench` reports where peak memory cannot be measured (outside
    Linux and CUDA), gives 'n/a'. §6.1.
    """
    if isinstance(nbytes, float) and math.isnan(nbytes):
        return "n/a"
    if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Real) or not 0 <= nbytes < math.inf:
        raise ValueError(f"nbytes must be a finite number >= 0 (or NaN), got {nbytes!r}")
    value, unit = float(nbytes), 0
    while value >= 999.5 and unit < len(_BYTE_UNITS) - 1:
        value /= 1000
        unit += 1
    if unit == 0:
        return f"{int(round(value))} B"
    return f"{value:.3g} {_BYTE_UNITS[unit]}"


def format_seconds(seconds):
    """A duration in the largest fitting unit, three significant digits: '340 ms', '5.6 h'. §6.1."""
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not seconds >= 0:
        raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def draw_memory(ax, n, cap_bytes, *, methods=METHODS, d=64, heads=1, itemsize=4, window=32):
    """Horizontal bars: the counted peak memory of each method at length n, against the cap.

    A log-scaled axis from 1 kB to 100 TB; a vertical line at ``cap_bytes``; a bar that
    exceeds the cap is hatched and says so. Colours from :data:`COLOURS` (Okabe-Ito).
    Redraws ``ax`` from scratch; returns it. Explained in §6.1.
    """
    _checks.positive(cap_bytes, "cap_bytes")
    ax.clear()
    sizes = [peak_bytes(m, n, d, heads=heads, itemsize=itemsize, window=window) for m in methods]
    rows = range(len(methods))[::-1]
    for row, method, size in zip(rows, methods, sizes):
        over = size > cap_bytes
        ax.barh(row, size, color=COLOURS[method], hatch="//" if over else None,
                edgecolor="0.2" if over else COLOURS[method], height=0.6)
        ax.text(size * 1.3, row, format_bytes(size) + ("  does not fit" if over else ""),
                va="center", fontsize=8)
    ax.axvline(cap_bytes, color="0.2", ls="--", lw=1.2)
    ax.text(cap_bytes * 1.3, len(methods) - 0.3, f"cap {format_bytes(cap_bytes)}", ha="left",
            va="center", fontsize=8, color="0.2")
    ax.set_xscale("log")
    ax.set_xlim(1e3, 1e16)
    ax.set_ylim(-0.6, len(methods) - 0.05)
    ax.set_yticks(list(rows), [LABELS[m] for m in methods], fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("peak extra memory of one call (bytes, counted)", fontsize=8)
    ax.set_title(f"n = {n:,} tokens, {heads} head{'s' if heads > 1 else ''} of width {d}, "
                 f"{8 * itemsize}-bit numbers", fontsize=9)
    return ax
