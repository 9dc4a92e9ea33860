"""Neuro-symbolic attention: a mask derived from a small knowledge graph (§6.4).

A knowledge graph stores facts as triples (head, relation, tail). Attention that is guided by
one lets token i attend to token j only when their entities are linked in the graph
(True = may attend), so that the symbolic structure decides *where* information may flow
and learning decides *what* flows; L layers follow paths of up to L edges, as in a graph
attention network (Veličković et al., 2018) or the "visible matrix" of K-BERT (Liu et al., 2020).

:func:`make_hierarchy` generates a graph of regions, countries and cities; :func:`lookup_task`
asks, for every city in a shuffled list of all entities, the tag that its *region* carries in
this sequence: two hops (city → country → region). :class:`GraphAttentionModel` is a small
pre-norm attention encoder that takes any (B, L, L) mask: the graph's, none (full attention),
or a random mask of the same density (:func:`random_adjacency_like`).

References (book/references.bib): ``velickovic2018graph``, ``liu2020kbert``.
"""
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .multihead import MultiHeadAttention

IGNORE = -100  # the label of positions without a target (torch's default ignore_index)
KINDS = ("region", "country", "city")
RELATIONS = {("country", "region"): "part_of", ("city", "country"): "located_in"}

KnowledgeGraph = namedtuple("KnowledgeGraph", "names kinds parent triples")
KnowledgeGraph.__doc__ = """A generated hierarchy: names (E,) strings; kinds (E,) int64 index into KINDS
(0 region, 1 country, 2 city); parent (E,) int64, the entity one level up (−1 for a region);
triples, a list of (head, relation, tail) with entity indices and relation names."""

LookupBatch = namedtuple("LookupBatch", "entities tags targets")
LookupBatch.__doc__ = """A batch of :func:`lookup_task`: entities (B, E) a permutation of the entities per
sequence, tags (B, E) in 0..T (T = "no tag"), targets (B, E) in 0..T-1 or IGNORE; int64."""

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")


def _check_generator(generator):
    _checks.generator(generator)


def _names(count, generator):
    """``count`` distinct invented names of two or three consonant-vowel syllables."""
    names = []
    while len(names) < count:
        syllables = 2 + int(torch.randint(2, (1,), generator=generator))
        picks = torch.randint(len(_ONSETS) * len(_VOWELS), (syllables,), generator=generator).tolist()
        name = "".join(_ONSETS[p // len(_VOWELS)] + _VOWELS[p % len(_VOWELS)] for p in picks).capitalize()
        if name not in names:
            names.append(name)
    return names


def make_hierarchy(regions=4, countries=2, cities=3, *, generator=None):
    """A knowledge graph of ``regions`` regions, each with ``countries`` countries, each with ``cities`` cities.

    Entities are numbered regions first, then countries, then cities; each has an invented name.
    Triples: (country, "part_of", region) and (city, "located_in", country).
    -> :class:`KnowledgeGraph` with E = r + r·k + r·k·c entities and E − r triples. Cost O(E). §6.4.
    """
    regions = _checks.at_least(regions, "regions", 1)
    countries = _checks.at_least(countries, "countries", 1)
    cities = _checks.at_least(cities, "cities", 1)
    _check_generator(generator)
    n_countries, n_cities = regions * countries, regions * countries * cities
    kinds = torch.tensor([0] * regions + [1] * n_countries + [2] * n_cities)
    parent = torch.cat([torch.full((regions,), -1), torch.arange(n_countries) // countries,
                        regions + torch.arange(n_cities) // cities])
    triples = [(e, RELATIONS[(KINDS[kinds[e]], KINDS[kinds[p]])], p)
               for e, p in enumerate(parent.tolist()) if p >= 0]
    return KnowledgeGraph(_names(len(kinds), generator), kinds, parent, triples)


def ancestor(graph, level=0):
    """For every entity, its ancestor of kind ``level`` (0: its region), itself at that level
    and −1 above it: (E,) int64. §6.4."""
    if not isinstance(graph, KnowledgeGraph):
        raise TypeError(f"graph must be a KnowledgeGraph, got {type(graph).__name__}")
    if level not in range(len(KINDS)):
        raise ValueError(f"level must be one of 0..{len(KINDS) - 1} ({KINDS}), got {level!r}")
    out = torch.arange(len(graph.kinds))
    for _ in range(len(KINDS)):
        up = (graph.kinds[out] > level) & (out >= 0)
        out = torch.where(up, graph.parent[out.clamp(min=0)], out)
    return torch.where(graph.kinds < level, torch.full_like(out, -1), out)


def adjacency(graph, *, symmetric=True, self_loops=True):
    """A (E, E) bool matrix, True where a triple links head and tail (and, if ``symmetric``, tail
    and head; if ``self_loops``, each entity and itself). A (i, j) = "entity i may read j". §6.4."""
    if not isinstance(graph, KnowledgeGraph):
        raise TypeError(f"graph must be a KnowledgeGraph, got {type(graph).__name__}")
    n = len(graph.kinds)
    adj = torch.eye(n, dtype=torch.bool) if self_loops else torch.zeros(n, n, dtype=torch.bool)
    for head, _, tail in graph.triples:
        adj[head, tail] = True
        if symmetric:
            adj[tail, head] = True
    return adj


def _check_adjacency(adj, name="adjacency"):
    if not isinstance(adj, torch.Tensor) or adj.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean tensor, got "
                        f"{adj.dtype if isinstance(adj, torch.Tensor) else type(adj).__name__}")
    if adj.dim() != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"{name} must be square (E, E), got shape {tuple(adj.shape)}")
    return adj


def graph_mask(entities, adj):
    """The attention mask of a sequence of entities: m_bij = A[e_bi, e_bj] (True = may attend).

    entities (..., L) int64 indices into adj (E, E) bool -> (..., L, L) bool. Token i reads
    token j only if the graph links their entities: the symbolic part of the model. §6.4.
    """
    _checks.tensor(entities, "entities", floating=False)
    _check_adjacency(adj, "adj")
    if entities.dtype != torch.int64:
        raise TypeError(f"entities must be an int64 tensor, got dtype {entities.dtype}")
    if entities.numel() and (entities.min() < 0 or entities.max() >= adj.shape[0]):
        raise ValueError(f"entities must lie in 0..{adj.shape[0] - 1} for an adjacency of shape "
                         f"{tuple(adj.shape)}, got values in [{entities.min().item()}, {entities.max().item()}]")
    return adj[entities[..., :, None], entities[..., None, :]]


def random_adjacency_like(adj, *, generator=None):
    """A random symmetric adjacency with the same number of edges as ``adj`` (self-loops kept).

    adj (E, E) bool, symmetric -> (E, E) bool with the same diagonal and the same number of
    off-diagonal pairs, drawn uniformly: a control with the density of the graph but none of
    its knowledge. §6.4.
    """
    _check_adjacency(adj)
    _check_generator(generator)
    if not torch.equal(adj, adj.T):
        raise ValueError("adj must be symmetric (an undirected graph)")
    n = adj.shape[0]
    upper = torch.triu_indices(n, n, 1)
    edges = int(adj[upper[0], upper[1]].sum())
    pick = torch.randperm(upper.shape[1], generator=generator)[:edges]
    out = torch.diag(adj.diagonal()).bool()
    out[upper[0, pick], upper[1, pick]] = True
    out[upper[1, pick], upper[0, pick]] = True
    return out


def lookup_task(graph, batch, *, tags=8, questions=None, held_out=None, split="train", generator=None):
    """A batch of the two-hop lookup: every city must name the tag that its region carries.

    Each sequence lists all E entities in a random order. The r regions carry distinct tags
    drawn from 0..T-1 (T = ``tags`` ≥ r), fresh for every sequence; countries and cities carry
    the "no tag" symbol T. The target of a city is its region's tag (city → country → region);
    other tokens are IGNORE. ``questions``: how many cities of each sequence are asked (drawn at
    random; None: all). ``held_out`` (E,) bool marks cities whose questions are kept out of
    training: ``split="train"`` asks only the other cities, ``"test"`` only these, ``"all"`` any.
    -> :class:`LookupBatch` of (B, E) int64 tensors. Cost O(B·E). §6.4.
    """
    if not isinstance(graph, KnowledgeGraph):
        raise TypeError(f"graph must be a KnowledgeGraph, got {type(graph).__name__}")
    batch = _checks.at_least(batch, "batch", 1)
    n, regions = len(graph.kinds), int((graph.kinds == 0).sum())
    tags = _checks.at_least(tags, "tags", regions)
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if held_out is None:
        held_out = torch.zeros(n, dtype=torch.bool)
    if not isinstance(held_out, torch.Tensor) or held_out.dtype != torch.bool or held_out.shape != (n,):
        raise ValueError(f"held_out must be a boolean tensor of shape ({n},), one flag per entity")
    _check_generator(generator)
    order = torch.rand(batch, n, generator=generator).argsort(-1)                  # (B, E)
    region_tags = torch.rand(batch, tags, generator=generator).argsort(-1)[:, :regions]
    entity_tags = torch.full((batch, n), tags)
    entity_tags[:, :regions] = region_tags                                         # regions come first
    region = ancestor(graph, 0)
    answers = region_tags.gather(1, region[order])                                 # tag of each token's region
    eligible = graph.kinds[order] == 2
    if split == "train":
        eligible &= ~held_out[order]
    elif split == "test":
        eligible &= held_out[order]
    if questions is None:
        asked = eligible
    else:
        available = int(eligible[0].sum())
        if not 1 <= questions <= available:
            raise ValueError(f"questions must lie in 1..{available}, the cities of split {split!r}, got {questions}")
        draw = torch.rand(batch, n, generator=generator).masked_fill(~eligible, 2.0)
        picked = draw.argsort(-1)[:, :questions]                                   # `questions` eligible cities
        asked = torch.zeros_like(eligible).scatter_(1, picked, True)
    targets = answers.masked_fill(~asked, IGNORE)
    return LookupBatch(order, entity_tags.gather(1, order), targets)


class GraphAttentionModel(nn.Module):
    """A pre-norm attention encoder whose attention follows a given mask (or none).

    x_i = E_ent[e_i] + E_tag[t_i]; for each of ``layers`` layers, x = x + MHA(LN(x), mask);
    logits = W LN(x). ``adjacency`` (E, E) bool: the mask of a sequence is
    :func:`graph_mask` (entities, adjacency); None gives full attention. No positions: the
    order of the list carries no information. entities, tags (B, L) -> logits (B, L, T) and
    the weights of every layer, a list of (B, h, L, L). Parameters: (E + T + 1)·D + layers·(4D²
    + 4D + 2D) + 2D + D·T + T. Cost O(layers·(B·L²·D + B·L·D²)). Explained in §6.4.
    """

    def __init__(self, entities, tags=8, embed_dim=32, num_heads=2, layers=2, *, adjacency=None):
        super().__init__()
        self.entities = _checks.at_least(entities, "entities", 1)
        self.tags = _checks.at_least(tags, "tags", 1)
        _checks.at_least(layers, "layers", 1)
        if adjacency is not None:
            _check_adjacency(adjacency)
            if adjacency.shape[0] != entities:
                raise ValueError(f"adjacency has shape {tuple(adjacency.shape)} but there are {entities} entities")
        self.register_buffer("adjacency", adjacency)
        self.entity = nn.Embedding(entities, embed_dim)
        self.tag = nn.Embedding(tags + 1, embed_dim)
        self.attn = nn.ModuleList(MultiHeadAttention(embed_dim, num_heads) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in range(layers + 1))
        self.readout = nn.Linear(embed_dim, tags)

    def forward(self, entities, tags):
        """(logits (B, L, T), [weights (B, h, L, L) per layer])."""
        for name, t, top in (("entities", entities, self.entities), ("tags", tags, self.tags + 1)):
            _checks.tensor(t, name, floating=False)
            if t.dim() != 2:
                raise ValueError(f"{name} must be (B, L), got shape {tuple(t.shape)}")
            if t.numel() and (t.min() < 0 or t.max() >= top):
                raise ValueError(f"{name} must lie in 0..{top - 1}")
        if entities.shape != tags.shape:
            raise ValueError(f"entities {tuple(entities.shape)} and tags {tuple(tags.shape)} must have one shape")
        mask = None if self.adjacency is None else graph_mask(entities, self.adjacency)
        x = self.entity(entities) + self.tag(tags)
        weights = []
        for attn, norm in zip(self.attn, self.norms):
            z = norm(x)
            out, w = attn(z, z, z, mask)
            x = x + out
            weights.append(w)
        return self.readout(self.norms[-1](x)), weights


def lookup_loss(model, batch):
    """Mean cross-entropy over the asked cities of a :class:`LookupBatch`; the ``loss_fn`` for
    :func:`attnbook.train.fit`. §6.4."""
    if not isinstance(batch, LookupBatch):
        raise TypeError(f"batch must be a LookupBatch, got {type(batch).__name__}")
    logits, _ = model(batch.entities, batch.tags)
    return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def lookup_accuracy(model, batch):
    """The fraction of asked cities (targets ≠ IGNORE) whose argmax tag is right, a float. §6.4."""
    if not isinstance(batch, LookupBatch):
        raise TypeError(f"batch must be a LookupBatch, got {type(batch).__name__}")
    asked = batch.targets != IGNORE
    if not asked.any():
        raise ValueError("the batch asks no question (every target is IGNORE)")
    logits, _ = model(batch.entities, batch.tags)
    return (logits.argmax(-1)[asked] == batch.targets[asked]).float().mean().item()


def fit_with_curve(model, batch_fn, loss_fn, evaluate, *, steps, every, **fit_kwargs):
    """:func:`attnbook.train.fit`, recording ``evaluate(model)`` before steps 0, every, 2·every, …
    and after the last step. Returns (losses, curve) with curve a list of (steps done, value). §6.4."""
    from .train import fit

    if not callable(evaluate):
        raise TypeError(f"evaluate must be callable, got {type(evaluate).__name__}")
    _checks.positive(every, "every", integer=True)
    curve = []

    def batches(step):
        if step % every == 0:
            was_training = model.training
            model.eval()
            curve.append((step, evaluate(model)))
            model.train(was_training)
        return batch_fn(step)

    losses = fit(model, batches, loss_fn, steps=steps, **fit_kwargs)
    curve.append((steps, evaluate(model)))
    return losses, curve
