"""Where the memory and the time of attention go: bytes moved, FLOPs and the roofline (§5.3).

A kernel's time is bounded by two rates: the processor's arithmetic (peak FLOP/s) and the
bandwidth of the memory it streams its data from (bytes/s). The roofline model (Williams,
Waterman and Patterson 2009) puts them on one chart: a kernel that performs I FLOPs per byte
moved (its *arithmetic intensity*) can reach at most min(peak, I · bandwidth). This module
counts FLOPs and bytes of exact attention computed naively (the score matrix goes to main
memory and back) and fused, tile by tile (FlashAttention, Dao et al. 2022: the scores never
leave fast memory); measures what the machine achieves on a matrix product and on a copy;
estimates a CPU's peak where its model can be read from ``/proc/cpuinfo``; lists what
autograd saves for the backward pass (activation checkpointing, Chen et al. 2016); counts
the FLOPs of incremental decoding with and without a KV cache; and prepares the frames of
the animation of tiled attention's schedule.

References (book/references.bib): ``williams2009roofline``, ``dao2022flashattention``,
``rabe2021self``, ``chen2016training``.
"""
import dataclasses
import math
import os
import pathlib
import re
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import _checks
from .bench import _PeakMemory
from .checkpoint import _check_callable, _is_parameter_like
from .flash import tile_schedule

KINDS = ("naive", "fused")

# States of a tile in the frames of tiled attention's schedule (see tile_frames).
PENDING, DONE, CURRENT, SKIPPED = 0, 1, 2, 3


# ---------------------------------------------------------------- counting FLOPs and bytes

@dataclasses.dataclass(frozen=True)
class Cost:
    """FLOPs, bytes moved to and from main memory, and extra numbers held, of one kernel call.

    ``extra`` counts the numbers the kernel keeps besides its inputs and outputs (the score
    matrix for naive attention, one tile and a running state for the fused kernel).
    ``intensity`` = flops / bytes, in FLOPs per byte. Explained in §5.3.
    """

    flops: int
    bytes: int
    extra: int

    @property
    def intensity(self):
        """Arithmetic intensity: FLOPs per byte moved."""
        return self.flops / self.bytes if self.bytes else math.inf


def attention_cost(lq, lk, d, dv=None, *, kind="naive", batch=1, heads=1, itemsize=4,
                   block_q=512, block_k=256, is_causal=False):
    """FLOPs, bytes moved and extra memory of exact attention softmax(Q Kᵀ/√d) V, counted.

    FLOPs: the two matrix products, 2·d and 2·dv FLOPs per score (the softmax's few
    operations per score, a factor ~d fewer, are left out).
    ``naive`` (unfused, as :func:`attnbook.attention`): every step reads its inputs from and
    writes its result to main memory: read Q, K, write S (Lq·Lk); read S, write P; read P, V,
    write O. Bytes = itemsize·(Lq·d + Lk·d + Lk·dv + Lq·dv + 4·Lq·Lk); extra = 2·Lq·Lk
    (S and P while the softmax runs); all Lq·Lk scores are computed, causal or not.
    ``fused`` (FlashAttention's schedule, as :func:`attnbook.flash.tiled_attention`): for each
    block of block_q queries, read its Q once, stream every computed tile's K and V blocks,
    write its O once; the scores stay in fast memory. Bytes = itemsize·(Lq·(d + dv) +
    Σ_tiles block_k·(d + dv)) ≈ itemsize·(Lq·(d + dv) + ⌈Lq/block_q⌉·Lk·(d + dv)); FLOPs
    count only the tiles visited (with ``is_causal``, about half); extra = block_q·block_k
    (one tile) + block_q·(dv + 2) (the running acc, m and l of one query block).
    Everything is multiplied by batch·heads. dv defaults to d. Returns a :class:`Cost`.
    Cost O(⌈Lq/block_q⌉·⌈Lk/block_k⌉) to count. Explained in §5.3.
    """
    dv = d if dv is None else dv
    for name, n in (("lq", lq), ("lk", lk), ("d", d), ("dv", dv), ("batch", batch), ("heads", heads),
                    ("itemsize", itemsize), ("block_q", block_q), ("block_k", block_k)):
        _checks.positive(n, name, integer=True)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "naive":
        flops = 2 * lq * lk * (d + dv)
        moved = lq * d + lk * d + lk * dv + lq * dv + 4 * lq * lk
        extra = 2 * lq * lk
    else:
        computed = tile_schedule(lq, lk, block_q, block_k, is_causal=is_causal)
        rows = torch.tensor([min(block_q, lq - i) for i in range(0, lq, block_q)])
        cols = torch.tensor([min(block_k, lk - j) for j in range(0, lk, block_k)])
        scores = int((computed * rows[:, None] * cols[None, :]).sum())
        streamed = int((computed * cols[None, :]).sum())   # keys read, summed over query blocks
        flops = 2 * scores * (d + dv)
        moved = lq * (d + dv) + streamed * (d + dv)
        extra = min(block_q, lq) * min(block_k, lk) + min(block_q, lq) * (dv + 2)
    n = batch * heads
    return Cost(flops=n * flops, bytes=n * moved * itemsize, extra=n * extra)


def roofline(intensity, peak_gflops, bandwidth_gbs):
    """Attainable GFLOP/s = min(peak, intensity · bandwidth) (Williams et al. 2009).

    intensity in FLOPs per byte (a number or a tensor), peak in GFLOP/s, bandwidth in GB/s
    (10⁹ bytes per second). Below the ridge point peak / bandwidth a kernel is memory-bound:
    more FLOPs per byte would make it faster; above it, compute-bound. Explained in §5.3.
    """
    _checks.positive(peak_gflops, "peak_gflops")
    _checks.positive(bandwidth_gbs, "bandwidth_gbs")
    if isinstance(intensity, torch.Tensor):
        if (intensity < 0).any():
            raise ValueError("intensity must be >= 0 FLOPs per byte")
        return torch.clamp(intensity * bandwidth_gbs, max=peak_gflops)
    if isinstance(intensity, bool) or not isinstance(intensity, (int, float)) or not intensity >= 0:
        raise ValueError(f"intensity must be a number >= 0 (FLOPs per byte), got {intensity!r}")
    return min(peak_gflops, intensity * bandwidth_gbs)


def ridge_point(peak_gflops, bandwidth_gbs):
    """The intensity peak / bandwidth (FLOPs per byte) at which a kernel stops being memory-bound. §5.3."""
    return _checks.positive(peak_gflops, "peak_gflops") / _checks.positive(bandwidth_gbs, "bandwidth_gbs")


def count_flops(fn, *args, **kwargs):
    """FLOPs that ``fn(*args, **kwargs)`` performs in matrix products, counted by torch.

    Uses ``torch.utils.flop_counter.FlopCounterMode``, which counts 2·m·k·n for every
    (m × k)(k × n) product (mm, bmm, addmm, convolutions, SDPA) and nothing for elementwise
    operations. Deterministic: it follows the shapes, not the clock. Backward passes run
    inside ``fn`` (``loss.backward()``) are counted too, recomputations included.
    Returns (result of fn, FLOPs as an int). Explained in §5.3.
    """
    _check_callable(fn, "fn")
    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return result, int(counter.get_total_flops())


# ---------------------------------------------------------------- what autograd saves

@dataclasses.dataclass(frozen=True)
class Saved:
    """One tensor that autograd keeps for the backward pass: its shape, dtype and bytes."""

    shape: tuple
    dtype: torch.dtype
    bytes: int


def saved_tensors(fn, *inputs):
    """The distinct tensors that fn(*inputs) saves for its backward pass, largest first.

    Same rules as :func:`attnbook.checkpoint.activation_memory` (the inputs, the parameters
    and their views are not listed; a storage saved twice is listed once, with the shape of
    its first view), so that ``sum(s.bytes for s in saved_tensors(fn, *x))`` equals
    ``activation_memory(fn, *x)``. Returns a list of :class:`Saved`. Cost: one forward pass.
    Explained in §5.3.
    """
    _check_callable(fn, "fn")
    held = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    saved = {}  # data pointer -> (Saved, storage); holding the storage keeps its pointer unique

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in held and ptr not in saved and not _is_parameter_like(t):
            saved[ptr] = (Saved(tuple(t.shape), t.dtype, storage.nbytes()), storage)
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sorted((s for s, _ in saved.values()), key=lambda s: -s.bytes)


def checkpoint_memory(layers, per_layer, boundary, segment):
    """Peak activation numbers of a stack of ``layers`` checkpointed in segments of ``segment`` layers.

    Each layer saves ``per_layer`` numbers for its backward pass when it is not checkpointed;
    ``boundary`` is the size of the tensor that passes from one layer to the next (B·L·E).
    Checkpointing segments of s layers keeps the input of every segment but the first
    (the stack's input is kept anyway), (⌈layers/s⌉ − 1) · boundary numbers, and the backward
    pass recomputes one segment at a time, holding s · per_layer more (an upper count: the
    last segment may be shorter). memory(s) = (⌈layers/s⌉ − 1) · boundary + s · per_layer is
    smallest near s = √(layers · boundary / per_layer), where it grows like √layers
    (Chen et al. 2016). s = 1 checkpoints every layer; s = layers, one segment, keeps as much
    as no checkpointing, layers · per_layer. Returns an int. Explained in §5.3.
    """
    for name, n in (("layers", layers), ("segment", segment)):
        _checks.positive(n, name, integer=True)
    for name, n in (("per_layer", per_layer), ("boundary", boundary)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be an integer >= 0 (numbers), got {n!r}")
    if segment > layers:
        raise ValueError(f"segment must lie in 1..layers = 1..{layers}, got {segment}")
    return (math.ceil(layers / segment) - 1) * boundary + segment * per_layer


# ---------------------------------------------------------------- measuring the machine

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_seconds(fns, *args, repeats=3, warmup=1):
    """{name: [seconds of each round]}: every function called once per round, in turn, with
    gradients enabled (so that a training step, forward and backward, can be timed).

    Like :func:`attnbook.bench.time_rounds` (which times inference under ``no_grad``), the
    turns make ratios between the functions robust to a machine whose load changes. Each
    function first runs ``warmup`` untimed calls. CUDA is synchronised around each call.
    """
    if not isinstance(fns, dict) or not fns:
        raise TypeError(f"fns must be a non-empty dict name -> function, got {type(fns).__name__}")
    for name, fn in fns.items():
        _check_callable(fn, f"fns[{name!r}]")
    _checks.positive(repeats, "repeats", integer=True)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    for fn in fns.values():
        for _ in range(warmup):
            fn(*args)
    rounds = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn(*args)
            _sync(device)
            rounds[name].append(time.perf_counter() - start)
    return rounds


def peak_memory(fn, *args):
    """(result, peak extra bytes) of one call ``fn(*args)``, with gradients enabled.

    Measured as :mod:`attnbook.bench` measures it: on CUDA the allocator's peak, on Linux
    the rise of the process's peak resident memory (every block of 128 KiB or more mapped
    afresh for the call); NaN elsewhere. Machine-dependent: print it, do not test it exactly.
    """
    _check_callable(fn, "fn")
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    with _PeakMemory(device) as peak:
        result = fn(*args)
    return result, peak.bytes


def matmul_gflops(m, k=None, n=None, *, dtype=torch.float32, device="cpu", repeats=5, seed=0):
    """Achieved GFLOP/s of one (m × k)(k × n) matrix product: 2·m·k·n / median time / 10⁹.

    k and n default to m. The operands are random (seeded), allocated once; one untimed
    call warms up. Measured, so machine- and load-dependent. Explained in §5.3.
    """
    k, n = (m if k is None else k), (m if n is None else n)
    for name, size in (("m", m), ("k", k), ("n", n)):
        _checks.positive(size, name, integer=True)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(k, n, generator=g).to(device=device, dtype=dtype)
    with torch.no_grad():
        seconds = interleaved_seconds({"mm": torch.matmul}, a, b, repeats=repeats)["mm"]
    return 2 * m * k * n / statistics.median(seconds) / 1e9


def copy_bandwidth_gbs(nbytes=64 * 2**20, *, device="cpu", repeats=5):
    """Achieved memory bandwidth in GB/s of copying ``nbytes`` into another buffer.

    A copy reads and writes every byte: 2·nbytes / median time / 10⁹. Take nbytes well
    above the last-level cache (tens of MiB on a CPU) to measure main memory, not cache.
    Measured, so machine- and load-dependent. Explained in §5.3.
    """
    _checks.positive(nbytes, "nbytes", integer=True)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    with torch.no_grad():
        seconds = interleaved_seconds({"copy": dst.copy_}, src, repeats=repeats)["copy"]
    return 2 * src.numel() * 4 / statistics.median(seconds) / 1e9


@dataclasses.dataclass(frozen=True)
class PeakEstimate:
    """A CPU's peak FLOP/s, estimated as cores × GHz × FLOPs per cycle (an upper estimate).

    ``basis`` says how each factor was found, so that a reader can judge the estimate.
    """

    cores: int
    ghz: float
    flops_per_cycle: int
    gflops: float
    basis: str


def _cpuinfo_field(text, name):
    match = re.search(rf"^{re.escape(name)}\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else None


def cpu_peak_estimate(cpuinfo=None, *, cores=None, dtype=torch.float32):
    """peak ≈ cores × frequency × FLOPs per cycle per core, from a Linux ``/proc/cpuinfo``; or None.

    FLOPs per cycle = 2 vector units × lanes × 2, with lanes = SIMD width / bits of dtype
    (512 bits with the avx512f flag, 256 with avx, 128 with sse2) and 2 FLOPs per lane for a
    fused multiply-add (fma flag; without it, one add and one multiply unit: 2 × lanes).
    Two full-width FMA units per core is an *assumption* (true of most recent x86 server
    cores; a core with one 512-bit unit, or one that splits 512-bit instructions in two,
    reaches half). The frequency is the one the file reports (``cpu MHz``, or "@ x GHz" in
    the model name): the base or current clock, not the turbo clock, and inside a virtual
    machine possibly the host's nominal one. Cores: distinct (physical id, core id) pairs
    (hardware threads of one core share its units), for this machine at most the CPUs this
    process may use, unless ``cores`` is given. Returns a :class:`PeakEstimate`, or None when the file is
    missing or does not say the frequency or the vector extensions (e.g. on ARM or macOS):
    then the peak is unknown. Explained in §5.3.
    """
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    this_machine = cpuinfo is None
    if this_machine:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    if not isinstance(cpuinfo, str):
        raise TypeError(f"cpuinfo must be the text of /proc/cpuinfo or None, got {type(cpuinfo).__name__}")
    flags = set((_cpuinfo_field(cpuinfo, "flags") or "").split())
    mhz = _cpuinfo_field(cpuinfo, "cpu MHz")
    model = _cpuinfo_field(cpuinfo, "model name") or ""
    if mhz is not None:
        ghz, where = float(mhz) / 1000, "the 'cpu MHz' of /proc/cpuinfo"
    elif re.search(r"@\s*([\d.]+)\s*GHz", model):
        ghz, where = float(re.search(r"@\s*([\d.]+)\s*GHz", model).group(1)), "the model name"
    else:
        return None
    bits = 512 if "avx512f" in flags else 256 if "avx" in flags else 128 if "sse2" in flags else None
    if bits is None or not ghz > 0:
        return None
    lanes = bits // (32 if dtype == torch.float32 else 64)
    flops_per_cycle = 2 * lanes * 2 if "fma" in flags else 2 * lanes
    if cores is None:
        blocks = [b for b in cpuinfo.split("\n\n") if _cpuinfo_field(b, "processor") is not None]
        pairs = {(_cpuinfo_field(b, "physical id"), _cpuinfo_field(b, "core id")) for b in blocks}
        cores = len(pairs) if None not in {p for pair in pairs for p in pair} else len(blocks)
        if this_machine and hasattr(os, "sched_getaffinity"):
            cores = max(1, min(cores, len(os.sched_getaffinity(0))))
        core_basis = "physical cores in /proc/cpuinfo usable by this process"
    else:
        _checks.positive(cores, "cores", integer=True)
        core_basis = "cores given"
    units = "2 FMA units" if "fma" in flags else "an add and a multiply unit"
    basis = (f"{cores} core{'s' if cores != 1 else ''} ({core_basis}) x {ghz:.2f} GHz ({where}) x {flops_per_cycle} FLOPs/cycle "
             f"({units} assumed, {bits}-bit vectors, {lanes} lanes of {str(dtype).split('.')[-1]})")
    return PeakEstimate(cores=cores, ghz=ghz, flops_per_cycle=flops_per_cycle,
                        gflops=cores * ghz * flops_per_cycle, basis=basis)


# ---------------------------------------------------------------- the KV cache

@dataclasses.dataclass
class DecodingRun:
    """Outputs and per-step FLOPs of incremental decoding with and without a KV cache."""

    cached: torch.Tensor        # (B, T, E): step t's output, decoded with the cache
    recomputed: torch.Tensor    # (B, T, E): step t's output, from the whole prefix again
    flops_cached: list          # FLOPs of each step with the cache
    flops_recomputed: list      # FLOPs of each step without it
    cache: object               # the KVCache after the last step


def decode_with_and_without_cache(decoder, x, memory, memory_mask=None):
    """Decode the T positions of x one at a time, with a KV cache and without one.

    decoder an :class:`attnbook.transformer.Decoder`, x (B, T, E) the embedded target,
    memory (B, S, E_m). With the cache, step t runs ``decoder.forward_step`` on position t
    alone: one new query, key and value per layer, the query against the t + 1 cached keys.
    Without it, step t runs the causal pass over the whole prefix x[:, :t + 1] again and
    keeps its last row. Both outputs must agree with the full causal pass. FLOPs are counted
    by :func:`count_flops` (matrix products only): per layer, with the cache O(E² + t·E) for
    self-attention, without it O((t + 1)·E² + (t + 1)²·E); generating T positions costs
    O(T²·E) with the cache and O(T³·E) without (plus the feed-forward and cross-attention
    terms, linear in t without the cache, constant with it). Returns a :class:`DecodingRun`
    (with the final cache, holding 2·layers·B·T·E numbers).
    Explained in §5.3.
    """
    from .transformer import Decoder, KVCache

    if not isinstance(decoder, Decoder):
        raise TypeError(f"decoder must be an attnbook.transformer.Decoder, got {type(decoder).__name__}")
    _checks.tensor(x, "x", min_dim=3)
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, E), got shape {tuple(x.shape)}")
    cache, cached, recomputed, flops_cached, flops_recomputed = KVCache(decoder.num_layers), [], [], [], []
    with torch.no_grad():
        for t in range(x.shape[1]):
            (y, _), flops = count_flops(decoder.forward_step, x[:, t:t + 1], memory, cache, memory_mask)
            cached.append(y)
            flops_cached.append(flops)
            prefix_mask = None if memory_mask is None else _prefix_mask(memory_mask, t)
            (y, _), flops = count_flops(decoder, x[:, :t + 1], memory, None, prefix_mask)
            recomputed.append(y[:, -1:])
            flops_recomputed.append(flops)
    return DecodingRun(torch.cat(cached, 1), torch.cat(recomputed, 1), flops_cached, flops_recomputed, cache)


def _prefix_mask(memory_mask, t):
    """The memory mask of the first t + 1 queries (a (…, 1, S) padding mask is kept whole)."""
    return memory_mask if memory_mask.dim() < 2 or memory_mask.shape[-2] == 1 else memory_mask[..., :t + 1, :]


# ---------------------------------------------------------------- the tile animation

@dataclasses.dataclass(frozen=True)
class TileFrame:
    """One frame of the animation of tiled attention's schedule.

    ``grid`` (⌈Lq/block_q⌉, ⌈Lk/block_k⌉) int8: PENDING, DONE, CURRENT or SKIPPED per tile;
    ``tile`` the (query block, key block) being computed, None in the first frame;
    ``finished`` the number of queries whose output rows have been written.
    """

    step: int
    tile: tuple
    grid: torch.Tensor
    finished: int


def tile_frames(lq, lk, block_q, block_k, *, is_causal):
    """The frames of tiled attention's loop: frame 0 before any tile, frame s after s tiles.

    The order is that of :func:`attnbook.flash.tiled_attention`: query blocks in turn, and
    within one, its computed key blocks left to right. Tiles that the causal schedule
    (:func:`attnbook.flash.tile_schedule`) skips are SKIPPED in every frame. A query block's
    output rows count as finished from the frame of its last tile on. Returns a list of
    1 + (number of computed tiles) :class:`TileFrame`. Cost O(frames · tiles). Explained in §5.3.
    """
    computed = tile_schedule(lq, lk, block_q, block_k, is_causal=is_causal)
    base = torch.where(computed, PENDING, SKIPPED).to(torch.int8)
    order = [(i, j) for i in range(computed.shape[0]) for j in range(computed.shape[1]) if computed[i, j]]
    frames = [TileFrame(0, None, base.clone(), 0)]
    grid, finished = base.clone(), 0
    for step, (i, j) in enumerate(order, start=1):
        grid = grid.clone()
        grid[grid == CURRENT] = DONE
        grid[i, j] = CURRENT
        if not computed[i, j + 1:].any():         # the last tile of query block i: write its rows
            finished = min(lq, (i + 1) * block_q)
        frames.append(TileFrame(step, (i, j), grid, finished))
    return frames


TILE_COLOURS = {PENDING: "#ffffff", DONE: "#7fb3d5", CURRENT: "#e69f00", SKIPPED: "#d9d9d9"}


def draw_tile_frame(ax, frame, lq, lk, block_q, block_k):
    """Draw one :class:`TileFrame` on ``ax``: the Lq × Lk score matrix cut into tiles.

    Pending tiles white, computed ones blue, the current one orange, skipped ones grey and
    hatched (Okabe-Ito colours, distinguishable with colour-blindness); a bar at the right
    (tick "O") shows the output rows already written. The first call on ``ax`` builds the
    patches; later calls with the same sizes only recolour them (fast enough to render the
    frames of a widget). Returns ``ax``. Explained in §5.3.
    """
    from matplotlib.patches import Rectangle

    rows, cols = frame.grid.shape
    key = (rows, cols, lq, lk, block_q, block_k)
    built = getattr(ax, "_attnbook_tiles", None)
    if built is None or built[0] != key or not all(p.axes is ax for p in built[1]):
        ax.clear()
        tiles = {}
        for i, j in ((i, j) for i in range(rows) for j in range(cols)):
            x0, y0 = j * block_k, i * block_q
            tiles[i, j] = ax.add_patch(Rectangle((x0, y0), min(block_k, lk - x0), min(block_q, lq - y0),
                                                 edgecolor="0.3", lw=0.8))
        gap = max(1, lk // 20)
        ax.add_patch(Rectangle((lk + gap, 0), 2 * gap, lq, facecolor="white", edgecolor="0.3", lw=0.8))
        bar = ax.add_patch(Rectangle((lk + gap, 0), 2 * gap, 0, facecolor="#009e73", edgecolor="0.3", lw=0.8))
        ax.set_xlim(0, lk + 3 * gap)
        ax.set_ylim(lq, 0)
        ax.set_aspect("equal")
        ticks = list(range(0, lk + 1, block_k))
        ax.set_xticks(ticks + [lk + 2 * gap], [str(t) for t in ticks] + ["O"])
        ax.set_yticks(range(0, lq + 1, block_q))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("keys", fontsize=8)
        ax.set_ylabel("queries", fontsize=8)
        built = ax._attnbook_tiles = (key, list(tiles.values()) + [bar], tiles, bar)
    _, _, tiles, bar = built
    for (i, j), patch in tiles.items():
        state = int(frame.grid[i, j])
        patch.set_facecolor(TILE_COLOURS[state])
        patch.set_hatch("///" if state == SKIPPED else None)
    bar.set_height(frame.finished)
    return ax
