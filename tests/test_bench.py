"""The benchmark runs end to end on tiny sizes, so that it cannot rot (the real run is
`python -m attnbook.bench`); its arithmetic (exponents, crossovers) is checked exactly."""
import json
import math

import pytest

from attnbook import bench


def test_growth_exponent_recovers_known_powers():
    sizes = [64, 128, 256, 512]
    assert bench.growth_exponent(sizes, [n for n in sizes]) == pytest.approx(1.0)
    assert bench.growth_exponent(sizes, [3 * n * n for n in sizes]) == pytest.approx(2.0)
    assert math.isnan(bench.growth_exponent([64], [1.0]))


def test_crossover_is_the_first_size_from_which_the_kernel_stays_faster():
    sizes = [1, 2, 3, 4]
    assert bench.crossover(sizes, [2.0, 0.9, 1.1, 0.8]) == 4
    assert bench.crossover(sizes, [2.0, 0.9, 0.8, 0.5]) == 2
    assert bench.crossover(sizes, [2.0, 1.5, 1.2, 1.1]) is None


def test_tiny_run_measures_every_kernel_and_exact_ones_match_sdpa():
    result = bench.run((32, 48), heads=2, dim=8, repeats=1, features=16, landmarks=8, log=lambda *_: None)
    names = set(result["summary"])
    assert names == {"sdpa", "naive", "tiled", "linear", "performer", "nystrom"}
    assert result["summary"]["sdpa"]["time_ratio"] == [1.0, 1.0]
    for row in result["rows"]:
        assert row["seconds"] > 0 and row["bytes"] >= 0
        if row["kernel"] in ("sdpa", "naive", "tiled"):
            assert row["error"] < 1e-5, row  # exact kernels agree with SDPA
    report = bench.report(result)
    assert "time / SDPA time" in report and "crossover" in report
    json.dumps(result)  # the results are JSON-serialisable


def test_unknown_kernel_is_rejected():
    with pytest.raises(ValueError, match="kernels"):
        bench.run((16,), kernels=["sdpa", "nope"], log=lambda *_: None)


def test_naive_attention_is_skipped_beyond_the_memory_budget():
    result = bench.run((64,), heads=1, dim=8, repeats=1, kernels=["naive"], memory_fraction=1e-12,
                       log=lambda *_: None)
    naive = [r for r in result["rows"] if r["kernel"] == "naive"]
    assert naive[0]["skipped"] == "memory" and naive[0]["seconds"] is None


def test_main_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--sizes", "16", "24", "--heads", "1", "--dim", "8", "--repeats", "1",
                       "--kernels", "tiled", "linear", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["summary"]) == {"sdpa", "tiled", "linear"}


def test_time_ratios_are_per_round_medians(monkeypatch):
    """A kernel twice as slow as SDPA in every round has ratio 2 even if the load changes."""
    load = iter([1.0, 2.0, 10.0, 20.0, 3.0, 6.0])  # rounds: (sdpa, tiled) under changing load
    monkeypatch.setattr(bench, "_seconds", lambda fn, q, k, v: next(load))
    rounds = bench.time_rounds({"sdpa": None, "tiled": None}, None, None, None, repeats=3)
    assert rounds == {"sdpa": [1.0, 10.0, 3.0], "tiled": [2.0, 20.0, 6.0]}


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats"):
        bench.run((16,), repeats=0, log=lambda *_: None)


def test_return_large_blocks_keeps_a_loop_of_varying_sizes_from_growing_the_process():
    import pathlib
    import sys

    import torch

    from attnbook.bench import return_large_blocks

    if not (sys.platform.startswith("linux") and pathlib.Path("/proc/self/status").exists()):
        pytest.skip("glibc's allocator and /proc are Linux-only")
    assert return_large_blocks() is True

    def rss():
        line = next(l for l in pathlib.Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS"))
        return int(line.split()[1]) * 1024

    before = rss()
    for n in range(40):  # tensors of 8 to 48 MB, freed at once
        torch.empty((2 + n % 10) * 1024 * 1024, dtype=torch.float32).fill_(1.0)
    assert rss() - before < 64 * 1024 * 1024, "freed tensors were kept by the allocator"
