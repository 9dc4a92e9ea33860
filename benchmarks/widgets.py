"""How long a live widget update (compute + redraw) takes, per view and size.

Run: `make bench-widgets` (or `.venv/bin/python benchmarks/widgets.py`). For each view of
attnbook.widgets.AttentionExplorer(live=True) it changes the temperature (which invalidates
the cached weights, so it recomputes and redraws) many times and prints the median and the
slowest update. The goal is a median of at most 100 ms on a 2-core CPU.
"""
import json
import statistics
import sys
import time

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

from attnbook.widgets import TEMPERATURES, AttentionExplorer  # noqa: E402

GOAL_MS = 100


def measure(length, view, repeats=3):
    """Milliseconds of each update of a live explorer over `length` tokens in `view`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(length, 8, generator=g)
    explorer = AttentionExplorer(x, x, controls=("temperature", "view"), live=True)
    explorer.controls["view"].value = view
    times = []
    for _ in range(repeats):
        for t in TEMPERATURES:
            explorer._cache.clear()  # force the computation too, not only the redraw
            start = time.perf_counter()
            explorer.controls["temperature"].value = t
            times.append((time.perf_counter() - start) * 1000)
    return times


def main():
    rows = []
    for length in (6, 12, 24):
        for view in ("heatmap", "heads", "arcs"):
            ms = measure(length, view)
            rows.append({"tokens": length, "view": view, "median_ms": round(statistics.median(ms), 1),
                         "max_ms": round(max(ms), 1)})
    print(f"{'tokens':>6} {'view':>8} {'median ms':>10} {'max ms':>8}")
    for r in rows:
        print(f"{r['tokens']:>6} {r['view']:>8} {r['median_ms']:>10} {r['max_ms']:>8}")
    worst = max(r["median_ms"] for r in rows)
    print(f"slowest median update: {worst} ms (goal: at most {GOAL_MS} ms)")
    if "--json" in sys.argv:
        print(json.dumps(rows))
    return 0 if worst <= GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
