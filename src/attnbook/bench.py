"""Benchmark: time and peak memory of every exact and efficient kernel against PyTorch's SDPA.

Run ``python -m attnbook.bench`` (``--help`` for options). For each sequence length n it
measures each kernel on query, key and value of shape (B, H, n, d), prints the time and peak
memory as ratios to SDPA measured in the same run (the kernels take turns, round after round,
so that a change of the machine's load affects them alike), fits the log-log growth exponent of time
and memory against n, reports the crossover lengths (the first n from which a kernel is faster
than SDPA), and writes everything as JSON. Explained in §5.2 and §5.3.

Memory is the peak extra memory of one call: on CUDA ``torch.cuda.max_memory_allocated``; on
the CPU the rise of the process's peak resident memory (Linux ``VmHWM``, reset before the
call), with glibc's malloc first returning the memory it keeps to the system and, for that
call only, mapping every block of 128 KiB or more afresh, so that each large tensor shows in
the resident memory. Timings are taken in separate calls, with malloc's usual settings.
"""
import argparse
import ctypes
import json
import math
import pathlib
import statistics
import sys
import time

import torch

from . import _checks
from .attention import attention

M_MMAP_THRESHOLD = -3  # glibc mallopt parameters
M_TRIM_THRESHOLD = -1
DEFAULT_SIZES = (256, 512, 1024, 2048, 4096, 8192, 16384)



def return_large_blocks(threshold=128 * 1024):
    """Have glibc map every block of ≥ ``threshold`` bytes fresh and unmap it when freed.

    glibc raises its mmap threshold after large blocks are freed, and then serves big tensors
    from its heap, which does not shrink: a loop that allocates tensors of varying sizes can
    grow a process by hundreds of MB that it no longer uses. A fixed threshold gives that
    memory back at once. Returns True when applied (Linux with glibc), False elsewhere.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return hasattr(libc, "mallopt") and bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))

def _kernels(features, landmarks):
    """name -> fn(q, k, v) for every kernel measured; SDPA is the reference."""
    from .flash import tiled_attention
    from .linear import linear_attention, performer_attention
    from .lowrank import nystrom_attention

    sdpa = torch.nn.functional.scaled_dot_product_attention
    gen = torch.Generator()

    def performer(q, k, v):
        gen.manual_seed(0)
        return performer_attention(q, k, v, features=features, generator=gen)

    return {
        "sdpa": sdpa,
        "naive": lambda q, k, v: attention(q, k, v)[0],
        "tiled": tiled_attention,
        "linear": linear_attention,
        "performer": performer,
        "nystrom": lambda q, k, v: nystrom_attention(q, k, v, landmarks=min(landmarks, k.shape[-2])),
    }


def _naive_bytes(b, h, n, itemsize):
    """Peak of exact attention (attnbook.attention): about 4·B·H·n² numbers (scores, masked
    scores, exponentials and weights; measured 8 GiB at B=1, H=8, n=8192 in float32)."""
    return 4 * b * h * n * n * itemsize


def _available_bytes():
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


class _PeakMemory:
    """Peak extra bytes allocated during a call (CUDA allocator, or the process's VmHWM on Linux)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.linux = pathlib.Path("/proc/self/clear_refs").exists()
        self.libc = None
        if self.linux and not self.cuda:
            try:
                self.libc = ctypes.CDLL("libc.so.6")
            except OSError:
                pass

    def _mallopt(self, parameter, size):
        if self.libc is not None and hasattr(self.libc, "mallopt"):
            self.libc.mallopt(parameter, size)

    def _rss(self, field):
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif self.linux:
            self._mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # large blocks come fresh from the system
            if self.libc is not None and hasattr(self.libc, "malloc_trim"):
                self.libc.malloc_trim(0)  # free memory kept by malloc goes back: reuse shows again
            pathlib.Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = self._rss("VmRSS:")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        elif self.linux:
            self.bytes = max(0, self._rss("VmHWM:") - self.base)
            # For timing, what glibc's dynamic thresholds reach in a long-running process: blocks
            # up to 32 MiB come from the heap, and freed ones stay there for reuse. A fixed mmap
            # threshold leaves the trim threshold at 128 KiB, which hands every freed block back
            # to the system: kernels that allocate a tile per step then pay page faults each
            # time (tiled attention measured 1.5x SDPA instead of 1.2x).
            self._mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
            self._mallopt(M_TRIM_THRESHOLD, 64 * 2**20)
        else:
            self.bytes = float("nan")


def _seconds(fn, q, k, v):
    """Wall-clock seconds of one call (synchronising CUDA before and after)."""
    if q.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(q, k, v)
    if q.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_and_error(fn, q, k, v, *, reference=None):
    """(peak extra bytes, max |output - reference|) of one call of ``fn(q, k, v)`` after a
    warm-up call; the error is None without a reference."""
    with torch.no_grad():
        fn(q, k, v)
        with _PeakMemory(q.device) as peak:
            out = fn(q, k, v)
        error = None if reference is None else (out - reference).abs().max().item()
    return peak.bytes, error


def measure(fn, q, k, v, *, repeats=3, min_time=0.0, reference=None):
    """(median seconds, peak extra bytes, max |output - reference|) of ``fn(q, k, v)``:
    at least ``repeats`` timed calls and ``min_time`` seconds, after :func:`peak_and_error`."""
    _checks.positive(repeats, "repeats", integer=True)
    peak, error = peak_and_error(fn, q, k, v, reference=reference)
    times = []
    with torch.no_grad():
        while len(times) < repeats or sum(times) < min_time:
            times.append(_seconds(fn, q, k, v))
    return statistics.median(times), peak, error


def time_rounds(fns, q, k, v, *, repeats=3):
    """{name: [seconds of each round]}: every function timed once per round, in turn.

    Interleaving the kernels makes their ratios robust to a machine whose load changes
    during the run: a slow moment slows every kernel of that round alike.
    """
    rounds = {name: [] for name in fns}
    with torch.no_grad():
        for _ in range(repeats):
            for name, fn in fns.items():
                rounds[name].append(_seconds(fn, q, k, v))
    return rounds


def growth_exponent(sizes, values):
    """Least-squares slope of log(value) against log(n): ≈ 1 for linear, ≈ 2 for quadratic growth."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(sizes, values) if v and v > 0 and math.isfinite(v)]
    if len(pts) < 2:
        return float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else float("nan")


def crossover(sizes, ratios):
    """The first n from which the kernel stays faster than SDPA (time ratio < 1), or None."""
    for i, n in enumerate(sizes):
        if all(r is not None and r < 1 for r in ratios[i:]):
            return n
    return None


def run(sizes=DEFAULT_SIZES, *, batch=1, heads=8, dim=64, device="cpu", dtype=torch.float32,
        kernels=None, repeats=5, features=256, landmarks=64, memory_fraction=0.25, log=print):
    """Measure every kernel at every size; return the results as a dict (see the module doc)."""
    _checks.positive(repeats, "repeats", integer=True)
    device = torch.device(device)
    table = _kernels(features, landmarks)
    names = list(kernels or table)
    unknown = set(names) - set(table)
    if unknown:
        raise ValueError(f"kernels must be among {sorted(table)}, got {sorted(unknown)}")
    if "sdpa" not in names:
        names.insert(0, "sdpa")
    budget = memory_fraction * (_available_bytes() if device.type == "cpu"
                                else torch.cuda.mem_get_info(device)[0])
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(batch, heads, n, dim, generator=g).to(device=device, dtype=dtype)
                   for _ in range(3))
        with torch.no_grad():
            reference = table["sdpa"](q, k, v)
        measured = {}
        for name in names:
            if name == "naive" and _naive_bytes(batch, heads, n, itemsize) > budget:
                rows.append({"kernel": name, "n": n, "seconds": None, "bytes": None, "error": None,
                             "ratio": None, "skipped": "memory"})
                continue
            peak, error = peak_and_error(table[name], q, k, v, reference=reference)
            measured[name] = {"kernel": name, "n": n, "bytes": peak, "error": error}
        rounds = time_rounds({name: table[name] for name in measured}, q, k, v, repeats=repeats)
        for name, row in measured.items():
            row["seconds"] = statistics.median(rounds[name])
            row["ratio"] = statistics.median(t / t0 for t, t0 in zip(rounds[name], rounds["sdpa"]))
            rows.append(row)
            log(f"  n={n:>6} {name:>9}: {row['seconds'] * 1e3:9.2f} ms ({row['ratio']:5.2f} x SDPA), "
                f"{row['bytes'] / 2**20:9.1f} MiB, max error {row['error']:.1e}")
        del q, k, v, reference
    return summarise(rows, names, list(sizes), config=dict(batch=batch, heads=heads, dim=dim,
                                                            device=str(device), dtype=str(dtype),
                                                            features=features, landmarks=landmarks))


def summarise(rows, names, sizes, config):
    """Ratios to SDPA, growth exponents and crossovers from the raw rows."""
    ref = {r["n"]: r for r in rows if r["kernel"] == "sdpa"}
    summary = {}  # time ratios: the median over rounds of (kernel time / SDPA time in that round)
    for name in names:
        mine = {r["n"]: r for r in rows if r["kernel"] == name}
        time_ratio = [mine[n]["ratio"] for n in sizes]
        mem_ratio = [mine[n]["bytes"] / ref[n]["bytes"] if mine[n]["bytes"] and ref[n]["bytes"] else None
                     for n in sizes]
        measured = [n for n in sizes if mine[n]["seconds"]]
        summary[name] = {
            "time_ratio": time_ratio,
            "memory_ratio": mem_ratio,
            "time_exponent": growth_exponent(measured, [mine[n]["seconds"] for n in measured]),
            "memory_exponent": growth_exponent(measured, [mine[n]["bytes"] for n in measured]),
            "crossover": crossover(sizes, time_ratio) if name != "sdpa" else None,
        }
    return {"config": config, "sizes": sizes, "rows": rows, "summary": summary}


def _table(title, sizes, summary, key, exponent, extra=None):
    lines = [title, f"{'kernel':>10} " + " ".join(f"{n:>7}" for n in sizes) + "  exponent"
             + (f"  {extra[0]:>9}" if extra else "")]
    for name, s in summary.items():
        cells = " ".join(f"{r:7.2f}" if r is not None else f"{'-':>7}" for r in s[key])
        tail = f"{s[exponent]:10.2f}" + (f"  {extra[1](s):>9}" if extra else "")
        lines.append(f"{name:>10} {cells}{tail}")
    return lines


def report(result):
    """The results as text: time and memory ratios to SDPA, growth exponents, crossovers, errors."""
    sizes, summary, rows = result["sizes"], result["summary"], result["rows"]
    lines = _table("time / SDPA time", sizes, summary, "time_ratio", "time_exponent",
                   ("crossover", lambda s: s["crossover"] or "-"))
    lines += [""] + _table("peak memory / SDPA peak memory", sizes, summary, "memory_ratio", "memory_exponent")
    sdpa = {r["n"]: r for r in rows if r["kernel"] == "sdpa"}
    lines += ["", "SDPA itself: " + ", ".join(f"n={n}: {sdpa[n]['seconds'] * 1e3:.1f} ms, "
                                             f"{sdpa[n]['bytes'] / 2**20:.1f} MiB" for n in sizes)]
    errors = {}
    for r in rows:
        if r.get("error") is not None:
            errors[r["kernel"]] = max(errors.get(r["kernel"], 0.0), r["error"])
    lines += ["largest |output - SDPA output|: " + ", ".join(f"{k} {e:.1e}" for k, e in errors.items())]
    return "\n".join(lines)


def main(argv=None):
    """Command line: python -m attnbook.bench [--sizes ...] [--json FILE] [--device cpu|cuda]."""
    p = argparse.ArgumentParser(prog="python -m attnbook.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="sequence lengths (default 256 ... 16384 on the CPU, up to 65536 on a GPU)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--kernels", nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=5, help="timing rounds per size (default 5)")
    p.add_argument("--json", default="bench.json", help="where to write the results (default bench.json)")
    args = p.parse_args(argv)
    sizes = args.sizes or (DEFAULT_SIZES if args.device == "cpu" else DEFAULT_SIZES + (32768, 65536))
    print(f"attnbook.bench: B={args.batch}, H={args.heads}, d={args.dim}, {args.dtype} on {args.device}")
    result = run(sizes, batch=args.batch, heads=args.heads, dim=args.dim, device=args.device,
                 dtype=getattr(torch, args.dtype), kernels=args.kernels, repeats=args.repeats)
    print(report(result))
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
