"""Errors of the efficient approximations and crossover lengths (§5.2), against the library's
kernels, brute-force loops, explicit SVD truncations and exact power laws."""
import math

import pytest
import torch
from support import randn

from attnbook import attention
from attnbook.approx import (KINDS, METHODS, Crossover, crossover_length, describe, error_curve,
                             find_crossovers, implied_weights, linformer_projection, rank_floor,
                             rank_grid, relative_error, synthetic_qk)
from attnbook.bench import run
from attnbook.linear import linear_attention, performer_attention
from attnbook.lowrank import effective_rank, linformer_attention, nystrom_attention


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- synthetic queries and keys

@pytest.mark.parametrize("kind", KINDS)
def test_synthetic_qk_has_the_requested_shape_dtype_and_is_reproducible(kind):
    q, k = synthetic_qk(kind, 10, 5, generator=gen(3), dtype=torch.float32)
    assert q.shape == k.shape == (10, 5) and q.dtype == k.dtype == torch.float32
    q2, k2 = synthetic_qk(kind, 10, 5, generator=gen(3), dtype=torch.float32)
    assert torch.equal(q, q2) and torch.equal(k, k2)


def test_local_scores_are_the_dirichlet_kernel_of_the_offset():
    length, dim = 12, 7                                       # odd d: F = 3 pairs and one zero coordinate
    q, k = synthetic_qk("local", length, dim)
    for i in range(length):
        for j in range(length):
            want = dim / 3 * sum(math.cos(2 * math.pi * f * (i - j) / length) for f in range(1, 4))
            assert (q[i] @ k[j]).item() == pytest.approx(want, abs=1e-12)
    assert torch.all(q[:, -1] == 0)


def test_clustered_tokens_share_their_centre_and_contiguous_groups_form_runs():
    q, k = synthetic_qk("clustered", 40, 6, clusters=3, noise=0.0, contiguous=True, generator=gen(1))
    assert torch.equal(q, k)
    distinct = torch.unique(q, dim=0)
    assert len(distinct) <= 3
    changes = (q[1:] != q[:-1]).any(-1).sum().item()           # a run per group: at most 2 changes
    assert changes == len(distinct) - 1
    shuffled, _ = synthetic_qk("clustered", 40, 6, clusters=3, noise=0.0, generator=gen(1))
    assert (shuffled[1:] != shuffled[:-1]).any(-1).sum().item() > changes
    # the same tokens, in another order
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, q.tolist()))


def test_random_and_local_queries_have_squared_norm_about_d():
    q, _ = synthetic_qk("random", 4000, 16, generator=gen(2))
    assert (q * q).sum(-1).mean().item() == pytest.approx(16, rel=0.05)
    x, _ = synthetic_qk("local", 30, 16)
    torch.testing.assert_close((x * x).sum(-1), torch.full((30,), 16.0, dtype=x.dtype))


@pytest.mark.parametrize("args, kwargs, error", [
    (("nope", 4, 2), {}, ValueError),
    (("random", 0, 2), {}, ValueError),
    (("random", 4, 2.5), {}, TypeError),
    (("clustered", 4, 2), {"noise": -1.0}, ValueError),
    (("clustered", 4, 2), {"clusters": 0}, ValueError),
    (("random", 4, 2), {"generator": 0}, TypeError),
    (("random", 4, 2), {"dtype": torch.int64}, TypeError),
])
def test_synthetic_qk_rejects_bad_input(args, kwargs, error):
    with pytest.raises(error):
        synthetic_qk(*args, **kwargs)


# ---------------------------------------------------------------- Linformer projections

def test_pool_projection_averages_contiguous_segments():
    e = linformer_projection(10, 4)
    want = torch.zeros(4, 10, dtype=torch.float64)
    for s, part in enumerate(torch.tensor_split(torch.arange(10), 4)):
        want[s, part] = 1.0 / len(part)
    torch.testing.assert_close(e, want)
    torch.testing.assert_close(linformer_projection(6, 6), torch.eye(6, dtype=torch.float64))


def test_random_projection_has_variance_one_over_k_and_follows_the_generator():
    e = linformer_projection(3000, 8, kind="random", generator=gen(4))
    assert e.var().item() == pytest.approx(1 / 8, rel=0.05)
    assert torch.equal(e, linformer_projection(3000, 8, kind="random", generator=gen(4)))


@pytest.mark.parametrize("args, kwargs, error", [
    ((5, 6), {}, ValueError),
    ((5, 2), {"kind": "conv"}, ValueError),
    ((5, 0), {}, ValueError),
    ((5, 2), {"dtype": torch.int32}, TypeError),
])
def test_linformer_projection_rejects_bad_input(args, kwargs, error):
    with pytest.raises(error):
        linformer_projection(*args, **kwargs)


# ---------------------------------------------------------------- implied weights

LQ, LK, D, DV = 7, 9, 4, 3                                      # non-square throughout


def qkv(batch=(2,), seed=0):
    return (randn(*batch, LQ, D, seed=seed), randn(*batch, LK, D, seed=seed + 1),
            randn(*batch, LK, DV, seed=seed + 2))


def test_exact_weights_are_softmax_attention():
    q, k, v = qkv()
    torch.testing.assert_close(implied_weights("exact", q, k), attention(q, k, v)[1])
    torch.testing.assert_close(implied_weights("exact", q, k, scale=0.3), attention(q, k, v, scale=0.3)[1])


@pytest.mark.parametrize("m", [1, 3, 7])
def test_nystrom_weights_reproduce_the_kernel_output(m):
    q, k, v = qkv()
    torch.testing.assert_close(implied_weights("nystrom", q, k, m) @ v,
                               nystrom_attention(q, k, v, landmarks=m))
    torch.testing.assert_close(implied_weights("nystrom", q, k, m, scale=0.7) @ v,
                               nystrom_attention(q, k, v, landmarks=m, scale=0.7))


@pytest.mark.parametrize("kk", [1, 4, LK])
def test_linformer_weights_reproduce_the_kernel_output(kk):
    q, k, v = qkv()
    e = linformer_projection(LK, kk)
    torch.testing.assert_close(implied_weights("linformer", q, k, kk) @ v, linformer_attention(q, k, v, e))
    r = linformer_projection(LK, kk, kind="random", generator=gen(5))
    torch.testing.assert_close(implied_weights("linformer_random", q, k, kk, generator=gen(5)) @ v,
                               linformer_attention(q, k, v, r))


def test_linformer_with_k_equal_to_lk_is_exact():
    q, k, _ = qkv()
    torch.testing.assert_close(implied_weights("linformer", q, k, LK), implied_weights("exact", q, k))


@pytest.mark.parametrize("m", [2, 5, 11])
def test_performer_weights_reproduce_the_kernel_output_with_the_same_generator(m):
    q, k, v = qkv()
    torch.testing.assert_close(implied_weights("performer", q, k, m, generator=gen(6)) @ v,
                               performer_attention(q, k, v, features=m, generator=gen(6)))


def test_linear_weights_reproduce_the_kernel_output_and_are_brute_force_normalised():
    q, k, v = qkv()
    w = implied_weights("linear", q, k)
    torch.testing.assert_close(w @ v, linear_attention(q, k, v))
    phi = lambda x: torch.where(x > 0, x + 1, torch.exp(x))  # noqa: E731 - elu + 1 by its definition
    for b in range(2):
        for i in range(LQ):
            s = torch.stack([phi(q[b, i]) @ phi(k[b, j]) for j in range(LK)])
            torch.testing.assert_close(w[b, i], s / s.sum())


@pytest.mark.parametrize("method, size", [("nystrom", 3), ("linformer", 3), ("linformer_random", 3),
                                          ("performer", 3), ("linear", None)])
def test_approximate_weights_have_rank_at_most_their_size(method, size):
    q, k = randn(12, 6, seed=1), randn(14, 6, seed=2)
    w = implied_weights(method, q, k, size, generator=gen(0))
    bound = size if size is not None else 6
    assert torch.linalg.matrix_rank(w).item() <= bound


@pytest.mark.parametrize("method", ["exact", "performer", "linear"])
def test_weights_of_positive_similarities_are_distributions(method):
    q, k, _ = qkv(batch=(2, 3))
    w = implied_weights(method, q, k, 5 if method == "performer" else None, generator=gen(1))
    assert w.shape == (2, 3, LQ, LK) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, LQ, dtype=w.dtype))


@pytest.mark.parametrize("args, kwargs, error", [
    (("softmax",), {}, ValueError),
    (("nystrom",), {}, TypeError),                                 # size missing
    (("nystrom", 8), {}, ValueError),                              # > min(Lq, Lk)
    (("linformer", 10), {}, ValueError),                           # > Lk
    (("performer", 0), {}, ValueError),
    (("linear", 3), {}, ValueError),                               # linear has no size
    (("exact", 3), {}, ValueError),
    (("linear",), {"scale": 0.5}, ValueError),
    (("performer", 2), {"generator": 1}, TypeError),
    (("exact",), {"scale": -1.0}, ValueError),
])
def test_implied_weights_rejects_bad_input(args, kwargs, error):
    q, k, _ = qkv()
    method, *size = args
    with pytest.raises(error):
        implied_weights(method, q, k, *size, **kwargs)


def test_implied_weights_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="width"):
        implied_weights("exact", randn(3, 4), randn(5, 2))


# ---------------------------------------------------------------- errors and floors

def test_relative_error_is_the_frobenius_ratio_per_matrix():
    a, b = randn(2, 3, 4, seed=1), randn(2, 3, 4, seed=2)
    got = relative_error(a, b)
    for i in range(2):
        num = sum((a[i, r, c] - b[i, r, c]) ** 2 for r in range(3) for c in range(4)).sqrt()
        den = sum(b[i, r, c] ** 2 for r in range(3) for c in range(4)).sqrt()
        assert got[i].item() == pytest.approx((num / den).item())
    assert relative_error(torch.zeros_like(b), b).tolist() == pytest.approx([1.0, 1.0])
    assert relative_error(b, b).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("approx, exact, error", [
    (randn(3, 4), randn(4, 3), ValueError),
    (randn(3, 4), torch.zeros(3, 4, dtype=torch.float64), ValueError),
    (randn(3, 4).float(), randn(3, 4), TypeError),
    (randn(4), randn(4), ValueError),
])
def test_relative_error_rejects_bad_input(approx, exact, error):
    with pytest.raises(error):
        relative_error(approx, exact)


@pytest.mark.parametrize("r", [0, 1, 3, 6, 9])
def test_rank_floor_is_the_error_of_the_truncated_svd(r):
    a = torch.softmax(randn(6, 9, seed=3) * 2, -1)               # a non-square attention matrix
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    best = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
    assert rank_floor(torch.linalg.svdvals(a), r).item() == pytest.approx(relative_error(best, a).item(), abs=1e-12)


def test_no_rank_r_matrix_beats_the_floor():
    a = torch.softmax(randn(10, 10, seed=4) * 3, -1)
    floor = rank_floor(torch.linalg.svdvals(a), 2).item()
    for seed in range(20):
        x = randn(10, 2, seed=seed) @ randn(2, 10, seed=seed + 100)
        x = x * (x * a).sum() / (x * x).sum()                      # best scaling of this rank-2 guess
        assert relative_error(x, a).item() >= floor - 1e-12


@pytest.mark.parametrize("sv, rank, error", [
    (torch.tensor([1.0, -0.1]), 1, ValueError),
    (torch.tensor([1.0, 0.5]), -1, ValueError),
    (torch.tensor([1.0, 0.5]), True, ValueError),
    (torch.tensor([0.0, 0.0]), 1, ValueError),
    ([1.0, 0.5], 1, TypeError),
])
def test_rank_floor_rejects_bad_input(sv, rank, error):
    with pytest.raises(error):
        rank_floor(sv, rank)


def test_error_curve_averages_the_errors_of_independent_draws():
    q, k, v = qkv(batch=())
    curve = error_curve("performer", q, k, v, [2, 6], draws=3, seed=10)
    exact = implied_weights("exact", q, k)
    for m, w_err, o_err in zip(curve["sizes"], curve["weights"], curve["output"]):
        ws = [implied_weights("performer", q, k, m, generator=gen(10 + i)) for i in range(3)]
        assert w_err == pytest.approx(sum(relative_error(w, exact).item() for w in ws) / 3)
        assert o_err == pytest.approx(sum(relative_error(w @ v, exact @ v).item() for w in ws) / 3)


def test_error_curve_of_nystrom_matches_the_kernel_and_vanishes_with_every_landmark():
    q, k, v = randn(16, 4, seed=1), randn(16, 4, seed=2), randn(16, 3, seed=3)
    curve = error_curve("nystrom", q, k, v, [4, 16])
    exact_out = attention(q, k, v)[0]
    assert curve["output"][0] == pytest.approx(relative_error(nystrom_attention(q, k, v, landmarks=4),
                                                              exact_out).item())
    # m = n: the landmarks are the tokens; only the 6 steps of the iterative pseudo-inverse remain
    assert curve["weights"][1] < 0.1 * curve["weights"][0]


@pytest.mark.parametrize("method, sizes", [("linear", [2]), ("exact", [2]), ("nystrom", []), ("nystrom", [0])])
def test_error_curve_rejects_bad_input(method, sizes):
    q, k, v = qkv()
    with pytest.raises((ValueError, TypeError)):
        error_curve(method, q, k, v, sizes)


def test_rank_grid_matches_a_direct_computation():
    grid = rank_grid(20, [2, 6], [0.5, 3.0], energy=0.95, seed=1)
    assert grid.shape == (2, 2) and grid.dtype == torch.int64
    for i, d in enumerate([2, 6]):
        g = gen(1 + d)
        q = torch.randn(20, d, generator=g, dtype=torch.float64)
        k = torch.randn(20, d, generator=g, dtype=torch.float64)
        for j, beta in enumerate([0.5, 3.0]):
            a = torch.softmax(beta * q @ k.T / math.sqrt(d), -1)
            assert grid[i, j].item() == effective_rank(torch.linalg.svdvals(a), 0.95).item()
    with pytest.raises(ValueError):
        rank_grid(20, [], [1.0])


# ---------------------------------------------------------------- crossovers

SIZES = [256, 512, 1024, 2048, 4096]


def power_law_ratios(n_star, exponent=-1.0, sizes=SIZES):
    """ratio(n) = (n / n*)^exponent: exactly 1 at n*, a straight line in log-log."""
    return [(n / n_star) ** exponent for n in sizes]


@pytest.mark.parametrize("n_star", [300.0, 700.0, 1500.0, 4000.0])
def test_crossover_of_a_power_law_is_found_exactly_between_measurements(n_star):
    found = crossover_length(SIZES, power_law_ratios(n_star))
    assert found.status == "between" and found.length == pytest.approx(n_star)
    lo, hi = found.bracket
    assert lo < n_star < hi and found.measured == (256, 4096)


def test_crossover_from_timings_of_a_linear_and_a_quadratic_kernel():
    kernel = [3e-6 * n for n in SIZES]                           # a·n
    sdpa = [2e-9 * n * n for n in SIZES]                         # b·n²: equal at n = a/b = 1500
    found = crossover_length(SIZES, [t / t0 for t, t0 in zip(kernel, sdpa)])
    assert found.length == pytest.approx(1500.0)


def test_a_kernel_faster_everywhere_crosses_below_the_shortest_length():
    found = crossover_length(SIZES, power_law_ratios(100.0))
    assert found == Crossover(None, "below", None, (256, 4096))


def test_a_falling_ratio_is_extrapolated_beyond_the_longest_length():
    found = crossover_length(SIZES, power_law_ratios(10000.0, exponent=-0.5))
    assert found.status == "beyond" and found.length == pytest.approx(10000.0)


def test_a_ratio_that_does_not_fall_never_crosses():
    assert crossover_length(SIZES, [3.0, 3.1, 3.0, 3.2, 3.3]).status == "never"
    assert crossover_length([256], [2.0]).status == "never"            # one point: no trend


def test_the_crossover_is_where_the_kernel_stays_faster_and_skipped_sizes_count_as_slower():
    found = crossover_length(SIZES, [2.0, 0.9, 1.2, 0.8, 0.5])      # a noisy dip at 512
    assert found.bracket == (1024, 2048) and 1024 < found.length < 2048
    found = crossover_length(SIZES, [2.0, 1.5, None, 0.8, 0.5])
    assert found == Crossover(None, "between", (1024, 2048), (256, 4096))


@pytest.mark.parametrize("sizes, ratios", [
    ([], []),
    ([256, 512], [1.0]),
    ([512, 256], [1.0, 0.5]),
    ([256, 256], [1.0, 0.5]),
    ([256, 512], [1.0, -0.5]),
    ([0, 512], [1.0, 0.5]),
])
def test_crossover_length_rejects_bad_input(sizes, ratios):
    with pytest.raises(ValueError):
        crossover_length(sizes, ratios)


def test_find_crossovers_reads_a_bench_result():
    result = {"sizes": SIZES, "summary": {
        "sdpa": {"time_ratio": [1.0] * 5, "memory_ratio": [1.0] * 5},
        "linear": {"time_ratio": power_law_ratios(700.0), "memory_ratio": [4.0] * 5}}}
    found = find_crossovers(result)
    assert set(found) == {"linear"} and found["linear"].length == pytest.approx(700.0)
    assert find_crossovers(result, ratio="memory_ratio")["linear"].status == "never"
    with pytest.raises(ValueError):
        find_crossovers(result, ratio="seconds")
    with pytest.raises(TypeError):
        find_crossovers([1, 2])


def test_find_crossovers_on_a_tiny_real_benchmark():
    result = run((32, 48), heads=1, dim=8, repeats=1, kernels=["linear", "nystrom"], landmarks=8,
                 log=lambda *_: None)
    found = find_crossovers(result)
    assert set(found) == {"linear", "nystrom"}
    assert all(isinstance(c, Crossover) and c.measured == (32, 48) for c in found.values())


def test_describe_says_where_the_crossover_lies():
    assert describe(crossover_length(SIZES, power_law_ratios(700.0))) == \
        "at about 700 tokens (between the measured 512 and 1,024)"
    assert describe(crossover_length(SIZES, power_law_ratios(1234.0))) == \
        "at about 1,200 tokens (between the measured 1,024 and 2,048)"
    assert describe(crossover_length(SIZES, power_law_ratios(100.0))).startswith("below 256 tokens")
    assert "extrapolated: about 10,000" in describe(crossover_length(SIZES, power_law_ratios(1e4, -0.5)))
    assert describe(crossover_length(SIZES, [3.0] * 5)).endswith("4,096 tokens, and its time ratio was not falling")
    assert describe(Crossover(None, "between", (512, 1024), (256, 4096))) == "between 512 and 1,024 tokens"
    # two significant digits would leave the bracket (514 -> 510): keep the digits that stay inside
    assert describe(Crossover(514.0, "between", (512, 1024), (256, 4096))) == \
        "at about 514 tokens (between the measured 512 and 1,024)"
    assert describe(Crossover(1030.2, "between", (1024, 2048), (256, 4096))) == \
        "at about 1,030 tokens (between the measured 1,024 and 2,048)"
    with pytest.raises(TypeError):
        describe(700.0)


def test_every_method_is_covered():
    assert set(METHODS) == {"exact", "nystrom", "linformer", "linformer_random", "performer", "linear"}
