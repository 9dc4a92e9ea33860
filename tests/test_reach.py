"""Receptive fields, key counts and LSH buckets (§3.5) against brute force: BFS, patterns, loops."""
import collections
import itertools
import math

import pytest
import torch

from attnbook.reach import (bucket_agreement, bucket_collision_rate, keys_per_query, layers_to_reach,
                            reach, reach_curve)
from attnbook.sparse import (bigbird_pattern, block_local_pattern, causal_pattern,
                             global_tokens_pattern, lsh_buckets, sliding_window_pattern,
                             strided_pattern)


def bfs_distances(pattern):
    """dist[i][j]: fewest layers for j's information to reach i (edge j -> i when pattern[i, j])."""
    length = pattern.shape[0]
    readers = [[i for i in range(length) if pattern[i, j] and i != j] for j in range(length)]
    dist = [[None] * length for _ in range(length)]
    for source in range(length):
        dist[source][source] = 0
        queue = collections.deque([source])
        seen = {source: 0}
        while queue:
            node = queue.popleft()
            for reader in readers[node]:
                if reader not in seen:
                    seen[reader] = seen[node] + 1
                    queue.append(reader)
        for node, d in seen.items():
            dist[node][source] = d
    return dist


def bfs_layers(pattern, target):
    dist = bfs_distances(pattern)
    pairs = [dist[i][j] for i in range(len(dist)) for j in range(len(dist)) if target[i, j]]
    return None if any(d is None for d in pairs) else max(pairs, default=0)


def random_pattern(length, density, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(length, length, generator=g) < density


PATTERNS = {
    "window": sliding_window_pattern(13, 2),
    "dilated": sliding_window_pattern(13, 2, dilation=3),
    "causal window": sliding_window_pattern(11, 3, causal=True),
    "block": block_local_pattern(12, 4),
    "global": global_tokens_pattern(15, 1, [0, 7]),
    "bigbird": bigbird_pattern(14, 1, 0, 2, generator=torch.Generator().manual_seed(3)),
    "strided": strided_pattern(16, 4),
    "random sparse": random_pattern(12, 0.12, 1),
    "random directed": random_pattern(9, 0.25, 2),
}


@pytest.mark.parametrize("name", PATTERNS)
def test_reach_is_the_set_of_paths_of_at_most_l_steps(name):
    pattern = PATTERNS[name]
    dist = bfs_distances(pattern)
    length = pattern.shape[0]
    for layers in (0, 1, 2, 3, 5):
        want = torch.tensor([[dist[i][j] is not None and dist[i][j] <= layers for j in range(length)]
                             for i in range(length)])
        assert torch.equal(reach(pattern, layers), want), (name, layers)


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("causal_target", [False, True])
def test_layers_to_reach_is_the_largest_bfs_distance(name, causal_target):
    pattern = PATTERNS[name]
    target = causal_pattern(pattern.shape[0]) if causal_target else torch.ones_like(pattern)
    assert layers_to_reach(pattern, target=target) == bfs_layers(pattern, target), name


@pytest.mark.parametrize("length, window", [(10, 1), (17, 3), (33, 4), (8, 7), (8, 20)])
def test_a_window_needs_ceil_of_length_over_window_layers(length, window):
    assert layers_to_reach(sliding_window_pattern(length, window)) == math.ceil((length - 1) / window)


def test_global_tokens_and_strides_connect_everything_in_two_layers():
    assert layers_to_reach(global_tokens_pattern(40, 1, [5])) == 2
    assert layers_to_reach(strided_pattern(36, 6), target=causal_pattern(36)) == 2
    assert layers_to_reach(torch.ones(5, 5, dtype=torch.bool)) == 1
    assert layers_to_reach(torch.ones(1, 1, dtype=torch.bool)) == 0


def test_disconnected_patterns_never_reach_and_max_layers_stops_early():
    assert layers_to_reach(block_local_pattern(12, 4)) is None
    assert layers_to_reach(causal_pattern(6)) is None              # nothing flows backwards
    assert layers_to_reach(causal_pattern(6), target=causal_pattern(6)) == 1
    assert layers_to_reach(sliding_window_pattern(20, 1), max_layers=5) is None
    assert layers_to_reach(sliding_window_pattern(20, 1), max_layers=19) == 19


@pytest.mark.parametrize("name", ["window", "strided", "bigbird", "random directed"])
def test_reach_curve_counts_the_target_pairs_reached(name):
    pattern = PATTERNS[name]
    length = pattern.shape[0]
    target = causal_pattern(length)
    dist = bfs_distances(pattern)
    curve = reach_curve(pattern, 4, target=target)
    for layer, value in enumerate(curve.tolist(), start=1):
        hits = sum(dist[i][j] is not None and dist[i][j] <= layer
                   for i in range(length) for j in range(length) if target[i, j])
        assert value == pytest.approx(hits / int(target.sum()))
    assert curve.shape == (4,) and torch.all(curve.diff() >= 0)


@pytest.mark.parametrize("length", [1, 2, 5, 13, 30])
def test_keys_per_query_counts_the_rows_of_every_pattern(length):
    def same(kind, pattern, **params):
        assert torch.equal(keys_per_query(kind, length, **params), pattern.sum(-1)), (kind, length, params)

    same("full", torch.ones(length, length, dtype=torch.bool))
    same("causal", causal_pattern(length))
    for w, dilation, causal in itertools.product((0, 1, 2, 5, 40), (1, 2, 3), (False, True)):
        same("window", sliding_window_pattern(length, w, dilation=dilation, causal=causal),
             window=w, dilation=dilation, causal=causal)
    for b in (1, 2, 3, 7, 50):
        same("block", block_local_pattern(length, b), block=b)
    for stride, causal in itertools.product((1, 2, 3, 4, 7, 40), (False, True)):
        same("strided", strided_pattern(length, stride, causal=causal), stride=stride, causal=causal)
    for w in (0, 1, 3):
        for positions in ([], [0], [0, length - 1], list(range(0, length, 3))):
            same("global", global_tokens_pattern(length, w, positions), window=w, global_positions=positions)
        for count, extra in itertools.product(range(min(length, 3) + 1), (0, 1, 4, 100)):
            drawn = bigbird_pattern(length, w, count, extra, generator=torch.Generator().manual_seed(length))
            same("bigbird", drawn, window=w, global_count=count, random_count=extra)


def test_keys_per_query_counts_long_sequences_in_closed_form():
    n, w = 100_003, 64
    assert keys_per_query("window", n, window=w).sum().item() == n * (2 * w + 1) - w * (w + 1)
    assert keys_per_query("causal", n).sum().item() == n * (n + 1) // 2
    assert keys_per_query("block", n, block=300).sum().item() == (n // 300) * 300 ** 2 + (n % 300) ** 2


def brute_agreement(x, buckets, k):
    length = x.shape[0]
    unit = x / x.norm(dim=-1, keepdim=True)
    total = 0.0
    for i in range(length):
        sims = sorted(((-(unit[i] @ unit[j]).item(), j) for j in range(length) if j != i))
        near = [j for _, j in sims[:k]]
        total += sum(any(buckets[r, i] == buckets[r, j] for r in range(buckets.shape[0])) for j in near) / k
    return total / length


def brute_collisions(buckets):
    length = buckets.shape[-1]
    pairs = [(i, j) for i in range(length) for j in range(length) if i != j]
    return sum(any(buckets[r, i] == buckets[r, j] for r in range(buckets.shape[0])) for i, j in pairs) / len(pairs)


@pytest.mark.parametrize("n_buckets, n_hashes, k", [(4, 1, 3), (8, 3, 5), (2, 2, 1)])
def test_bucket_agreement_and_collisions_match_loops(n_buckets, n_hashes, k):
    x = torch.randn(23, 6, dtype=torch.float64)
    buckets = lsh_buckets(x, n_buckets, n_hashes=n_hashes, generator=torch.Generator().manual_seed(1))
    assert bucket_agreement(x, buckets, k) == pytest.approx(brute_agreement(x, buckets, k))
    assert bucket_collision_rate(buckets) == pytest.approx(brute_collisions(buckets))


def test_bucket_statistics_average_over_leading_dimensions():
    x = torch.randn(3, 17, 5, dtype=torch.float64)
    buckets = lsh_buckets(x, 4, n_hashes=2, generator=torch.Generator().manual_seed(0))
    each = [bucket_agreement(x[b], buckets[b], 4) for b in range(3)]
    assert bucket_agreement(x, buckets, 4) == pytest.approx(sum(each) / 3)
    assert bucket_collision_rate(buckets) == pytest.approx(sum(brute_collisions(buckets[b]) for b in range(3)) / 3)


def test_near_neighbours_share_buckets_more_often_than_random_pairs():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 16, generator=g)
    x = centres.repeat_interleave(16, 0) + 0.2 * torch.randn(128, 16, generator=g)
    buckets = lsh_buckets(x, 8, generator=g)
    assert bucket_agreement(x, buckets, 8) > 0.8 > 0.3 > bucket_collision_rate(buckets)
    one_bucket = torch.zeros(1, 128, dtype=torch.long)
    assert bucket_agreement(x, one_bucket, 8) == 1.0 == bucket_collision_rate(one_bucket)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: reach(torch.ones(3, 4, dtype=torch.bool), 1), ValueError, r"pattern.*\(3, 4\)"),
    (lambda: reach(torch.ones(3, 3), 1), TypeError, "pattern must be a boolean"),
    (lambda: reach([[True]], 1), TypeError, "pattern must be a torch.Tensor"),
    (lambda: reach(torch.ones(3, 3, dtype=torch.bool), -1), ValueError, "layers"),
    (lambda: reach(torch.ones(3, 3, dtype=torch.bool), 1.5), TypeError, "layers"),
    (lambda: reach_curve(torch.ones(3, 3, dtype=torch.bool), 2, target=torch.ones(4, 4, dtype=torch.bool)),
     ValueError, r"target has shape \(4, 4\)"),
    (lambda: layers_to_reach(torch.ones(2, 3, 3, dtype=torch.bool)), ValueError, r"\(2, 3, 3\)"),
    (lambda: layers_to_reach(torch.ones(3, 3, dtype=torch.bool), max_layers=-2), ValueError, "max_layers"),
    (lambda: bucket_agreement(torch.randn(5, 3), torch.zeros(1, 4, dtype=torch.long), 2), ValueError,
     r"buckets must have shape .*\(1, 4\)"),
    (lambda: bucket_agreement(torch.randn(5, 3), torch.zeros(1, 5), 2), TypeError, "integer bucket ids"),
    (lambda: bucket_agreement(torch.randn(5, 3), torch.zeros(1, 5, dtype=torch.long), 5), ValueError, "k must"),
    (lambda: bucket_collision_rate(torch.zeros(5, dtype=torch.long)), TypeError, r"shape \(5,\)"),
    (lambda: bucket_collision_rate(torch.zeros(2, 1, dtype=torch.long)), ValueError, "at least 2"),
    (lambda: keys_per_query("dense", 4), ValueError, "kind must be one of"),
    (lambda: keys_per_query("window", 4), TypeError, r"\['window', 'dilation', 'causal'\]"),
    (lambda: keys_per_query("block", 4, block=2, window=1), TypeError, "unexpected keyword"),
    (lambda: keys_per_query("window", 0, window=1), ValueError, "length"),
    (lambda: keys_per_query("window", 4, window=-1), ValueError, "window"),
    (lambda: keys_per_query("global", 4, window=1, global_positions=[4]), ValueError, r"0\.\.3"),
    (lambda: keys_per_query("bigbird", 4, window=1, global_count=5, random_count=0), ValueError, "global_count"),
])
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
