"""An atlas of the book's attention variants: what each changes, what it costs, when to use it (§7.1).

Every variant in this book computes the three steps of §2.1–§2.4 (scores, normalisation,
weighted sum) over some set of keys, and changes one or more of them. :data:`VARIANTS`
holds one :class:`Variant` per kernel of the library: its section, its function, the steps
it changes, how faithful it is to full softmax attention (:data:`FIDELITIES`), whether it
is differentiable and has a causal form, its cost formulas and when to use it.

The costs are *counted*, for self-attention over n tokens with query/key width d and value
width dv, per (batch, head), as the library's own function computes it:

* :func:`flops`: FLOPs of the matrix products, 2 per multiply-add, exactly as torch's
  ``FlopCounterMode`` counts them on the library's kernel (softmax, sorting and gathering
  are not counted: that is one reason why measured time differs from the count);
* :func:`memory_numbers`: the numbers held at the peak besides the inputs, an upper count of
  the tensors the kernel keeps alive at once (for the five kernels of §6.1 the counts of
  :func:`attnbook.budget.peak_numbers`); :func:`memory_bytes` multiplies by batch, heads and
  the item size;
* :func:`pairs`: how many (query, key) pairs can receive a non-zero weight in one layer, the
  variant's reach; exact for fixed patterns, an upper count where the data chooses the keys.

:func:`assess` and :func:`choose` filter and rank the variants by constraints (exactness, a
memory budget, a causal form, differentiability); :func:`kernels`, :func:`reference` and
:func:`output_errors` measure them; :func:`draw_steps`, :func:`draw_map` and
:func:`draw_choice` draw the map of the chapter.

References (book/references.bib): ``vaswani2017attention``, ``dao2022flashattention``,
``beltagy2020longformer``, ``kitaev2020reformer``, ``ho2019axial``, ``xu2015show``,
``katharopoulos2020transformers``, ``choromanski2021rethinking``, ``xiong2021nystromformer``,
``wang2020linformer``, ``tay2022efficient``.
"""
import dataclasses
import math
import numbers

import torch

from . import _checks
from .budget import format_bytes, peak_numbers

STEPS = ("keys", "scores", "normalisation", "aggregation")
STEP_LABELS = {"keys": "which keys", "scores": "scores", "normalisation": "normalisation",
               "aggregation": "weighted sum"}
STEP_HEADINGS = {"keys": "which\nkeys", "scores": "scores", "normalisation": "normal-\nisation",
                 "aggregation": "weighted\nsum"}
FIDELITIES = {
    "exact": "the output of full softmax attention, up to rounding",
    "restricted": "exact softmax attention over fewer keys: a different model, exact on what it keeps",
    "sampled": "a random read whose expectation is the soft output",
    "approximate": "an approximation of full softmax attention; its error depends on the input",
    "different": "a different similarity in place of the softmax: not an approximation",
}
COLOURS = {  # Okabe & Ito's palette, distinguishable with the common colour-vision deficiencies
    "exact": "#0072b2",
    "restricted": "#009e73",
    "sampled": "#e69f00",
    "approximate": "#cc79a7",
    "different": "#d55e00",
}
MARKERS = {"exact": "o", "restricted": "s", "sampled": "v", "approximate": "D", "different": "^"}
REJECTED = "#d9d9d9"

# The sizes a variant may take, with their defaults (None: chosen from n or d, see _resolve).
DEFAULT_SIZES = {
    "block_q": 512, "block_k": 256,          # tiled: a tile of block_q queries × block_k keys
    "window": 32,                            # sliding window: w keys on each side
    "block": 64,                             # block-local and hybrid: keys per block
    "chunk": 64, "n_buckets": 16, "n_hashes": 2,   # LSH: chunk length c, buckets β, rounds R
    "height": None,                          # axial: image height H (default: near √n), width n/H
    "top": 2,                                # hybrid: blocks kept per query
    "samples": 1,                            # hard: positions sampled per query
    "landmarks": None,                       # Nyström: m landmarks (default min(64, n))
    "rank": None,                            # Linformer: k projected positions (default min(64, n))
    "features": None,                        # Performer: r random features (default d·ln d)
}
MEASURED = ("naive", "sdpa", "tiled", "window", "lsh", "linear", "performer", "nystrom", "linformer")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One attention variant of the book: what it changes, what it costs, when to use it.

    ``steps`` ⊆ :data:`STEPS` are the steps it changes (empty for the reference);
    ``fidelity`` a key of :data:`FIDELITIES`; ``sizes`` the names of the sizes its costs
    depend on (:data:`DEFAULT_SIZES`); ``time`` and ``memory`` the counted formulas as text,
    ``growth`` their exponents in n with the other sizes fixed; ``pairs_exact`` is False
    where :func:`pairs` is an upper count (the data choose the keys). §7.1.
    """

    name: str
    label: str
    section: str
    page: str
    function: str
    steps: tuple
    change: str
    fidelity: str
    differentiable: bool
    causal: bool
    sizes: tuple
    time: str
    memory: str
    growth: tuple
    pairs_exact: bool
    when: str

    @property
    def exact(self):
        """True when the output is that of full softmax attention (up to rounding)."""
        return self.fidelity == "exact"

    @property
    def short(self):
        """The label without its parenthesis ("LSH (Reformer)" -> "LSH"), for crowded plots."""
        return self.label.split(" (")[0]


def _v(*args, **kwargs):
    v = Variant(*args, **kwargs)
    if not (set(v.steps) <= set(STEPS) and v.fidelity in FIDELITIES and set(v.sizes) <= set(DEFAULT_SIZES)):
        raise ValueError(f"malformed atlas entry {v.name!r}: steps {v.steps}, fidelity {v.fidelity!r}, sizes {v.sizes}")
    return v


VARIANTS = {v.name: v for v in (
    _v("naive", "naive (exact)", "2.4", "part2/weighted_sum", "attnbook.attention",
       (), "nothing: the reference softmax(QKᵀ/√d)V, with the n × n weights in memory",
       "exact", True, True, (), "2n²(d + dv)", "4n² + 3n", (2, 2), True,
       "short sequences, and whenever the weights themselves are needed (plots, rollout)"),
    _v("sdpa", "SDPA (fused)", "5.3", "part5/memory", "torch.nn.functional.scaled_dot_product_attention",
       ("normalisation",), "normalisation: an online softmax inside one fused kernel; same output",
       "exact", True, True, (), "2n²(d + dv)", "n(dv + 1) + bq·bk + bq(dv + 2)", (2, 1), True,
       "the default for exact attention: memory linear in n, the fastest kernel on most machines"),
    _v("tiled", "tiled (FlashAttention)", "5.3", "part5/memory", "attnbook.flash.tiled_attention",
       ("normalisation",), "normalisation: an online softmax over tiles of bq × bk scores; same output",
       "exact", True, True, ("block_q", "block_k"), "2n²(d + dv)",
       "n(d + 2dv) + 2bq·bk + bq(2dv + 4)", (2, 1), True,
       "exact attention whose n × n matrix would not fit; fused on hardware with fast on-chip memory"),
    _v("window", "sliding window", "3.5", "part3/sparse", "attnbook.sparse.sliding_window_attention",
       ("keys",), "which keys: the 2w + 1 neighbours of each query",
       "restricted", True, True, ("window",), "2n(2w + 1)(d + dv)", "n(2w + 1)(d + dv + 6) + 3n",
       (1, 1), True,
       "local structure (text, audio, pixels) and very long inputs; stack layers or add global "
       "tokens for long-range reach"),
    _v("block", "block-local", "3.5", "part3/sparse", "attnbook.sparse.block_local_attention",
       ("keys",), "which keys: the b tokens of the query's own block",
       "restricted", True, False, ("block",), "2⌈n/b⌉b²(d + dv)", "P(2d + dv + 4) + 4⌈n/b⌉b², P = ⌈n/b⌉b",
       (1, 1), True,
       "the cheapest local pattern, for chunked inputs; combine with a pattern that crosses blocks"),
    _v("lsh", "LSH (Reformer)", "3.5", "part3/sparse", "attnbook.sparse.lsh_attention",
       ("keys", "scores"), "which keys: those hashed near the query (shared queries and keys)",
       "restricted", True, True, ("chunk", "n_buckets", "n_hashes"),
       "R·n·d·β + 4R⌈n/c⌉c²(d + dv)",
       "6T + RP(5d + 2dv + 16) + 2Rnβ + Rdβ, P = ⌈n/c⌉c, T = 2R⌈n/c⌉c²",
       (1, 1), False,
       "long inputs in which each query needs a few similar keys (clustered content)"),
    _v("axial", "axial", "3.4", "part3/axial", "attnbook.axial.axial_attention",
       ("keys",), "which keys: the query's row, then its column (two passes)",
       "restricted", True, False, ("height",), "2HW(H + W)(d + dv)",
       "max(4HW², HW² + 4WH² + n·dv) + 3n, n = HW", (1.5, 1.5), True,
       "images, video and other grids: global reach in two passes"),
    _v("hybrid", "hybrid (coarse to fine)", "3.1", "part3/range", "attnbook.hard.hybrid_attention",
       ("keys", "scores"), "which keys: the top t blocks by a coarse score on block means",
       "restricted", True, True, ("block", "top"), "2n⌈n/b⌉d + 2ntb(d + dv)",
       "max(G(d + dv + 2max(d, dv)), G(d + dv + 5) + 2nP) + P(d + dv) + n(⌈n/b⌉ + 2t), G = ntb, P = ⌈n/b⌉b",
       (2, 2), False,
       "when a coarse summary finds the relevant region (sections of a document, an image)"),
    _v("hard", "hard (sampled)", "3.1", "part3/range", "attnbook.hard.hard_attention",
       ("aggregation",), "weighted sum: read s sampled values instead of the average",
       "sampled", False, True, ("samples",), "2n²d", "4n² + 3n", (2, 2), False,
       "when reading a value is expensive (glimpses, external memory); trained with REINFORCE"),
    _v("linear", "linear (elu + 1)", "5.2", "part5/efficiency", "attnbook.linear.linear_attention",
       ("scores", "normalisation", "aggregation"),
       "scores, normalisation, sum: φ(q)ᵀφ(k) with φ = elu + 1, summed as φ(Q)(φ(K)ᵀV)",
       "different", True, True, (), "4n·d·dv + 2nd", "n(2d + dv + 1) + d(dv + 1)", (1, 1), True,
       "long or streaming inputs with a state of fixed size; a different model, trained as such"),
    _v("performer", "Performer (FAVOR+)", "5.2", "part5/efficiency", "attnbook.linear.performer_attention",
       ("scores", "normalisation", "aggregation"),
       "scores, normalisation, sum: r random features estimate exp(qᵀk/√d)",
       "approximate", True, True, ("features",), "4nr(d + dv) + 2nr",
       "max(4nr + nd, 2nr + n·dv + n, 6⌈r/d⌉d²) + r(d + dv + 1)", (1, 1), True,
       "an unbiased estimate of softmax attention in linear time; needs many features at the "
       "usual temperature"),
    _v("nystrom", "Nyström", "5.2", "part5/efficiency", "attnbook.lowrank.nystrom_attention",
       ("keys", "normalisation", "aggregation"),
       "which keys, normalisation: m landmarks, weights F A⁺ B of rank ≤ m",
       "approximate", True, False, ("landmarks",), "8nmd + 4nm·dv + 2m²(d + dv) + 48m³",
       "max(5nm, 2nm + n·dv) + 8m² + 2m(d + dv) + 3n", (1, 1), True,
       "bidirectional encoders over long inputs whose attention is close to low rank"),
    _v("linformer", "Linformer", "5.2", "part5/efficiency", "attnbook.lowrank.linformer_attention",
       ("keys", "aggregation"), "which keys, sum: keys and values projected to k positions",
       "approximate", True, False, ("rank",), "4nk(d + dv)",
       "max(4nk + 3n, 2nk + n·dv) + k(d + dv)", (1, 1), True,
       "bidirectional inputs of a fixed length, with projections trained with the model"),
)}


# ---------------------------------------------------------------- arguments

def variant(name):
    """The :class:`Variant` called ``name``; a ValueError lists the names. §7.1."""
    if not isinstance(name, str) or name not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {name!r}")
    return VARIANTS[name]


def _names(names):
    if names is None:
        return list(VARIANTS)
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of variant names, got the string {names!r}")
    names = list(names)
    for name in names:
        variant(name)
    return names


def _largest_divisor_up_to_root(n):
    return max(h for h in range(1, math.isqrt(n) + 1) if n % h == 0)


def resolve_sizes(name, n, d=64, **sizes):
    """The sizes that variant ``name`` uses, defaults filled in and checked: a dict.

    Unknown size names are a TypeError; sizes that ``name`` does not use are ignored, so
    that one dict of sizes can be passed to every variant. Defaults: window 32, block 64,
    chunk 64, 16 buckets, 2 hash rounds, top 2 blocks, 1 sample, tiles 512 × 256, height the
    largest divisor of n not above √n, landmarks and rank min(64, n), features
    max(d, ⌊d ln d⌋). landmarks and rank may not exceed n; height must divide n; the
    number of buckets is 1 or even; top is capped at the number of blocks. §7.1.
    """
    v = variant(name)
    n, d = _checks.integer(n, "n", 1), _checks.integer(d, "d", 1)
    unknown = set(sizes) - set(DEFAULT_SIZES)
    if unknown:
        raise TypeError(f"unknown size {sorted(unknown)}; the sizes are {list(DEFAULT_SIZES)}")
    out = {}
    for key in v.sizes:
        value = sizes.get(key, DEFAULT_SIZES[key])
        if value is None:
            if key == "height":
                value = _largest_divisor_up_to_root(n)
            elif key in ("landmarks", "rank"):
                value = min(64, n)
            else:                                    # features: the Performer's default
                value = max(d, int(d * math.log(d)))
        out[key] = _checks.integer(value, key, 0 if key == "window" else 1)
    if "n_buckets" in out and out["n_buckets"] != 1 and out["n_buckets"] % 2:
        raise ValueError(f"n_buckets must be 1 or even, got {out['n_buckets']}")
    for key in ("landmarks", "rank"):
        if key in out and out[key] > n:
            raise ValueError(f"{key}={out[key]} must be at most n={n}")
    if "height" in out and n % out["height"]:
        raise ValueError(f"height={out['height']} must divide n={n} (an image of height × n/height pixels)")
    if "top" in out:
        out["top"] = min(out["top"], -(-n // out["block"]))
    return out


def _widths(d, dv):
    d = _checks.integer(d, "d", 1)
    return d, d if dv is None else _checks.integer(dv, "dv", 1)


# ---------------------------------------------------------------- the counts

def _flops(name, n, d, dv, s):
    if name in ("naive", "sdpa", "tiled"):
        return 2 * n * n * (d + dv)
    if name == "window":
        return 2 * n * (2 * s["window"] + 1) * (d + dv)
    if name == "block":
        blocks = -(-n // s["block"])
        return 2 * blocks * s["block"] ** 2 * (d + dv)
    if name == "lsh":
        r, c, beta = s["n_hashes"], s["chunk"], s["n_buckets"]
        hashing = 0 if beta == 1 else r * n * d * beta
        return hashing + 4 * r * (-(-n // c)) * c * c * (d + dv)
    if name == "axial":
        h = s["height"]
        w = n // h
        return 2 * h * w * (h + w) * (d + dv)
    if name == "hybrid":
        blocks = -(-n // s["block"])
        return 2 * n * blocks * d + 2 * n * s["top"] * s["block"] * (d + dv)
    if name == "hard":
        return 2 * n * n * d
    if name == "linear":
        return 4 * n * d * dv + 2 * n * d
    if name == "performer":
        r = s["features"]
        return 4 * n * r * (d + dv) + 2 * n * r
    if name == "nystrom":
        m = s["landmarks"]
        return 8 * n * m * d + 4 * n * m * dv + 2 * m * m * (d + dv) + 48 * m ** 3
    k = s["rank"]                                           # linformer
    return 4 * n * k * (d + dv)


def _memory(name, n, d, dv, s):
    if name in ("naive", "sdpa", "tiled", "window", "linear"):
        return peak_numbers(name, n, d, dv, window=s.get("window", 32), block_q=s.get("block_q", 512),
                            block_k=s.get("block_k", 256))
    if name == "hard":
        return 4 * n * n + 3 * n
    if name == "block":
        blocks = -(-n // s["block"])
        padded = blocks * s["block"]
        return padded * (2 * d + dv + 4) + 4 * blocks * s["block"] ** 2
    if name == "lsh":
        r, c, beta = s["n_hashes"], s["chunk"], s["n_buckets"]
        slots = -(-n // c) * c
        compared = 2 * r * (-(-n // c)) * c * c
        return 6 * compared + r * slots * (5 * d + 2 * dv + 16) + 2 * r * n * beta + r * d * beta
    if name == "axial":
        h = s["height"]
        w = n // h
        return max(4 * h * w * w, h * w * w + 4 * w * h * h + n * dv) + 3 * n
    if name == "hybrid":
        blocks = -(-n // s["block"])
        padded = blocks * s["block"]
        gathered = n * s["top"] * s["block"]
        return (max(gathered * (d + dv + 2 * max(d, dv)), gathered * (d + dv + 5) + 2 * n * padded)
                + padded * (d + dv) + n * (blocks + 2 * s["top"]))
    if name == "performer":
        r = s["features"]
        return max(4 * n * r + n * d, 2 * n * r + n * dv + n, 6 * (-(-r // d)) * d * d) + r * (d + dv + 1)
    if name == "nystrom":
        m = s["landmarks"]
        return max(5 * n * m, 2 * n * m + n * dv) + 8 * m * m + 2 * m * (d + dv) + 3 * n
    k = s["rank"]                                           # linformer
    return max(4 * n * k + 3 * n, 2 * n * k + n * dv) + k * (d + dv)


def _window_pairs(n, w):
    """Σ_i #{j : |i − j| ≤ w} over i in 0..n−1: n + 2 Σ_i min(i, w)."""
    w = min(w, n - 1)
    return n + w * (w + 1) + 2 * w * (n - 1 - w)


def _pairs(name, n, s):
    if name == "window":
        return _window_pairs(n, s["window"])
    if name == "block":
        b = s["block"]
        return (n // b) * b * b + (n % b) ** 2
    if name == "lsh":
        return n * min(n, 2 * s["chunk"] * s["n_hashes"])
    if name == "hybrid":
        return n * min(n, s["top"] * s["block"])
    if name == "hard":
        return n * min(n, s["samples"])
    return n * n                                            # every pair gets a weight


def flops(name, n, d=64, dv=None, **sizes):
    """FLOPs of the matrix products of variant ``name`` over n tokens, per (batch, head), counted.

    2 FLOPs per multiply-add, as ``torch.utils.flop_counter.FlopCounterMode`` counts the
    library's kernel (checked in tests/test_atlas.py): e.g. 2n²(d + dv) for exact attention,
    2n(2w + 1)(d + dv) for a sliding window, 4nk(d + dv) for the Linformer (the formulas are
    in ``VARIANTS[name].time``). Softmax, hashing's argmax, sorting and gathering are not
    counted. dv defaults to d; ``sizes`` as in :func:`resolve_sizes`. Returns an int.
    Cost O(1) (O(√n) to find a default height). Explained in §7.1.
    """
    d, dv = _widths(d, dv)
    return _flops(name, n, d, dv, resolve_sizes(name, n, d, **sizes))


def memory_numbers(name, n, d=64, dv=None, **sizes):
    """Numbers the library's kernel for ``name`` holds at its peak besides its inputs, per (batch, head).

    An upper count of the tensors alive at once (``VARIANTS[name].memory``), within a small
    factor of a trace of the live tensors (tests/test_atlas.py); for naive, sdpa, tiled,
    window and linear attention the counts of :func:`attnbook.budget.peak_numbers` (§6.1).
    Only naive, hybrid and hard attention grow like n², axial like n^1.5 on square images.
    Returns an int. Explained in §7.1.
    """
    d, dv = _widths(d, dv)
    return _memory(name, n, d, dv, resolve_sizes(name, n, d, **sizes))


def memory_bytes(name, n, d=64, dv=None, *, batch=1, heads=1, itemsize=4, **sizes):
    """Peak extra bytes of one call: batch · heads · itemsize · :func:`memory_numbers`. §7.1."""
    for label, value in (("batch", batch), ("heads", heads), ("itemsize", itemsize)):
        _checks.integer(value, label, 1)
    return batch * heads * itemsize * memory_numbers(name, n, d, dv, **sizes)


def pairs(name, n, **sizes):
    """(query, key) pairs that can receive a non-zero weight in one layer of ``name`` over n tokens.

    n² for exact attention, the approximations (every pair gets an approximate weight) and
    axial attention (every pixel reaches every pixel through two passes); Σ_i (keys of query i)
    for the fixed patterns: n + w(w + 1) + 2w(n − 1 − w) for a window with w < n, the sum of
    the squared block lengths for blocks (equal to ``pattern.sum()`` of the patterns of
    :mod:`attnbook.sparse`). Where the data choose the keys (LSH, hybrid, hard) an upper
    count: n·min(n, 2cR), n·min(n, tb), n·min(n, s) (``VARIANTS[name].pairs_exact`` is False).
    Returns an int. Explained in §7.1.
    """
    return _pairs(name, _checks.integer(n, "n", 1), resolve_sizes(name, n, **sizes))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A variant assessed for one problem: its counted costs, whether it qualifies, and why not."""

    name: str
    flops: int
    bytes: int
    pairs: int
    reasons: tuple

    @property
    def qualifies(self):
        """True when no constraint rules the variant out."""
        return not self.reasons


def assess(n, d=64, dv=None, *, memory_budget=None, exact=False, causal=False, differentiable=False,
           names=None, batch=1, heads=1, itemsize=4, **sizes):
    """Every variant (or those in ``names``) assessed for self-attention over n tokens.

    A variant is ruled out, with a reason, when ``exact`` is required and it is not exact,
    when ``causal`` is required and it has no causal form, when ``differentiable`` is
    required and it is not, and when its :func:`memory_bytes` exceed ``memory_budget``
    (bytes; None: no limit). SDPA with dv ≠ d is counted as the naive kernel, since PyTorch
    then falls back to a path that forms the n × n matrix. Variants that cannot be built for
    these sizes (landmarks > n, …) raise. Returns a list of :class:`Verdict` in the order of
    :data:`VARIANTS`.
    Cost O(number of variants). Explained in §7.1.
    """
    if memory_budget is not None:
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Real) \
                or not memory_budget > 0 or not math.isfinite(memory_budget):
            raise ValueError(f"memory_budget must be a number of bytes > 0 or None, got {memory_budget!r}")
    for label, flag in (("exact", exact), ("causal", causal), ("differentiable", differentiable)):
        if not isinstance(flag, bool):
            raise TypeError(f"{label} must be True or False, got {flag!r}")
    verdicts = []
    for name in _names(names):
        v = VARIANTS[name]
        reasons = []
        fallback = name == "sdpa" and dv is not None and dv != d     # PyTorch forms the n × n matrix
        cost_bytes = memory_bytes("naive" if fallback else name, n, d, dv, batch=batch, heads=heads,
                                  itemsize=itemsize, **sizes)
        if exact and not v.exact:
            reasons.append(f"not exact ({v.fidelity})")
        if causal and not v.causal:
            reasons.append("no causal form")
        if differentiable and not v.differentiable:
            reasons.append("not differentiable")
        if memory_budget is not None and cost_bytes > memory_budget:
            reasons.append(f"needs {format_bytes(cost_bytes)} > {format_bytes(memory_budget)}")
        count = batch * heads * flops(name, n, d, dv, **sizes)
        verdicts.append(Verdict(name, count, cost_bytes, pairs(name, n, **sizes), tuple(reasons)))
    return verdicts


def choose(n, d=64, dv=None, **constraints):
    """The variants that qualify (:func:`assess`, same arguments), cheapest first.

    Ranked by counted FLOPs, then by memory. An empty list when nothing qualifies.
    Explained in §7.1.
    """
    qualified = [v for v in assess(n, d, dv, **constraints) if v.qualifies]
    return sorted(qualified, key=lambda v: (v.flops, v.bytes))


def table(names=None):
    """The atlas as rows of text (dicts with the fields of :class:`Variant`), for printing. §7.1."""
    rows = []
    for name in _names(names):
        v = VARIANTS[name]
        row = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
        row["steps"] = ", ".join(STEP_LABELS[s] for s in v.steps) or "none"
        rows.append(row)
    return rows


# ---------------------------------------------------------------- measuring

def pool_projection(length, k, dtype=torch.float32, device=None):
    """The Linformer projection E (k, length) of segment means, E_sj = 1/|segment s| for j in segment s.

    Equal to :func:`attnbook.approx.linformer_projection` with kind "pool" (the first
    length mod k segments hold one position more), but built without a matrix product, so
    that it adds no FLOPs to a count. Cost O(k·length). Explained in §7.1.
    """
    length, k = _checks.integer(length, "length", 1), _checks.integer(k, "k", 1)
    if k > length:
        raise ValueError(f"k={k} must be at most length={length}: the projection compresses the sequence")
    small, extra = divmod(length, k)
    sizes = torch.full((k,), small, device=device)
    sizes[:extra] += 1
    segment = torch.repeat_interleave(torch.arange(k, device=device), sizes)
    return (segment == torch.arange(k, device=device)[:, None]).to(dtype) / sizes[:, None].to(dtype)


def kernels(names=MEASURED, *, seed=0, lsh_scale=None, **sizes):
    """name -> fn(query, key, value) -> output, for the variants in ``names`` (all measurable ones by default).

    Each calls the library's function with the sizes of :func:`resolve_sizes` (resolved per
    call, from the length and width of its input): ``sdpa`` is PyTorch's fused kernel; ``lsh``
    uses the queries as its shared queries and keys and ignores ``key``; ``linformer``
    projects with the segment means of :func:`pool_projection` (an untrained, deterministic E,
    built once per length); ``performer`` and ``lsh`` draw their randomness from a
    generator seeded with ``seed`` at every call, so that repeated calls agree; ``lsh_scale``
    is LSH's score scale (None: 1/√d; its keys have unit length, so 1 gives scores of the
    spread of q·k/√d when ‖k‖ ≈ √d). ``axial``, ``hybrid`` and ``hard`` are not offered
    (they take an image, or return more than an output). Inputs (..., n, d), self-attention.
    Explained in §7.1.
    """
    from .attention import attention
    from .flash import tiled_attention
    from .linear import linear_attention, performer_attention
    from .lowrank import linformer_attention, nystrom_attention
    from .sparse import block_local_attention, lsh_attention, sliding_window_attention

    def sized(name, q):
        return resolve_sizes(name, q.shape[-2], q.shape[-1], **sizes)

    def performer(q, k, v):
        gen = torch.Generator(device=q.device).manual_seed(seed)
        return performer_attention(q, k, v, features=sized("performer", q)["features"], generator=gen)

    def lsh(q, k, v):
        s = sized("lsh", q)
        gen = torch.Generator(device=q.device).manual_seed(seed)
        return lsh_attention(q, v, s["n_buckets"], s["chunk"], n_hashes=s["n_hashes"], generator=gen,
                             scale=lsh_scale, return_pattern=False)[0]

    projections = {}                      # E is a parameter of the model: built once per shape

    def linformer(q, k, v):
        key = (k.shape[-2], sized("linformer", q)["rank"], k.dtype, k.device)
        if key not in projections:
            projections[key] = pool_projection(*key)
        return linformer_attention(q, k, v, projections[key])

    table_ = {
        "naive": lambda q, k, v: attention(q, k, v)[0],
        "sdpa": torch.nn.functional.scaled_dot_product_attention,
        "tiled": lambda q, k, v: tiled_attention(q, k, v, **sized("tiled", q)),
        "window": lambda q, k, v: sliding_window_attention(q, k, v, sized("window", q)["window"])[0],
        "block": lambda q, k, v: block_local_attention(q, k, v, sized("block", q)["block"])[0],
        "lsh": lsh,
        "linear": linear_attention,
        "performer": performer,
        "nystrom": lambda q, k, v: nystrom_attention(q, k, v, landmarks=sized("nystrom", q)["landmarks"]),
        "linformer": linformer,
    }
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of variant names, got the string {names!r}")
    names = list(names)
    missing = [n for n in names if n not in table_]
    if missing:
        raise ValueError(f"no kernel of (query, key, value) for {missing}; choose among {list(table_)}")
    return {name: table_[name] for name in names}


def reference(name, query, key, value, *, lsh_scale=None):
    """The exact output that variant ``name`` stands in for, on self-attention inputs (..., n, d).

    Full softmax attention softmax(QKᵀ/√d)V for every variant but LSH, whose model is
    shared-QK attention: keys k_j = q_j/‖q_j‖, scores q_i·k_j·``lsh_scale`` (None: 1/√d), a
    query never attending to itself unless it is alone; its exact form is
    :func:`attnbook.sparse.lsh_attention` with one bucket and one chunk of n (every pair
    compared). Returns (..., n, dv). Cost O(n²(d + dv)). §7.1.
    """
    from .attention import attention, check_qkv
    from .sparse import lsh_attention

    variant(name)
    check_qkv(query, key, value)
    if name == "lsh":
        return lsh_attention(query, value, 1, query.shape[-2], scale=lsh_scale, return_pattern=False)[0]
    return attention(query, key, value)[0]


def output_errors(query, key, value, names=MEASURED, *, seed=0, lsh_scale=None, **sizes):
    """{name: ‖out − ref‖_F / ‖ref‖_F} of each kernel's output against its :func:`reference`.

    The relative error of :func:`attnbook.approx.relative_error`, averaged over leading
    dimensions; 0 up to rounding for the exact variants. query, key (..., n, d), value
    (..., n, dv); ``seed``, ``lsh_scale`` and ``sizes`` as in :func:`kernels`. Deterministic.
    Cost: one call of each kernel and of each distinct reference. Explained in §7.1.
    """
    from .approx import relative_error

    fns = kernels(names, seed=seed, lsh_scale=lsh_scale, **sizes)
    exact, shared = reference("naive", query, key, value), None
    errors = {}
    with torch.no_grad():
        for name, fn in fns.items():
            if name == "lsh":
                shared = reference("lsh", query, key, value, lsh_scale=lsh_scale) if shared is None else shared
            want = shared if name == "lsh" else exact
            errors[name] = relative_error(fn(query, key, value), want).mean().item()
    return errors


# ---------------------------------------------------------------- drawing

def draw_steps(ax, names=None):
    """The atlas as a grid: one row per variant, one column per step it may change (§7.1).

    A filled square marks a changed step, in the colour of the variant's fidelity; the
    section is written at the right. Returns ``ax``.
    """
    from matplotlib.patches import Rectangle

    names = _names(names)
    for row, name in enumerate(names):
        v = VARIANTS[name]
        for col, step in enumerate(STEPS):
            changed = step in v.steps
            ax.add_patch(Rectangle((col - 0.42, row - 0.38), 0.84, 0.76, linewidth=0.6, edgecolor="0.6",
                                   facecolor=COLOURS[v.fidelity] if changed else "white"))
        ax.text(len(STEPS) - 0.4, row, f"§{v.section}", va="center", fontsize=8, color="0.3")
    ax.set_xlim(-0.5, len(STEPS) + 0.2)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xticks(range(len(STEPS)), [STEP_HEADINGS[s] for s in STEPS], fontsize=8)
    ax.set_yticks(range(len(names)), [VARIANTS[n].label for n in names], fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return ax


def legend_handles(kind="marker"):
    """Matplotlib handles for a legend of the fidelities: markers (as in :func:`draw_map`) or,
    with kind "patch", coloured squares (as in :func:`draw_steps` and :func:`draw_choice`). §7.1."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if kind == "patch":
        return [Patch(facecolor=COLOURS[f], edgecolor="0.6", label=f) for f in FIDELITIES]
    if kind != "marker":
        raise ValueError(f"kind must be 'marker' or 'patch', got {kind!r}")
    return [Line2D([], [], marker=MARKERS[f], color=COLOURS[f], linestyle="none", label=f) for f in FIDELITIES]


def draw_map(ax, points, *, floor=1e-6, xlabel="counted FLOPs", ylabel="relative error of the output"):
    """Scatter ``points`` {name: (cost, error)} on log axes, coloured and shaped by fidelity (§7.1).

    Errors below ``floor`` (the exact variants: rounding only) are drawn on the floor line,
    marked "exact". Each point carries the variant's short label (stacked when points
    coincide, higher up when a label to its left is close). Returns ``ax``.
    """
    _checks.positive(floor, "floor")
    if not isinstance(points, dict) or not points:
        raise TypeError("points must be a non-empty dict {name: (cost, error)}")
    stacked, placed = {}, []            # points drawn at one place: labels one above the other
    for name, (cost, error) in sorted(points.items(), key=lambda item: item[1][0]):
        v = variant(name)
        if not cost > 0 or not error >= 0:
            raise ValueError(f"points[{name!r}] must have a cost > 0 and an error >= 0, got {(cost, error)}")
        y = max(error, floor)
        above = stacked[cost, y] = stacked.get((cost, y), -1) + 1
        at = (math.log10(cost), math.log10(y))
        crowded = above == 0 and any(0 < at[0] - x < 0.45 and abs(at[1] - z) < 0.2 for x, z in placed)
        placed.append(at)
        ax.plot(cost, y, MARKERS[v.fidelity], color=COLOURS[v.fidelity], ms=7, mec="black", mew=0.4)
        offset = (5, 13) if crowded else (5, 4 + 9 * above)       # higher up when a label is near
        ax.annotate(v.short, (cost, y), textcoords="offset points", xytext=offset, fontsize=7)
    ax.axhline(floor, color="0.6", lw=0.8, ls=":")
    ax.text(0.01, floor * 1.4, "exact (rounding only)", transform=ax.get_yaxis_transform(), fontsize=7,
            color="0.4")
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
    return ax


def draw_choice(ax, verdicts, *, title=None):
    """Horizontal bars of counted FLOPs, one per :class:`Verdict`: coloured by fidelity when it
    qualifies, grey and hatched when not; at the right of the axes, its memory or its first
    reason (§7.1).

    The first call on ``ax`` builds the bars; later calls with the same variants only update
    lengths, colours and texts (fast enough for the frames of a widget). Returns ``ax``.
    """
    if not verdicts or not all(isinstance(v, Verdict) for v in verdicts):
        raise TypeError("verdicts must be a non-empty list of Verdict (from attnbook.atlas.assess)")
    names = tuple(v.name for v in verdicts)
    built = getattr(ax, "_attnbook_choice", None)
    if built is None or built[0] != names:
        ax.clear()
        bars = ax.barh(range(len(names)), [1] * len(names), height=0.7, edgecolor="0.4", linewidth=0.5)
        notes = [ax.text(1.02, i, "", va="center", fontsize=7, transform=ax.get_yaxis_transform())
                 for i in range(len(names))]
        ax.set_yticks(range(len(names)), [VARIANTS[n].label for n in names], fontsize=8)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xscale("log")
        ax.set_xlabel("counted FLOPs (one head, one layer)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        built = ax._attnbook_choice = (names, bars, notes)
    _, bars, notes = built
    left = min(v.flops for v in verdicts) / 3
    ax.set_xlim(left, max(v.flops for v in verdicts) * 3)
    for bar, note, v in zip(bars, notes, verdicts):
        fidelity = VARIANTS[v.name].fidelity
        bar.set_x(left)
        bar.set_width(v.flops - left)
        bar.set_facecolor(COLOURS[fidelity] if v.qualifies else REJECTED)
        bar.set_hatch(None if v.qualifies else "///")
        note.set_text(format_bytes(v.bytes) if v.qualifies else v.reasons[0])
        note.set_color("black" if v.qualifies else "0.45")
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax
