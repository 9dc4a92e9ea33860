"""attnbook.knowledge_graph (§6.4): the generated graph, masks from it, the lookup task and the model."""
import pytest
import torch

from attnbook.knowledge_graph import (IGNORE, KINDS, GraphAttentionModel, KnowledgeGraph, LookupBatch,
                                      adjacency, ancestor, fit_with_curve, graph_mask, lookup_accuracy,
                                      lookup_loss, lookup_task, make_hierarchy, random_adjacency_like)
from attnbook.reach import reach


def _graph(regions=3, countries=2, cities=2, seed=0):
    return make_hierarchy(regions, countries, cities, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the graph

@pytest.mark.parametrize("regions, countries, cities", [(4, 2, 3), (2, 3, 1), (1, 1, 4)])
def test_hierarchy_counts_kinds_and_triples(regions, countries, cities):
    g = make_hierarchy(regions, countries, cities, generator=torch.Generator().manual_seed(1))
    n = regions * (1 + countries + countries * cities)
    assert len(g.names) == len(set(g.names)) == n
    assert g.kinds.tolist() == [0] * regions + [1] * regions * countries + [2] * regions * countries * cities
    assert len(g.triples) == n - regions
    for head, relation, tail in g.triples:
        assert g.parent[head].item() == tail and g.kinds[tail] == g.kinds[head] - 1
        assert relation == ("part_of" if KINDS[g.kinds[head]] == "country" else "located_in")
    children = torch.bincount(g.parent[g.parent >= 0], minlength=n)
    assert (children[g.kinds == 0] == countries).all() and (children[g.kinds == 1] == cities).all()
    assert (g.parent[g.kinds == 0] == -1).all()


def test_hierarchy_names_are_reproducible():
    assert _graph(seed=3).names == _graph(seed=3).names
    assert _graph(seed=3).names != _graph(seed=4).names


def test_ancestor_follows_the_parents():
    g = _graph(3, 2, 3)
    for level in range(3):
        got = ancestor(g, level).tolist()
        for e, a in enumerate(got):
            walk = e
            while walk >= 0 and g.kinds[walk] > level:
                walk = g.parent[walk].item()
            assert a == (walk if g.kinds[e] >= level else -1)
    with pytest.raises(ValueError, match="level"):
        ancestor(g, 3)


def test_adjacency_holds_the_triples():
    g = _graph()
    a = adjacency(g)
    assert torch.equal(a, a.T) and a.diagonal().all()
    assert int(a.sum()) == len(g.kinds) + 2 * len(g.triples)
    directed = adjacency(g, symmetric=False, self_loops=False)
    assert int(directed.sum()) == len(g.triples)
    for head, _, tail in g.triples:
        assert directed[head, tail] and not directed[tail, head]


def test_two_layers_of_the_graph_mask_connect_every_city_to_its_region_and_one_does_not():
    g = _graph(4, 2, 3)
    a = adjacency(g)
    cities = (g.kinds == 2).nonzero().flatten()
    region = ancestor(g, 0)[cities]
    assert reach(a, 2)[cities, region].all()
    assert not reach(a, 1)[cities, region].any()


# ---------------------------------------------------------------- masks

def test_graph_mask_matches_a_loop_on_a_partial_sequence():
    g = _graph()
    a = adjacency(g)
    entities = torch.tensor([[3, 0, 10, 7, 1], [14, 2, 5, 6, 9]])      # L = 5 of E = 21 entities
    m = graph_mask(entities, a)
    assert m.shape == (2, 5, 5) and m.dtype == torch.bool
    directed = adjacency(g, symmetric=False)                         # not symmetric: rows and columns differ
    md = graph_mask(entities, directed)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                assert m[b, i, j] == a[entities[b, i], entities[b, j]]
                assert md[b, i, j] == directed[entities[b, i], entities[b, j]]
    assert not torch.equal(md, md.transpose(-2, -1))


def test_graph_mask_rejects_bad_input():
    a = adjacency(_graph())
    with pytest.raises(ValueError, match="0..20"):
        graph_mask(torch.tensor([[0, 21]]), a)
    with pytest.raises(TypeError, match="int64"):
        graph_mask(torch.tensor([[0, 1]], dtype=torch.int32), a)
    with pytest.raises(TypeError, match="boolean"):
        graph_mask(torch.tensor([[0, 1]]), a.float())
    with pytest.raises(ValueError, match="square"):
        graph_mask(torch.tensor([[0, 1]]), a[:, :3])


def test_random_adjacency_keeps_the_density_but_not_the_edges():
    a = adjacency(_graph(4, 2, 3))
    r = random_adjacency_like(a, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r, r.T) and torch.equal(r.diagonal(), a.diagonal())
    assert int(r.sum()) == int(a.sum())
    assert not torch.equal(r, a)
    again = random_adjacency_like(a, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r, again)
    with pytest.raises(ValueError, match="symmetric"):
        random_adjacency_like(adjacency(_graph(), symmetric=False))


# ---------------------------------------------------------------- the task

def test_lookup_task_by_brute_force():
    g = _graph(3, 2, 2)
    held = torch.zeros(len(g.kinds), dtype=torch.bool)
    held[[9, 14]] = True
    data = lookup_task(g, 6, tags=5, held_out=held, generator=torch.Generator().manual_seed(2))
    assert isinstance(data, LookupBatch)
    n = len(g.kinds)
    for b in range(6):
        order = data.entities[b].tolist()
        assert sorted(order) == list(range(n)), "every entity once"
        tag_of = {e: data.tags[b, i].item() for i, e in enumerate(order)}
        region_tags = [tag_of[r] for r in range(3)]
        assert len(set(region_tags)) == 3 and max(region_tags) < 5
        assert all(tag_of[e] == 5 for e in range(3, n)), "only regions carry a tag"
        for i, e in enumerate(order):
            asked = g.kinds[e] == 2 and not held[e]
            want = tag_of[g.parent[g.parent[e]].item()] if asked else IGNORE
            assert data.targets[b, i].item() == want


def test_lookup_task_splits_and_question_counts():
    g = _graph(3, 2, 2)
    held = torch.zeros(len(g.kinds), dtype=torch.bool)
    held[[9, 14]] = True
    gen = torch.Generator().manual_seed(3)
    test = lookup_task(g, 20, held_out=held, split="test", generator=gen)
    asked = test.entities[test.targets != IGNORE]
    assert set(asked.tolist()) == {9, 14}
    one = lookup_task(g, 50, questions=1, held_out=held, generator=gen)
    assert ((one.targets != IGNORE).sum(1) == 1).all()
    assert not held[one.entities[one.targets != IGNORE]].any()
    every = lookup_task(g, 5, split="all", generator=gen)
    assert ((every.targets != IGNORE).sum(1) == 12).all()


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(tags=2), ValueError, "tags"),
    (dict(split="valid"), ValueError, "split"),
    (dict(questions=11), ValueError, "questions must lie in 1..10"),
    (dict(held_out=torch.zeros(3, dtype=torch.bool)), ValueError, "held_out"),
])
def test_lookup_task_rejects_bad_arguments(kwargs, error, message):
    g = _graph(3, 2, 2)
    held = torch.zeros(len(g.kinds), dtype=torch.bool)
    held[[9, 14]] = True
    kwargs = {"held_out": held, **kwargs}
    with pytest.raises(error, match=message):
        lookup_task(g, 2, **kwargs)


# ---------------------------------------------------------------- the model

def test_graph_model_attends_only_along_edges_and_full_attention_everywhere():
    g = _graph(3, 2, 2)
    a = adjacency(g)
    data = lookup_task(g, 4, generator=torch.Generator().manual_seed(4))
    model = GraphAttentionModel(len(g.kinds), tags=8, embed_dim=16, num_heads=2, layers=3, adjacency=a)
    logits, weights = model(data.entities, data.tags)
    assert logits.shape == (4, 21, 8) and len(weights) == 3
    allowed = graph_mask(data.entities, a)[:, None]
    for w in weights:
        assert w.shape == (4, 2, 21, 21)
        assert (w[~allowed.expand_as(w)] == 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(4, 2, 21))
    full = GraphAttentionModel(len(g.kinds), tags=8, embed_dim=16)
    assert all((w > 0).all() for w in full(data.entities, data.tags)[1])


def test_graph_model_is_permutation_equivariant():
    g = _graph(3, 2, 2)
    data = lookup_task(g, 2, generator=torch.Generator().manual_seed(5))
    model = GraphAttentionModel(len(g.kinds), embed_dim=16, adjacency=adjacency(g)).double()
    perm = torch.randperm(21, generator=torch.Generator().manual_seed(6))
    logits, _ = model(data.entities, data.tags)
    shuffled, _ = model(data.entities[:, perm], data.tags[:, perm])
    torch.testing.assert_close(shuffled, logits[:, perm])


def test_graph_model_rejects_bad_input():
    g = _graph(3, 2, 2)
    with pytest.raises(ValueError, match="20 entities"):
        GraphAttentionModel(20, adjacency=adjacency(g))
    model = GraphAttentionModel(21, tags=8, embed_dim=16)
    with pytest.raises(ValueError, match="tags must lie in 0..8"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.full((1, 3), 9))
    with pytest.raises(ValueError, match="one shape"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))


def test_loss_accuracy_and_curve():
    g = _graph(3, 2, 2)
    a = adjacency(g)
    gen = torch.Generator().manual_seed(7)
    data = lookup_task(g, 8, generator=gen)
    model = GraphAttentionModel(21, embed_dim=16, adjacency=a)
    logits, _ = model(data.entities, data.tags)
    asked = data.targets != IGNORE
    want = (logits.argmax(-1)[asked] == data.targets[asked]).float().mean().item()
    assert lookup_accuracy(model, data) == pytest.approx(want)
    loss = lookup_loss(model, data)
    assert loss.dim() == 0 and loss.item() > 0
    with pytest.raises(ValueError, match="no question"):
        lookup_accuracy(model, data._replace(targets=torch.full_like(data.targets, IGNORE)))
    seen = []
    losses, curve = fit_with_curve(model, lambda step: lookup_task(g, 4, generator=gen), lookup_loss,
                                   lambda m: seen.append(m.training) or lookup_accuracy(m, data),
                                   steps=7, every=3)
    assert len(losses) == 7 and [s for s, _ in curve] == [0, 3, 6, 7]
    assert not any(seen), "the model is evaluated in eval mode"
    assert curve[-1][1] == pytest.approx(lookup_accuracy(model, data))


def test_the_graph_model_learns_the_two_hop_lookup_and_generalises():
    from attnbook.train import seed_everything

    g = _graph(2, 2, 3)
    held = torch.zeros(len(g.kinds), dtype=torch.bool)
    held[[6, 11]] = True
    gen = seed_everything(0)
    model = GraphAttentionModel(len(g.kinds), tags=4, embed_dim=16, num_heads=1, adjacency=adjacency(g))
    fit_with_curve(model, lambda step: lookup_task(g, 16, tags=4, held_out=held, generator=gen), lookup_loss,
                   lambda m: 0.0, steps=120, every=1000, lr=1e-2)
    test = lookup_task(g, 64, tags=4, held_out=held, split="test", generator=torch.Generator().manual_seed(1))
    assert lookup_accuracy(model, test) > 0.9


def test_knowledge_graph_type_checks():
    with pytest.raises(TypeError, match="KnowledgeGraph"):
        adjacency({"kinds": []})
    with pytest.raises(TypeError, match="generator"):
        make_hierarchy(generator=0)
    assert isinstance(_graph(), KnowledgeGraph)
