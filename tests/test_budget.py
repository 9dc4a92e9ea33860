"""attnbook.budget: reading the machine, the memory cap, peak counts, the longest length, power laws."""
import math
import pathlib
import sys

import numpy as np
import pytest
import torch

from support import LiveTensors

from attnbook import attention
from attnbook.bench import growth_exponent, peak_and_error
from attnbook.budget import (METHODS, TIME_EXPONENTS, MemoryCap, anchored_power_law, available_bytes,
                             document_tokens, draw_memory, fit_power_law, format_bytes, format_seconds,
                             image_tokens, kernels,
                             length_ladder, max_length, memory_cap, peak_bytes, peak_numbers,
                             resident_bytes, score_matrix_bytes)
from attnbook.masks import sliding_window_mask

LINUX = pathlib.Path("/proc/self/status").exists() and sys.platform.startswith("linux")

MEMINFO = """MemTotal:       24683520 kB
MemFree:        21925136 kB
MemAvailable:   23478912 kB
Buffers:          123456 kB
Cached:          2000000 kB
"""
OLD_MEMINFO = "MemTotal: 1000 kB\nMemFree: 300 kB\nBuffers: 20 kB\nCached: 100 kB\n"
STATUS = "Name:\tpython\nVmHWM:\t  300000 kB\nVmRSS:\t  262908 kB\nThreads:\t1\n"


# ---------------------------------------------------------------- reading the machine

def test_available_bytes_reads_memavailable_and_falls_back_on_old_kernels():
    assert available_bytes(MEMINFO) == 23478912 * 1024
    assert available_bytes(OLD_MEMINFO) == (300 + 20 + 100) * 1024
    assert available_bytes("MemTotal: 1000 kB\n") is None
    with pytest.raises(TypeError, match="meminfo must be the text of /proc/meminfo"):
        available_bytes(123)


def test_resident_bytes_reads_vmrss_not_the_peak():
    assert resident_bytes(STATUS) == 262908 * 1024
    assert resident_bytes("Name: x\n") is None
    with pytest.raises(TypeError, match="status"):
        resident_bytes(b"VmRSS: 1 kB")


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_the_live_readings_are_plausible_and_follow_an_allocation():
    free = available_bytes()
    assert free is not None and 0 < free <= 2**50
    before = resident_bytes()
    block = torch.ones(40 * 2**20 // 4)                       # 40 MiB, every page touched
    after = resident_bytes()
    assert after - before > 30 * 2**20
    del block


# ---------------------------------------------------------------- the cap

def test_memory_cap_takes_the_smaller_bound():
    by_limit = memory_cap(10**9, 0.25, available=8 * 10**9, in_use=300 * 10**6)
    assert by_limit.cap == 700 * 10**6 and by_limit.bound == "limit"
    by_machine = memory_cap(10**9, 0.25, available=2 * 10**9, in_use=300 * 10**6)
    assert by_machine.cap == 500 * 10**6 and by_machine.bound == "available"
    assert isinstance(by_machine, MemoryCap) and "set by the available" in str(by_machine)
    assert "700 MB" in str(by_limit) and "300 MB in use" in str(by_limit)


def test_memory_cap_with_unknown_available_keeps_only_the_limit(monkeypatch):
    import attnbook.budget as budget

    monkeypatch.setattr(budget, "available_bytes", lambda: None)
    cap = memory_cap(10**9, in_use=10**8)
    assert cap.cap == 9 * 10**8 and cap.available is None and cap.bound == "limit"
    assert "unknown available" in str(cap)


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_memory_cap_of_this_process_stays_inside_both_bounds():
    cap = memory_cap()
    assert 0 < cap.cap <= 10**9 - cap.in_use + 1
    assert cap.cap <= 0.25 * cap.available + 1
    assert cap.in_use > 10 * 2**20                            # python and torch are loaded


@pytest.mark.parametrize("kwargs, message", [
    (dict(limit=0), "limit must be finite and > 0"),
    (dict(fraction=0), "fraction must be finite and > 0"),
    (dict(fraction=1.5), r"fraction must lie in \(0, 1\]"),
    (dict(available=-1, in_use=0), "available must be a number of bytes"),
    (dict(available=10**9, in_use=-5), "in_use must be a number of bytes"),
    (dict(limit=10**8, available=10**10, in_use=2 * 10**8), "no memory left"),
])
def test_memory_cap_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        memory_cap(**kwargs)


# ---------------------------------------------------------------- peak counts

def traced_numbers(method, n, d, dv, window, batch=2, heads=3):
    g = torch.Generator().manual_seed(n)
    q, k = (torch.randn(batch, heads, n, d, generator=g) for _ in range(2))
    v = torch.randn(batch, heads, n, dv, generator=g)
    with torch.no_grad(), LiveTensors((q, k, v)) as live:
        kernels(window)[method](q, k, v)
    return live.peak / 4 / (batch * heads)


# the largest ratio count / traced peak allowed: the counts are exact or upper counts
TIGHTNESS = {"naive": 1.0, "window": 1.05, "linear": 1.25, "tiled": 2.2}


@pytest.mark.parametrize("n, d, dv, window", [(300, 24, 40, 5), (1000, 64, 64, 32), (700, 8, 20, 3)])
@pytest.mark.parametrize("method", list(TIGHTNESS))
def test_counts_bound_the_traced_peak_of_live_tensors(method, n, d, dv, window):
    traced = traced_numbers(method, n, d, dv, window)
    count = peak_numbers(method, n, d, dv, window=window)
    assert traced <= count <= TIGHTNESS[method] * traced + 1, (traced, count)


def test_naive_count_is_exact_and_quadratic():
    for n in (5, 129, 640):
        assert peak_numbers("naive", n, 7, 3) == traced_numbers("naive", n, 7, 3, 1)
    assert peak_numbers("naive", 2000) / peak_numbers("naive", 1000) == pytest.approx(4, rel=1e-3)
    for method in ("sdpa", "tiled", "window", "linear"):
        big, small = peak_numbers(method, 400_000), peak_numbers(method, 200_000)
        assert big / small == pytest.approx(2, rel=0.01), method        # linear in n


def test_sdpa_count_holds_the_visible_output_and_refuses_dv_unequal_d():
    traced = traced_numbers("sdpa", 1000, 64, 64, 0)
    assert traced == 1000 * 65                                  # output and log-sum-exp
    assert peak_numbers("sdpa", 1000, 64) > traced              # plus the kernel's own tile
    with pytest.raises(ValueError, match="dv = d"):
        peak_numbers("sdpa", 100, 24, 40)


@pytest.mark.skipif(not LINUX, reason="peak resident memory needs /proc")
@pytest.mark.parametrize("method, n", [("naive", 1536), ("sdpa", 3000), ("window", 1500)])
def test_counts_match_the_measured_peak_resident_memory(method, n):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 64, generator=g) for _ in range(3))
    measured = peak_and_error(kernels(16)[method], q, k, v)[0]
    counted = peak_bytes(method, n, 64, window=16)
    assert 0.75 * counted <= measured <= 1.3 * counted, (measured, counted)


def test_peak_bytes_scales_with_batch_heads_and_itemsize():
    base = peak_numbers("window", 321, 16, 8, window=4)
    assert peak_bytes("window", 321, 16, 8, batch=2, heads=3, itemsize=2, window=4) == 12 * base
    assert peak_bytes("naive", 10**6) == 4 * (4 * 10**12 + 3 * 10**6)   # Python ints: no overflow
    assert peak_numbers("linear", 0) == 0


@pytest.mark.parametrize("call, error, message", [
    (lambda: peak_numbers("flash", 10), ValueError, "method must be one of"),
    (lambda: peak_numbers("naive", 10.5), TypeError, "n must be an integer"),
    (lambda: peak_numbers("naive", -1), ValueError, "n must be an integer >= 0"),
    (lambda: peak_numbers("linear", 10, 0), ValueError, "d must be an integer >= 1"),
    (lambda: peak_numbers("window", 10, window=-2), ValueError, "window must be an integer >= 0"),
    (lambda: peak_bytes("naive", 10, heads=0), ValueError, "heads must be an integer >= 1"),
    (lambda: kernels(2.5), TypeError, "window must be an integer"),
])
def test_counts_reject_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_kernels_compute_what_they_claim():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 37, 8, generator=g, dtype=torch.float64) for _ in range(3))
    fns = kernels(3)
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    for name in ("naive", "sdpa", "tiled"):
        torch.testing.assert_close(fns[name](q, k, v), exact)
    banded = attention(q, k, v, sliding_window_mask(37, window=3))[0]
    torch.testing.assert_close(fns["window"](q, k, v), banded)
    phi = lambda x: torch.nn.functional.elu(x) + 1                       # noqa: E731
    s = phi(q) @ phi(k).transpose(-2, -1)
    torch.testing.assert_close(fns["linear"](q, k, v), (s / s.sum(-1, keepdim=True)) @ v)
    assert set(fns) == set(METHODS)


# ---------------------------------------------------------------- the longest length

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cap", [3_000, 10**6, 6 * 10**8])
def test_max_length_is_the_last_length_that_fits(method, cap):
    n = max_length(method, cap, 64, heads=2)
    if n == 0:
        assert peak_bytes(method, 1, 64, heads=2) > cap
        return
    assert peak_bytes(method, n, 64, heads=2) <= cap < peak_bytes(method, n + 1, 64, heads=2)


def test_max_length_of_naive_attention_is_about_the_root_of_the_cap():
    n = max_length("naive", 10**9)
    assert n == math.isqrt(10**9 // 16) - 1 or n == math.isqrt(10**9 // 16)   # 4n² + 3n ≤ cap / 4
    assert max_length("naive", 10) == 0
    with pytest.raises(ValueError, match="cap_bytes must be finite and > 0"):
        max_length("naive", 0)


def test_length_ladder_doubles_until_the_cap():
    ladder = length_ladder(6 * 10**8)
    assert ladder == [256, 512, 1024, 2048, 4096]              # 8192 would need 1.07 GB
    assert all(peak_bytes("naive", n) <= 6 * 10**8 for n in ladder)
    assert length_ladder(6 * 10**8, "linear", start=1000, factor=10, longest=10**5) == [1000, 10_000, 100_000]
    assert length_ladder(10**3) == []
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        length_ladder(10**9, factor=1)


# ---------------------------------------------------------------- power laws

def test_fit_recovers_an_exact_power_law_and_projects_it():
    lengths = [300, 700, 1100, 5000]
    law = fit_power_law(lengths, [3e-9 * n ** 2.2 for n in lengths])
    assert law.exponent == pytest.approx(2.2) and law.coefficient == pytest.approx(3e-9)
    assert law(10**6) == pytest.approx(3e-9 * 10**13.2)
    assert law.is_projection(10**6) and not law.is_projection(1000) and law.lengths == (300, 700, 1100, 5000)


def test_fit_agrees_with_numpy_and_with_the_benchmark_exponent():
    rng = np.random.default_rng(0)
    lengths = [256, 512, 1024, 2048, 4096, 3000]
    values = [1e-6 * n ** 1.8 * math.exp(rng.normal(0, 0.2)) for n in lengths]
    slope, intercept = np.polyfit(np.log(lengths), np.log(values), 1)
    law = fit_power_law(lengths, values)
    assert law.exponent == pytest.approx(slope) and math.log(law.coefficient) == pytest.approx(intercept)
    assert law.exponent == pytest.approx(growth_exponent(lengths, values))


def test_anchored_law_passes_through_its_point_with_the_counted_exponent():
    law = anchored_power_law(4096, 0.25, TIME_EXPONENTS["naive"])
    assert law(4096) == pytest.approx(0.25) and law(8192) == pytest.approx(1.0)
    assert law.is_projection(10**6) and not law.is_projection(4096)
    exact = fit_power_law([1000, 2000, 4000], [2e-3 * n for n in (1000, 2000, 4000)])
    anchored = anchored_power_law(4000, 8.0, TIME_EXPONENTS["linear"])
    assert anchored(10**6) == pytest.approx(exact(10**6)) and anchored.coefficient == pytest.approx(2e-3)
    assert set(TIME_EXPONENTS) == set(METHODS)
    for args, message in [((0, 1.0, 2), "n must be finite"), ((10, -1.0, 2), "value must be finite"),
                          ((10, 1.0, float("inf")), "exponent must be a finite number")]:
        with pytest.raises(ValueError, match=message):
            anchored_power_law(*args)


@pytest.mark.parametrize("lengths, values, message", [
    ([1, 2], [1], "one length"),
    ([5, 5], [1, 2], "two distinct"),
    ([1, 0], [1, 2], "lengths must be finite numbers > 0"),
    ([1, 2], [1, float("nan")], "values must be finite numbers > 0"),
])
def test_fit_rejects_bad_input(lengths, values, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(lengths, values)


# ---------------------------------------------------------------- workloads and text

def test_image_tokens_counts_padded_patches():
    for h, w, p in [(224, 224, 16), (100, 37, 8), (5, 9, 1), (33, 64, 32)]:
        patches = sum(1 for _ in range(0, h, p) for _ in range(0, w, p))
        assert image_tokens(h, w, p) == patches
    assert image_tokens(224, 224, 16) == 196
    with pytest.raises(ValueError, match="patch must be an integer >= 1"):
        image_tokens(10, 10, 0)


def test_document_tokens_and_score_matrix_bytes():
    assert document_tokens(75_000) == 100_000
    assert document_tokens(10, tokens_per_word=1.5) == 15
    q = torch.randn(2, 3, 11, 4)
    weights = attention(q, q, q)[1]                          # (batch 2, heads 3, 11, 11)
    assert score_matrix_bytes(11, heads=3, batch=2) == weights.numel() * weights.element_size()
    assert score_matrix_bytes(10**6, layers=2, itemsize=2) == 4 * 10**12
    with pytest.raises(ValueError, match="words must be an integer >= 1"):
        document_tokens(0)


def test_formatting_of_bytes_and_seconds():
    assert [format_bytes(b) for b in (0, 999, 1000, 268_435_456, 1.6e13, 4.4e18)] == \
        ["0 B", "999 B", "1 kB", "268 MB", "16 TB", "4.4 EB"]
    assert format_bytes(float("nan")) == "n/a"                   # unmeasurable outside Linux
    assert [format_seconds(s) for s in (2e-5, 0.34, 59, 3600 * 5.6, 86400 * 3, 3.2e8)] == \
        ["20 µs", "340 ms", "59 s", "5.6 h", "3 days", "10.1 years"]
    for bad in (-1, float("inf"), "1 MB"):
        with pytest.raises(ValueError, match="nbytes"):
            format_bytes(bad)
    with pytest.raises(ValueError, match="seconds"):
        format_seconds(float("nan"))


def test_draw_memory_marks_what_does_not_fit():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    draw_memory(ax, 2**20, 5 * 10**8)
    assert len(ax.patches) == len(METHODS)
    over = sorted(p.get_width() for p in ax.patches if p.get_hatch())
    assert over == sorted(b for b in (peak_bytes(m, 2**20) for m in METHODS) if b > 5 * 10**8)
    assert len(over) == 4                                    # at a million tokens only SDPA fits
    texts = [t.get_text() for t in ax.texts]
    assert any("does not fit" in t for t in texts) and any(t.startswith("cap 500 MB") for t in texts)
    draw_memory(ax, 1024, 5 * 10**8)                         # redraws from scratch
    assert len(ax.patches) == len(METHODS) and not any(p.get_hatch() for p in ax.patches)
