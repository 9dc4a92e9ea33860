"""attnbook.atlas: the variants' counted costs against torch's FLOP counter, traced memory and
brute-force pattern counts; choosing by constraints; measuring; drawing; bad input."""
import importlib
import math
import pathlib

import matplotlib.pyplot as plt
import pytest
import torch

from support import LiveTensors

from attnbook import attention
from attnbook.approx import linformer_projection
from attnbook.atlas import (DEFAULT_SIZES, FIDELITIES, MEASURED, STEPS, VARIANTS, Verdict, assess, choose,
                            draw_choice, draw_map, draw_steps, flops, kernels, memory_bytes, memory_numbers,
                            legend_handles, output_errors, pairs, pool_projection, reference, resolve_sizes,
                            table, variant)
from attnbook.axial import axial_attention
from attnbook.hard import hard_attention, hybrid_attention
from attnbook.images import pixel_weights
from attnbook.roofline import attention_cost, count_flops
from attnbook.sparse import block_local_pattern, lsh_attention, sliding_window_pattern

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(window=5, block=16, chunk=16, n_buckets=8, n_hashes=2, top=2, samples=3, landmarks=12,
             rank=10, features=30, block_q=64, block_k=32)


def qkv(n, d, dv, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*batch, n, d, generator=g), torch.randn(*batch, n, d, generator=g),
            torch.randn(*batch, n, dv, generator=g))


def library_kernel(name, sizes):
    """fn(q, k, v) running the library's kernel of ``name`` (axial: on q cut into an image)."""
    if name not in ("axial", "hybrid", "hard"):
        return kernels([name], **sizes)[name]

    def call(q, k, v):
        s = resolve_sizes(name, q.shape[-2], q.shape[-1], **sizes)
        if name == "axial":
            return axial_attention(q.unflatten(-2, (s["height"], q.shape[-2] // s["height"])))
        if name == "hybrid":
            return hybrid_attention(q, k, v, block=s["block"], top=s["top"])
        return hard_attention(q, k, v, k=s["samples"], generator=torch.Generator().manual_seed(0))
    return call


def library_call(name, q, k, v, sizes):
    return library_kernel(name, sizes)(q, k, v)


# ---------------------------------------------------------------- the table

def test_every_variant_names_a_real_function_page_and_valid_fields():
    assert list(VARIANTS)[:1] == ["naive"] and len(VARIANTS) == 13
    for name, v in VARIANTS.items():
        assert v.name == name and variant(name) is v
        module, _, attr = v.function.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attr)), v.function
        assert (ROOT / "notebooks" / f"{v.page}.ipynb").exists(), v.page
        assert set(v.steps) <= set(STEPS) and v.fidelity in FIDELITIES and set(v.sizes) <= set(DEFAULT_SIZES)
        assert v.exact == (v.fidelity == "exact") and v.when and v.time and v.memory
    assert not VARIANTS["naive"].steps                       # the reference changes nothing
    assert [v.name for v in VARIANTS.values() if not v.differentiable] == ["hard"]
    rows = table(["window", "linear"])
    assert rows[0]["steps"] == "which keys" and rows[1]["steps"] == "scores, normalisation, weighted sum"
    assert table()[0]["steps"] == "none" and len(table()) == len(VARIANTS)


# ---------------------------------------------------------------- FLOPs

@pytest.mark.parametrize("n, d, dv", [(96, 8, 12), (130, 6, 6), (75, 5, 9)])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_flops_equal_torch_flop_counter_on_the_library_kernel(name, n, d, dv):
    dv = d if name == "axial" else dv                       # axial: q = k = v = the image
    q, k, v = qkv(n, d, dv, seed=n)
    with torch.no_grad():
        _, counted = count_flops(library_call, name, q, k, v, SMALL)
    assert flops(name, n, d, dv, **SMALL) == counted


def test_exact_flops_equal_the_roofline_counts_naive_and_fused():
    for n, d, dv in ((100, 16, 24), (1000, 64, 64), (37, 3, 5)):
        assert flops("naive", n, d, dv) == attention_cost(n, n, d, dv).flops
        fused = attention_cost(n, n, d, dv, kind="fused", block_q=64, block_k=32).flops
        assert flops("tiled", n, d, dv, block_q=64, block_k=32) == fused == flops("sdpa", n, d, dv)
    assert flops("hard", 50, 8, 4) == attention_cost(50, 50, 8, 1).flops - 2 * 50 * 50   # scores only


# ---------------------------------------------------------------- pairs: brute force

@pytest.mark.parametrize("n", [1, 2, 7, 40, 129])
@pytest.mark.parametrize("w", [0, 1, 3, 6, 200])
def test_window_pairs_equal_the_pattern_count(n, w):
    assert pairs("window", n, window=w) == sliding_window_pattern(n, w).sum().item()


@pytest.mark.parametrize("n, b", [(1, 4), (16, 4), (45, 8), (30, 64), (100, 1)])
def test_block_pairs_equal_the_pattern_count(n, b):
    assert pairs("block", n, block=b) == block_local_pattern(n, b).sum().item()


def test_dense_variants_give_every_pair_a_weight():
    n = 48
    for name in ("naive", "sdpa", "tiled", "linear", "performer", "nystrom", "linformer"):
        assert pairs(name, n) == n * n
    image = torch.randn(6, 8, 4, generator=torch.Generator().manual_seed(1))
    _, (row_w, col_w) = axial_attention(image)
    two_hops = pixel_weights(col_w, "column")[0] @ pixel_weights(row_w, "row")[0]
    assert (two_hops > 0).sum().item() == pairs("axial", 48, height=6) == 48 * 48


def test_data_dependent_pairs_are_upper_counts():
    n, d = 120, 8
    q, k, v = qkv(n, d, 5, seed=3)
    for chunk, hashes in ((16, 1), (16, 3), (40, 2)):
        pattern = lsh_attention(q, v, 8, chunk, n_hashes=hashes, generator=torch.Generator().manual_seed(0))[2]
        bound = pairs("lsh", n, chunk=chunk, n_hashes=hashes)
        assert 0 < pattern.sum().item() <= bound
    assert pairs("lsh", n, chunk=16, n_hashes=1) == n * 32
    dense = hybrid_attention(q, k, v, block=16, top=2)[1]
    assert (dense > 0).sum().item() <= pairs("hybrid", n, block=16, top=2) == n * 32
    assert pairs("hybrid", 20, block=16, top=5) == 20 * 20                       # top capped, pairs ≤ n²
    indices = hard_attention(q, k, v, k=3, generator=torch.Generator().manual_seed(0))[2]
    distinct = sum(len(set(row.tolist())) for row in indices)
    assert distinct <= pairs("hard", n, samples=3) == 3 * n


# ---------------------------------------------------------------- memory: traced

def traced_numbers(name, n, d, dv, sizes, batch=2, heads=3):
    q, k, v = qkv(n, d, dv, seed=n, batch=(batch, heads))
    fn = library_kernel(name, sizes)
    with torch.no_grad():
        fn(q, k, v)                                          # warm-up: builds the Linformer's E once
        with LiveTensors((q, k, v)) as live:
            fn(q, k, v)
    return live.peak / 4 / (batch * heads)


# the largest ratio count / traced peak allowed: the counts are upper counts, this tight
TIGHTNESS = {"naive": 1.0, "hard": 1.0, "window": 1.1, "linear": 1.3, "tiled": 2.3, "block": 1.05,
             "lsh": 1.45, "axial": 1.25, "hybrid": 1.25, "performer": 1.25, "nystrom": 1.45, "linformer": 1.2}
CONFIGS = [(300, 24, 40, dict(window=5, block=64, chunk=32, n_buckets=8, landmarks=16, rank=16, features=50)),
           (512, 32, 32, dict(window=16, block=32, chunk=64, n_buckets=16, n_hashes=1, landmarks=64, rank=64)),
           (700, 8, 20, dict(window=3, block=100, chunk=50, n_buckets=2, n_hashes=3, top=3, features=20))]


@pytest.mark.parametrize("n, d, dv, sizes", CONFIGS)
@pytest.mark.parametrize("name", list(TIGHTNESS))
def test_memory_counts_bound_the_traced_peak_of_live_tensors(name, n, d, dv, sizes):
    dv = d if name == "axial" else dv
    traced = traced_numbers(name, n, d, dv, sizes)
    count = memory_numbers(name, n, d, dv, **sizes)
    assert traced <= count <= TIGHTNESS[name] * traced + 1, (traced, count, count / traced)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_counts_grow_with_the_stated_exponents(name):
    time_exp, memory_exp = VARIANTS[name].growth
    small, big = 4**10, 4**11                                # squares, so that axial images are square
    for count, exponent in ((flops, time_exp), (memory_numbers, memory_exp)):
        measured = math.log(count(name, big) / count(name, small)) / math.log(big / small)
        assert measured == pytest.approx(exponent, abs=0.08), (count.__name__, measured)


def test_memory_bytes_scale_with_batch_heads_and_itemsize():
    base = memory_numbers("nystrom", 1000, 32, 16, landmarks=20)
    assert memory_bytes("nystrom", 1000, 32, 16, landmarks=20) == 4 * base
    assert memory_bytes("nystrom", 1000, 32, 16, batch=3, heads=5, itemsize=2, landmarks=20) == 30 * base


# ---------------------------------------------------------------- sizes and bad input

def test_resolve_sizes_fills_defaults_and_ignores_foreign_sizes():
    assert resolve_sizes("window", 100) == {"window": 32}
    assert resolve_sizes("window", 100, window=0, landmarks=7) == {"window": 0}
    assert resolve_sizes("nystrom", 30) == {"landmarks": 30} and resolve_sizes("linformer", 1000)["rank"] == 64
    assert resolve_sizes("performer", 10, 64) == {"features": int(64 * math.log(64))}
    assert resolve_sizes("axial", 48)["height"] == 6 and resolve_sizes("axial", 64)["height"] == 8
    assert resolve_sizes("axial", 13)["height"] == 1                     # a prime: one row
    assert resolve_sizes("hybrid", 100, block=64, top=5)["top"] == 2     # only two blocks
    assert resolve_sizes("naive", 10, block=3) == {}


@pytest.mark.parametrize("call, error, message", [
    (lambda: flops("flash", 10), ValueError, "variant must be one of"),
    (lambda: flops("naive", 10.0), TypeError, "n must be an integer"),
    (lambda: flops("naive", 0), ValueError, "n must be an integer >= 1"),
    (lambda: flops("naive", True), TypeError, "n must be an integer"),
    (lambda: flops("naive", 10, 0), ValueError, "d must be an integer >= 1"),
    (lambda: flops("naive", 10, 8, 2.5), TypeError, "dv must be an integer"),
    (lambda: flops("window", 10, windw=3), TypeError, r"unknown size \['windw'\]"),
    (lambda: flops("window", 10, window=-1), ValueError, "window must be an integer >= 0"),
    (lambda: flops("nystrom", 10, landmarks=11), ValueError, "landmarks=11 must be at most n=10"),
    (lambda: flops("linformer", 10, rank=0), ValueError, "rank must be an integer >= 1"),
    (lambda: flops("axial", 12, height=5), ValueError, "height=5 must divide n=12"),
    (lambda: flops("lsh", 12, n_buckets=3), ValueError, "n_buckets must be 1 or even"),
    (lambda: memory_numbers("sdpa", 12, 8, 4), ValueError, "dv = d"),
    (lambda: memory_bytes("naive", 12, itemsize=0), ValueError, "itemsize must be an integer >= 1"),
    (lambda: pairs("block", 12, block=0), ValueError, "block must be an integer >= 1"),
    (lambda: assess(100, memory_budget=-1), ValueError, "memory_budget must be a number of bytes > 0"),
    (lambda: assess(100, exact="yes"), TypeError, "exact must be True or False"),
    (lambda: assess(100, names="naive"), TypeError, "names must be a sequence"),
    (lambda: assess(100, names=["naive", "nope"]), ValueError, "variant must be one of"),
    (lambda: kernels(["axial"]), ValueError, r"no kernel of \(query, key, value\) for \['axial'\]"),
    (lambda: reference("nope", *qkv(4, 2, 2)), ValueError, "variant must be one of"),
    (lambda: reference("naive", *qkv(4, 2, 2)[:2], torch.ones(5, 2)), ValueError, "value has 5"),
])
def test_bad_input_is_refused_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ---------------------------------------------------------------- choosing

def test_assess_gives_reasons_and_choose_ranks_the_qualified():
    n, budget = 65_536, 2**30
    verdicts = assess(n, memory_budget=budget)
    assert [v.name for v in verdicts] == list(VARIANTS) and all(isinstance(v, Verdict) for v in verdicts)
    for v in verdicts:
        assert v.flops == flops(v.name, n) and v.bytes == memory_bytes(v.name, n)
        assert v.qualifies == (v.bytes <= budget)
    naive = verdicts[0]
    assert naive.reasons == ("needs 68.7 GB > 1.07 GB",)                  # 16n² + 12n bytes
    chosen = choose(n, memory_budget=budget)
    assert [c.flops for c in chosen] == sorted(c.flops for c in chosen)
    assert {c.name for c in chosen} == {v.name for v in verdicts if v.qualifies}
    exact = choose(n, memory_budget=budget, exact=True)
    assert {c.name for c in exact} == {"sdpa", "tiled"}
    assert "naive" in {c.name for c in choose(1024, exact=True)}


def test_constraints_only_ever_remove_variants():
    n = 4096
    everything = {v.name for v in choose(n)}
    assert everything == set(VARIANTS)
    causal = {v.name for v in choose(n, causal=True)}
    assert causal == everything - {"block", "axial", "nystrom", "linformer"}
    assert {v.name for v in choose(n, differentiable=True)} == everything - {"hard"}
    budgets = [2**20, 2**24, 2**28, 2**32]
    sets = [{v.name for v in choose(n, memory_budget=b)} for b in budgets]
    assert all(small <= large for small, large in zip(sets, sets[1:]))
    assert choose(n, memory_budget=1) == []
    reasons = {v.name: v.reasons for v in assess(n, exact=True, causal=True, differentiable=True)}
    assert reasons["nystrom"] == ("not exact (approximate)", "no causal form")
    assert reasons["hard"] == ("not exact (sampled)", "not differentiable")


def test_assess_scales_costs_by_batch_and_heads_and_handles_sdpa_with_dv_unequal_d():
    one, many = assess(2048, names=["linear"])[0], assess(2048, names=["linear"], batch=2, heads=4)[0]
    assert many.flops == 8 * one.flops and many.bytes == 8 * one.bytes
    sdpa = assess(256, 32, 16, names=["sdpa", "tiled"], memory_budget=2 * 10**6)
    assert sdpa[0].bytes == memory_bytes("naive", 256, 32, 16) > memory_bytes("sdpa", 256, 32)   # fallback
    assert sdpa[0].qualifies and sdpa[0].flops == flops("sdpa", 256, 32, 16) and sdpa[1].qualifies
    assert not assess(2048, 32, 16, names=["sdpa"], memory_budget=2 * 10**6)[0].qualifies


# ---------------------------------------------------------------- measuring

def test_kernels_compute_their_library_functions_and_exact_ones_agree():
    q, k, v = qkv(80, 16, 12, seed=5)
    q, k, v = q.double(), k.double(), v.double()
    fns = kernels()
    assert list(fns) == list(MEASURED)
    exact = attention(q, k, v)[0]
    for name in ("naive", "sdpa", "tiled"):
        torch.testing.assert_close(fns[name](q, k, v), exact)
    again = kernels(["performer", "lsh"])
    for name in ("performer", "lsh"):                              # seeded at every call
        torch.testing.assert_close(fns[name](q, k, v), again[name](q, k, v))


@pytest.mark.parametrize("length, k", [(10, 3), (64, 64), (7, 1), (100, 16)])
def test_pool_projection_equals_the_segment_means_of_approx(length, k):
    e = pool_projection(length, k, torch.float64)
    torch.testing.assert_close(e, linformer_projection(length, k, kind="pool"))
    with torch.no_grad():
        assert count_flops(pool_projection, length, k)[1] == 0
    with pytest.raises(ValueError, match="must be at most length"):
        pool_projection(3, 4)


def test_output_errors_vanish_when_a_variant_keeps_everything():
    q, k, v = (t.double() for t in qkv(64, 8, 6, seed=2))
    full = dict(window=64, chunk=64, n_buckets=1, n_hashes=1, rank=64)
    errors = output_errors(q, k, v, ["naive", "sdpa", "tiled", "window", "lsh", "linformer"], **full)
    assert max(errors.values()) < 1e-12, errors
    partial = output_errors(q, k, v, ["window", "linformer", "nystrom", "performer", "linear"],
                            window=2, rank=8, landmarks=8, features=16)
    assert all(e > 1e-3 for e in partial.values()), partial
    want = lsh_attention(q, v, 1, 64, return_pattern=False)[0]
    torch.testing.assert_close(reference("lsh", q, k, v), want)
    assert not torch.allclose(reference("lsh", q, k, v), reference("window", q, k, v))


# ---------------------------------------------------------------- drawing

def test_draw_steps_marks_one_square_per_changed_step():
    fig, ax = plt.subplots()
    draw_steps(ax)
    filled = [p for p in ax.patches if p.get_facecolor()[:3] != (1.0, 1.0, 1.0)]
    assert len(ax.patches) == len(VARIANTS) * len(STEPS)
    assert len(filled) == sum(len(v.steps) for v in VARIANTS.values())
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "naive (exact)"
    assert [VARIANTS[n].short for n in ("naive", "lsh", "window")] == ["naive", "LSH", "sliding window"]
    assert [h.get_label() for h in legend_handles("patch")] == list(FIDELITIES)
    with pytest.raises(ValueError, match="kind must be"):
        legend_handles("bars")


def test_draw_map_puts_exact_variants_on_the_floor():
    fig, ax = plt.subplots()
    draw_map(ax, {"naive": (1e9, 1e-17), "window": (1e7, 0.3)}, floor=1e-6)
    ys = sorted(line.get_ydata()[0] for line in ax.lines if len(line.get_ydata()) == 1)
    assert ys == [1e-6, 0.3]
    with pytest.raises(ValueError, match="cost > 0"):
        draw_map(ax, {"naive": (0, 0.1)})
    with pytest.raises(TypeError, match="non-empty dict"):
        draw_map(ax, {})


def test_draw_choice_builds_once_and_updates_in_place():
    fig, ax = plt.subplots()
    first = assess(4096, memory_budget=2**24, exact=True)
    draw_choice(ax, first, title="a")
    bars = list(ax.patches)
    grey = [b for b, v in zip(bars, first) if not v.qualifies]
    assert grey and all(b.get_hatch() == "///" for b in grey)
    second = assess(4096)
    draw_choice(ax, second)
    assert list(ax.patches) == bars and all(b.get_hatch() is None for b in bars)
    assert ax.texts[0].get_text() == "268 MB"                  # naive: 4n² + 3n float32 numbers
    with pytest.raises(TypeError, match="list of Verdict"):
        draw_choice(ax, [])
