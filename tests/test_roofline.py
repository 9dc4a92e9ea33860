"""attnbook.roofline (§5.3): FLOP and byte counts against torch's counter and brute-force loops."""
import math
import pathlib

import pytest
import torch
from support import randn
from torch import nn

from attnbook import attention
from attnbook.checkpoint import activation_memory, checkpointed
from attnbook.flash import tiled_attention
from attnbook.roofline import (CURRENT, DONE, PENDING, SKIPPED, Cost, attention_cost, checkpoint_memory,
                               copy_bandwidth_gbs, count_flops, cpu_peak_estimate,
                               decode_with_and_without_cache, draw_tile_frame, interleaved_seconds,
                               matmul_gflops, peak_memory, ridge_point, roofline, saved_tensors, tile_frames)
from attnbook.transformer import Decoder

SHAPES = [(13, 29, 5, 6, 4, 7), (29, 13, 8, 3, 16, 5), (40, 40, 4, 4, 8, 8), (7, 50, 3, 2, 64, 64)]


# ---------------------------------------------------------------- attention_cost

def brute_force_fused(lq, lk, d, dv, bq, bk, causal):
    """Walk tiled attention's loop: per query block read Q, per allowed tile read K, V; count scores."""
    flops = moved = 0
    for q0 in range(0, lq, bq):
        rows = range(q0, min(q0 + bq, lq))
        moved += len(rows) * (d + dv)                      # Q block in, O block out
        for k0 in range(0, lk, bk):
            cols = range(k0, min(k0 + bk, lk))
            if causal and not any(j <= i for i in rows for j in cols):
                continue
            moved += len(cols) * (d + dv)                  # K and V blocks in
            flops += 2 * len(rows) * len(cols) * (d + dv)
    return flops, moved


@pytest.mark.parametrize("lq, lk, d, dv, bq, bk", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_fused_cost_equals_the_loop_and_torchs_flop_counter(lq, lk, d, dv, bq, bk, causal):
    cost = attention_cost(lq, lk, d, dv, kind="fused", block_q=bq, block_k=bk, is_causal=causal,
                          batch=2, heads=3, itemsize=8)
    flops, moved = brute_force_fused(lq, lk, d, dv, bq, bk, causal)
    assert (cost.flops, cost.bytes) == (6 * flops, 6 * 8 * moved)
    q, k, v = randn(2, 3, lq, d), randn(2, 3, lk, d, seed=1), randn(2, 3, lk, dv, seed=2)
    _, counted = count_flops(tiled_attention, q, k, v, block_q=bq, block_k=bk, is_causal=causal)
    assert cost.flops == counted
    assert cost.extra == 6 * (min(bq, lq) * min(bk, lk) + min(bq, lq) * (dv + 2))


@pytest.mark.parametrize("lq, lk, d, dv, bq, bk", SHAPES)
def test_naive_cost_counts_every_score_and_four_passes_over_them(lq, lk, d, dv, bq, bk):
    q, k, v = randn(lq, d), randn(lk, d, seed=1), randn(lk, dv, seed=2)
    for causal in (False, True):
        cost = attention_cost(lq, lk, d, dv, kind="naive", is_causal=causal, block_q=bq, block_k=bk)
        _, counted = count_flops(attention, q, k, v, is_causal=causal)
        assert cost.flops == counted == 2 * lq * lk * (d + dv)       # causal or not, all scores
        assert cost.bytes == 4 * (lq * d + lk * d + lk * dv + lq * dv + 4 * lq * lk)
        assert cost.extra == 2 * lq * lk


def test_extra_memory_is_quadratic_for_naive_and_constant_for_fused():
    sizes = [1024, 2048, 4096, 8192]
    naive = [attention_cost(n, n, 64, kind="naive").extra for n in sizes]
    fused = [attention_cost(n, n, 64, kind="fused", block_q=128, block_k=64).extra for n in sizes]
    assert [b / a for a, b in zip(naive, naive[1:])] == [4, 4, 4]
    assert len(set(fused)) == 1 and fused[0] == 128 * 64 + 128 * 66


def test_intensity_grows_with_the_query_block_not_with_the_length():
    naive = [attention_cost(n, n, 64, kind="naive").intensity for n in (1024, 4096, 16384)]
    assert all(15 < i < 16 for i in naive)                 # ≈ 2·(d + dv) / (4 · 4 bytes) = d / 4
    fused = [attention_cost(4096, 4096, 64, kind="fused", block_q=b, block_k=128).intensity
             for b in (32, 64, 128, 256)]
    assert fused == sorted(fused) and all(0.9 * b / 2 < i < b / 2 for i, b in zip(fused, (32, 64, 128, 256)))
    assert Cost(10, 0, 0).intensity == math.inf


@pytest.mark.parametrize("bad, error, match", [
    (dict(lq=0), ValueError, "lq"), (dict(d=2.5), TypeError, "d must be an integer"),
    (dict(kind="flash"), ValueError, "kind must be one of"), (dict(block_k=-1), ValueError, "block_k"),
    (dict(itemsize=True), TypeError, "itemsize"),
])
def test_attention_cost_names_bad_arguments(bad, error, match):
    args = dict(lq=8, lk=8, d=4, kind="naive", block_k=4, itemsize=4)
    with pytest.raises(error, match=match):
        attention_cost(**{**args, **bad})


# ---------------------------------------------------------------- roofline

def test_roofline_is_the_minimum_of_the_two_roofs():
    assert roofline(2.0, 100.0, 10.0) == 20.0 and roofline(50.0, 100.0, 10.0) == 100.0
    assert roofline(0, 100.0, 10.0) == 0 and ridge_point(100.0, 10.0) == 10.0
    grid = torch.logspace(-2, 3, 50, dtype=torch.float64)
    got = roofline(grid, 100.0, 10.0)
    torch.testing.assert_close(got, torch.minimum(grid * 10.0, torch.full_like(grid, 100.0)))
    assert bool((got[grid < 10] < 100).all()) and bool((got[grid >= 10] == 100).all())
    for bad, error in (((-1.0, 1.0, 1.0), ValueError), (("x", 1.0, 1.0), ValueError),
                       ((1.0, 0.0, 1.0), ValueError), ((torch.tensor([-1.0]), 1.0, 1.0), ValueError)):
        with pytest.raises(error):
            roofline(*bad)
    with pytest.raises(ValueError, match="bandwidth_gbs"):
        ridge_point(1.0, -2.0)


# ---------------------------------------------------------------- count_flops, saved tensors

def test_count_flops_counts_products_and_the_backward_pass():
    a, b = randn(3, 5), randn(5, 7, seed=1)
    result, flops = count_flops(torch.matmul, a, b)
    assert flops == 2 * 3 * 5 * 7 and result.shape == (3, 7)
    assert count_flops(torch.tanh, a)[1] == 0                          # elementwise: not counted
    layer = nn.Linear(5, 7, bias=False).double()
    x = randn(4, 5, grad=True)
    _, total = count_flops(lambda t: layer(t).sum().backward(), x)
    assert total == 3 * (2 * 4 * 5 * 7)                               # forward, grad input, grad weight
    with pytest.raises(TypeError, match="fn"):
        count_flops(3)


def mlp(width, hidden):
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width), nn.ReLU()).double()


@pytest.mark.parametrize("fn_and_inputs", [
    lambda: (mlp(3, 7), (randn(2, 5, 3),)),
    lambda: (lambda q, k, v: attention(q, k, v)[0], (randn(2, 5, 4, grad=True), randn(2, 9, 4, seed=1),
                                                    randn(2, 9, 6, seed=2, grad=True))),
    lambda: (nn.Sequential(*(mlp(4, 6) for _ in range(3))), (randn(3, 4),)),
])
def test_saved_tensors_add_up_to_activation_memory(fn_and_inputs):
    fn, inputs = fn_and_inputs()
    listed = saved_tensors(fn, *inputs)
    assert sum(s.bytes for s in listed) == activation_memory(fn, *inputs) > 0
    assert [s.bytes for s in listed] == sorted((s.bytes for s in listed), reverse=True)
    assert all(s.bytes == math.prod(s.shape) * 8 and s.dtype == torch.float64 for s in listed)


def test_saved_tensors_of_attention_include_its_weights_not_its_inputs():
    q, k, v = randn(5, 4, grad=True), randn(9, 4, seed=1, grad=True), randn(9, 6, seed=2, grad=True)
    shapes = [s.shape for s in saved_tensors(lambda a, b, c: attention(a, b, c)[0], q, k, v)]
    assert (5, 9) in shapes and (5, 4) not in shapes and (9, 6) not in shapes
    assert saved_tensors(torch.tanh, randn(3, 4)) == []                  # nothing requires grad
    with pytest.raises(TypeError, match="fn"):
        saved_tensors("attention")


# ---------------------------------------------------------------- checkpoint_memory

def segmented(blocks, segment):
    """The stack with every run of ``segment`` consecutive blocks checkpointed as one function."""
    groups = [nn.Sequential(*blocks[i:i + segment]) for i in range(0, len(blocks), segment)]
    return nn.Sequential(*(checkpointed(g) for g in groups))


@pytest.mark.parametrize("layers, segment", [(6, 1), (6, 2), (6, 4), (7, 3), (5, 5)])
def test_checkpoint_memory_matches_what_a_segmented_stack_saves(layers, segment):
    batch, length, width, hidden = 2, 5, 3, 7
    blocks = [mlp(width, hidden) for _ in range(layers)]
    x = randn(batch, length, width)
    per_layer = batch * length * (width + hidden)          # each block keeps its two ReLU outputs
    boundary = batch * length * width
    assert activation_memory(nn.Sequential(*blocks), x) == layers * per_layer * 8
    kept = activation_memory(segmented(blocks, segment), x) // 8
    recompute = checkpoint_memory(layers, per_layer, boundary, segment) - kept
    assert kept == (math.ceil(layers / segment) - 1) * boundary
    assert recompute == segment * per_layer


def test_checkpoint_memory_is_smallest_near_the_square_root():
    for layers in (16, 64, 100):
        best = min(range(1, layers + 1), key=lambda s: checkpoint_memory(layers, 1000, 1000, s))
        assert abs(best - math.sqrt(layers)) <= 1
    assert checkpoint_memory(16, 10, 1, 16) == 160 and checkpoint_memory(16, 10, 1, 1) == 25
    for bad in (dict(layers=0), dict(segment=9), dict(per_layer=-1), dict(boundary=1.5)):
        with pytest.raises((ValueError, TypeError)):
            checkpoint_memory(**{**dict(layers=8, per_layer=4, boundary=1, segment=2), **bad})


# ---------------------------------------------------------------- measurements

def test_interleaved_seconds_times_every_function_in_turn_with_gradients():
    calls = []
    x = randn(4, 4, grad=True)

    def step(t):
        calls.append("step")
        (t * t).sum().backward()                 # needs grad mode

    rounds = interleaved_seconds({"a": step, "b": lambda t: calls.append("b")}, x, repeats=3, warmup=2)
    assert {k: len(v) for k, v in rounds.items()} == {"a": 3, "b": 3}
    assert all(s >= 0 for v in rounds.values() for s in v)
    assert calls == ["step"] * 2 + ["b"] * 2 + ["step", "b"] * 3
    for bad, error in (({}, TypeError), ({"a": 3}, TypeError)):
        with pytest.raises(error):
            interleaved_seconds(bad, x)
    with pytest.raises(ValueError, match="warmup"):
        interleaved_seconds({"a": step}, x, warmup=-1)


@pytest.mark.skipif(not pathlib.Path("/proc/self/clear_refs").exists(), reason="Linux peak memory")
def test_peak_memory_sees_a_large_temporary_and_returns_the_result():
    result, peak = peak_memory(lambda n: float(torch.ones(n).sum()), 16 * 2**20)   # 64 MiB, then freed
    assert result == 16 * 2**20 and peak >= 48 * 2**20
    _, small = peak_memory(lambda: 1)
    assert small < 8 * 2**20


def test_measured_rates_are_positive_and_arguments_are_checked():
    assert 0 < matmul_gflops(32, 16, 8, repeats=2) < 1e6
    assert 0 < copy_bandwidth_gbs(2**20, repeats=2) < 1e6
    with pytest.raises(ValueError, match="k"):
        matmul_gflops(8, 0)
    with pytest.raises(TypeError, match="nbytes"):
        copy_bandwidth_gbs(1.5)


CPUINFO = """processor\t: {p}
model name\t: {model}
physical id\t: 0
core id\t\t: {core}
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse sse2 {flags}
"""


def cpuinfo(cores, threads, flags, model="Example CPU"):
    return "\n".join(CPUINFO.format(p=p, core=p // threads, flags=flags, model=model)
                     for p in range(cores * threads))


@pytest.mark.parametrize("flags, dtype, per_cycle", [
    ("avx avx2 fma avx512f", torch.float32, 64), ("avx avx2 fma avx512f", torch.float64, 32),
    ("avx avx2 fma", torch.float32, 32), ("avx", torch.float32, 16), ("", torch.float64, 4),
])
def test_cpu_peak_is_cores_times_frequency_times_flops_per_cycle(flags, dtype, per_cycle):
    est = cpu_peak_estimate(cpuinfo(4, 2, flags), dtype=dtype)   # 8 hardware threads on 4 cores
    assert (est.cores, est.ghz, est.flops_per_cycle) == (4, 2.0, per_cycle)
    assert est.gflops == pytest.approx(4 * 2.0 * per_cycle) and "assumed" in est.basis
    assert cpu_peak_estimate(cpuinfo(4, 2, flags), cores=1, dtype=dtype).gflops == pytest.approx(2.0 * per_cycle)


def test_cpu_peak_is_unknown_when_cpuinfo_does_not_say():
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\nCPU implementer\t: 0x41\n"
    assert cpu_peak_estimate(arm) is None
    no_clock = cpuinfo(2, 1, "avx fma").replace("cpu MHz\t\t: 2000.000\n", "")
    assert cpu_peak_estimate(no_clock) is None
    from_model = cpu_peak_estimate(no_clock.replace("Example CPU", "Example CPU @ 3.00GHz"))
    assert from_model.ghz == 3.0 and from_model.gflops == pytest.approx(2 * 3.0 * 32)
    with pytest.raises(TypeError, match="dtype"):
        cpu_peak_estimate(arm, dtype=torch.float16)
    with pytest.raises(TypeError, match="cpuinfo"):
        cpu_peak_estimate(42)
    here = cpu_peak_estimate()
    assert here is None or (here.gflops > 0 and here.cores >= 1)


# ---------------------------------------------------------------- the KV cache

@pytest.mark.parametrize("batch, steps, layers", [(1, 5, 1), (2, 7, 2)])
def test_decoding_with_the_cache_equals_recomputing_and_does_linear_work(batch, steps, layers):
    torch.manual_seed(0)
    E, heads = 12, 3
    decoder = Decoder(layers, E, heads, 20, memory_dim=10, norm_first=True).double().eval()
    x, memory = randn(batch, steps, E), randn(batch, 4, 10, seed=1)
    run = decode_with_and_without_cache(decoder, x, memory)
    full, _ = decoder(x, memory)
    torch.testing.assert_close(run.cached, full, rtol=0, atol=1e-10)
    torch.testing.assert_close(run.recomputed, full, rtol=0, atol=1e-10)
    # with the cache, step t adds t keys: 2·E FLOPs per key for Q Kᵀ and as many for P V, per layer and sequence
    assert [f - run.flops_cached[0] for f in run.flops_cached] == [4 * E * layers * batch * t for t in range(steps)]
    # without it, step t repeats steps 0..t: its FLOPs are a quadratic in t (constant second difference)
    d1 = [b - a for a, b in zip(run.flops_recomputed, run.flops_recomputed[1:])]
    assert len({b - a for a, b in zip(d1, d1[1:])}) <= 1 and all(d > 0 for d in d1)
    assert run.flops_recomputed[0] == run.flops_cached[0]
    assert run.cache.length == steps and run.cache.numel() == 2 * layers * batch * steps * E


def test_decoding_with_a_padding_mask_of_the_memory():
    decoder = Decoder(2, 8, 2, 16).double().eval()
    x, memory = randn(2, 4, 8), randn(2, 5, 8, seed=1)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, :]
    run = decode_with_and_without_cache(decoder, x, memory, mask)
    torch.testing.assert_close(run.cached, decoder(x, memory, memory_mask=mask)[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(run.recomputed, run.cached, rtol=0, atol=1e-10)


def test_decoding_names_bad_arguments():
    decoder = Decoder(1, 8, 2, 16).double()
    with pytest.raises(TypeError, match="decoder"):
        decode_with_and_without_cache(nn.Linear(2, 2), randn(1, 3, 8), randn(1, 2, 8))
    with pytest.raises(ValueError, match=r"x must be \(B, T, E\)"):
        decode_with_and_without_cache(decoder, randn(1, 2, 3, 8), randn(1, 2, 8))


# ---------------------------------------------------------------- tile frames

@pytest.mark.parametrize("lq, lk, bq, bk", [(24, 24, 6, 4), (13, 29, 4, 7), (29, 13, 8, 3), (5, 5, 8, 8)])
@pytest.mark.parametrize("causal", [False, True])
def test_tile_frames_follow_the_loop_of_tiled_attention(lq, lk, bq, bk, causal):
    frames = tile_frames(lq, lk, bq, bk, is_causal=causal)
    rows, cols = math.ceil(lq / bq), math.ceil(lk / bk)
    visited = [(i, j) for i in range(rows) for j in range(cols)
               if not causal or any(k <= q for q in range(i * bq, min(lq, (i + 1) * bq))
                                    for k in range(j * bk, min(lk, (j + 1) * bk)))]
    assert [f.tile for f in frames] == [None] + visited
    assert [f.step for f in frames] == list(range(len(frames)))
    skipped = frames[0].grid == SKIPPED
    assert int(skipped.sum()) == rows * cols - len(visited)
    assert bool((frames[0].grid[~skipped] == PENDING).all())
    for s, f in enumerate(frames[1:], start=1):
        assert f.grid.shape == (rows, cols) and torch.equal(f.grid == SKIPPED, skipped)
        assert int((f.grid == CURRENT).sum()) == 1 and f.grid[f.tile] == CURRENT
        assert int((f.grid == DONE).sum()) == s - 1
    finished = [f.finished for f in frames]
    assert finished == sorted(finished) and finished[0] == 0 and finished[-1] == lq


def test_tile_frames_are_drawn_one_patch_per_tile_and_redrawn_in_place():
    import matplotlib.pyplot as plt

    frames = tile_frames(12, 20, 4, 5, is_causal=True)
    fig, ax = plt.subplots()
    draw_tile_frame(ax, frames[0], 12, 20, 4, 5)
    assert len(ax.patches) == 3 * 4 + 2                   # the tiles, the output bar and its filling
    first = list(ax.patches)

    def colours():
        return [tuple(p.get_facecolor()) for p in ax.patches[:12]]

    assert len(set(colours())) == 2 and ax.patches[-1].get_height() == 0      # pending, skipped
    draw_tile_frame(ax, frames[-1], 12, 20, 4, 5)
    assert list(ax.patches) == first                      # recoloured, not rebuilt
    assert len(set(colours())) == 3                       # done, current, skipped
    assert ax.patches[-1].get_height() == 12              # every output row written
    hatched = [bool(p.get_hatch()) for p in ax.patches[:12]]
    assert hatched == (frames[-1].grid == SKIPPED).flatten().tolist()
    draw_tile_frame(ax, tile_frames(8, 8, 4, 4, is_causal=False)[1], 8, 8, 4, 4)   # other sizes: rebuilt
    assert len(ax.patches) == 2 * 2 + 2
