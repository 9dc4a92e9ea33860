"""Adaptive attention spans: a soft ramp mask whose length is learned per head or per token (§6.4).

Sukhbaatar et al. (2019) let every head of a causal Transformer learn how far back it looks.
Query i sees key j at the distance d = i − j through the ramp

    m_z(d) = clamp((R + z − d) / R, 0, 1),

1 up to the span z, falling linearly to 0 over R more positions, and the weights become
a_ij = m_z(d_ij) exp(s_ij) / Σ_j' m_z(d_ij') exp(s_ij'). The ramp keeps z differentiable; an
L1 penalty on z makes each head keep only the context it needs, and a kernel that skips the
keys with m = 0 spends O(z + R) instead of O(L) per query. The *dynamic* variant computes z
for each token from its own representation, z_i = S σ(w·x_i + b), so that the span is chosen
per input.

:func:`lag_task` is a task whose needed span differs from token to token, and
:class:`SpanModel` a one-layer model with no span, a span per head, or a span per token.

References (book/references.bib): ``sukhbaatar2019adaptive``, ``graves2016adaptive``,
``shaw2018self``.
"""
import math
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .attention import check_qkv

IGNORE = -100  # the label of positions without a target (torch's default ignore_index)
MODES = ("full", "head", "dynamic")

LagBatch = namedtuple("LagBatch", "tokens cues targets")
LagBatch.__doc__ = """A batch of :func:`lag_task`: tokens (B, L) in 0..V-1, cues (B, L) in 0..C-1 and
targets (B, L) in 0..V-1 (IGNORE where the cued lag reaches before the start), all int64."""


def _check_span(span, lq, name="span"):
    _checks.tensor(span, name)
    if span.shape[-1] != lq:
        raise ValueError(f"{name} has shape {tuple(span.shape)}: its last dimension must be the "
                         f"Lq = {lq} queries (expand a per-head span to (..., Lq))")
    if not torch.isfinite(span).all() or (span < 0).any():
        raise ValueError(f"{name} must be finite and ≥ 0, got values in "
                         f"[{span.min().item()}, {span.max().item()}]")
    return span


def distances(lq, lk=None, *, device=None):
    """d_ij = (Lk − Lq + i) − j: how far key j lies behind query i, the last query being the last key.

    Lq ≤ Lk queries are the last Lq of Lk positions (a memory of Lk − Lq earlier positions, as in
    Transformer-XL or a KV cache); d < 0 marks a future key. Returns (Lq, Lk) int64. §6.4.
    """
    _checks.positive(lq, "lq", integer=True)
    lk = lq if lk is None else lk
    _checks.positive(lk, "lk", integer=True)
    if lq > lk:
        raise ValueError(f"lq={lq} queries cannot be the last positions of only lk={lk} keys")
    return (lk - lq + torch.arange(lq, device=device))[:, None] - torch.arange(lk, device=device)


def span_mask(span, lk, *, ramp=4.0):
    """m_ij = clamp((R + z_i − d_ij) / R, 0, 1) for d_ij ≥ 0, and 0 for future keys (d_ij < 0).

    span (..., Lq): the span z_i ≥ 0 of each query (with heads: (..., h, Lq)); lk ≥ Lq: the
    number of keys; ramp R > 0 -> mask (..., Lq, Lk) with values in [0, 1],
    differentiable in z. Key j is reached (m > 0) exactly when 0 ≤ d_ij < z_i + R.
    Cost O(Lq·Lk). Explained in §6.4.
    """
    _checks.tensor(span, "span")
    _checks.positive(ramp, "ramp")
    lq = span.shape[-1]
    _check_span(span, lq)
    d = distances(lq, lk, device=span.device).to(span.dtype)
    m = ((ramp + span[..., None] - d) / ramp).clamp(0.0, 1.0)
    return m * (d >= 0)


def span_softmax(scores, span, *, ramp=4.0):
    """Adaptive-span weights a_ij = m_ij exp(s_ij) / Σ_j' m_ij' exp(s_ij'), m = :func:`span_mask`.

    scores (..., Lq, Lk), span broadcastable to (..., Lq) -> weights (..., Lq, Lk); each row sums
    to 1 (key d = 0, the query's own position, always has m = 1). Equivalent to adding log m to
    the scores: a key outside the span gets weight exactly 0. Cost O(Lq·Lk). §6.4.
    """
    _checks.tensor(scores, "scores", min_dim=2)
    lq, lk = scores.shape[-2:]
    if lq > lk:
        raise ValueError(f"scores have shape {tuple(scores.shape)}: adaptive spans need Lq ≤ Lk "
                         "(the queries are the last Lq positions)")
    _checks.tensor(span, "span", min_dim=0)
    if span.dim() == 0:
        span = span.expand(lq)
    if span.shape[-1] == 1 and lq > 1:
        span = span.expand(*span.shape[:-1], lq)
    _check_span(span, lq)
    mask = span_mask(span, lk, ramp=ramp)
    try:
        torch.broadcast_shapes(mask.shape, scores.shape)
    except RuntimeError:
        raise ValueError(f"span has shape {tuple(span.shape)}, which does not broadcast to the "
                         f"queries of scores {tuple(scores.shape)}") from None
    allowed = (distances(lq, lk, device=scores.device) >= 0)
    logits = scores.masked_fill(~allowed, float("-inf"))
    top = logits.amax(-1, keepdim=True).detach()
    weights = mask * torch.exp(logits - top)
    return weights / weights.sum(-1, keepdim=True)


def adaptive_span_attention(query, key, value, span, *, ramp=4.0, scale=None):
    """Causal attention with a soft span: softmax weighted by m_z(d) = clamp((R + z − d)/R, 0, 1).

    query (..., Lq, d), key (..., Lk, d), value (..., Lk, d_v) with Lq ≤ Lk (the queries are the
    last Lq positions); span (..., Lq) or broadcastable (a scalar, or (h, 1) per head) ->
    output (..., Lq, d_v) and weights (..., Lq, Lk). With z ≥ Lk − 1 it is plain causal
    attention. Computed densely here, O(Lq·Lk·(d + d_v)); a kernel that skips m = 0 costs
    O(Lq·(z + R)·(d + d_v)). Explained in §6.4.
    """
    check_qkv(query, key, value)
    d = query.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else _checks.positive(scale, "scale")
    if not isinstance(span, torch.Tensor):
        span = torch.tensor(float(span), dtype=query.dtype, device=query.device)
    weights = span_softmax(query @ key.transpose(-2, -1) * scale, span, ramp=ramp)
    return weights @ value, weights


def keys_in_span(span, lk, *, ramp=4.0):
    """How many keys each query reaches: n_i = min(Lk − Lq + i + 1, ⌈z_i + R⌉), the j with m_ij > 0.

    span (..., Lq) -> (..., Lq) int64. This is the number of scores a kernel that skips the
    masked keys computes for query i; full causal attention computes Lk − Lq + i + 1. §6.4.
    """
    _checks.tensor(span, "span")
    _checks.positive(ramp, "ramp")
    lq = span.shape[-1]
    _check_span(span, lq)
    _checks.positive(lk, "lk", integer=True)
    causal = lk - lq + 1 + torch.arange(lq, device=span.device)
    if (causal < 1).any():
        raise ValueError(f"span has Lq = {lq} queries but there are only lk = {lk} keys")
    return torch.minimum(torch.ceil(span + ramp).long(), causal)


# ---------------------------------------------------------------- the task

def lag_task(batch, length=32, *, vocab=8, lags=(1, 4, 12), generator=None):
    """A batch of the cued-lag task: y_i = x_{i − ℓ(c_i)}, the symbol ℓ(c_i) positions back.

    Every position holds a symbol x_i (uniform in 0..V-1, V = ``vocab``) and a cue c_i (uniform
    in 0..len(lags)-1) that says how far back its answer lies: ℓ(c) = lags[c]. So the context a
    token needs differs from token to token. Targets are IGNORE where i < ℓ(c_i).
    ``generator`` (a torch.Generator) makes the batch reproducible.
    -> :class:`LagBatch` (tokens, cues, targets), each (B, L) int64. Cost O(B·L). §6.4.
    """
    batch = _checks.at_least(batch, "batch", 1)
    length = _checks.at_least(length, "length", 2)
    vocab = _checks.at_least(vocab, "vocab", 2)
    lags = tuple(lags)
    if not lags or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in lags):
        raise ValueError(f"lags must be a non-empty tuple of integers ≥ 1, got {lags}")
    if max(lags) >= length:
        raise ValueError(f"the largest lag {max(lags)} must be smaller than length={length}")
    _checks.generator(generator)
    tokens = torch.randint(vocab, (batch, length), generator=generator)
    cues = torch.randint(len(lags), (batch, length), generator=generator)
    source = torch.arange(length) - torch.tensor(lags)[cues]           # (B, L): i − ℓ(c_i)
    targets = tokens.gather(1, source.clamp(min=0))
    targets = targets.masked_fill(source < 0, IGNORE)
    return LagBatch(tokens, cues, targets)


# ---------------------------------------------------------------- the model

class SpanModel(nn.Module):
    """One causal attention layer over relative positions, with no span, a span per head or per token.

    x_i = E_sym[x_i] + E_cue[c_i]. Head h scores key j by the query's match with the
    *distance* d = i − j: s_ij = (W_q x_i)_h · r_{h, d} / √d_h (r a learned embedding of each
    distance, a relative position key as in Shaw et al., 2018), reads v_j = (W_v x_j)_h, and
    logits_i = W_o Concat_h(Σ_j a_hij v_hj).
    ``mode`` sets the weights a: "full", the causal softmax; "head", :func:`span_softmax` with one
    learned span per head, z_h = S σ(θ_h); "dynamic", a span per head and token,
    z_hi = S σ(w_h·x_i + b_h). S = ``max_span``, R = ``ramp``.
    tokens, cues (B, L) -> logits (B, L, V), weights (B, h, L, L), spans (B, h, L) (None for
    "full"). Cost O(B·h·L²·d_h + B·L·E²). Explained in §6.4.
    """

    def __init__(self, vocab=8, cues=3, length=32, embed_dim=32, num_heads=1, *, mode="dynamic",
                 max_span=32.0, ramp=4.0, init_span=0.5):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.vocab, self.length = _checks.at_least(vocab, "vocab", 2), _checks.at_least(length, "length", 2)
        self.num_heads = _checks.at_least(num_heads, "num_heads", 1)
        _checks.positive(embed_dim, "embed_dim", integer=True)
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide embed_dim={embed_dim}")
        if not 0 < init_span < 1:
            raise ValueError(f"init_span is the starting span as a fraction of max_span, in (0, 1); got {init_span}")
        self.mode = mode
        self.max_span = float(_checks.positive(max_span, "max_span"))
        self.ramp = float(_checks.positive(ramp, "ramp"))
        self.head_dim = embed_dim // num_heads
        self.symbol = nn.Embedding(vocab, embed_dim)
        self.cue = nn.Embedding(_checks.at_least(cues, "cues", 1), embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.distance = nn.Parameter(torch.randn(length, embed_dim))    # r_d, d = 0..L-1
        self.out_proj = nn.Linear(embed_dim, vocab)
        start = math.log(init_span / (1 - init_span))                  # σ(start) = init_span
        if mode == "head":
            self.span_logit = nn.Parameter(torch.full((num_heads,), start))
        elif mode == "dynamic":
            self.span_proj = nn.Linear(embed_dim, num_heads)
            nn.init.zeros_(self.span_proj.weight)
            nn.init.constant_(self.span_proj.bias, start)

    def spans(self, x):
        """The spans z (B, h, L) for token features x (B, L, E); None in mode "full"."""
        b, length, _ = x.shape
        if self.mode == "head":
            z = self.max_span * torch.sigmoid(self.span_logit)
            return z[None, :, None].expand(b, self.num_heads, length)
        if self.mode == "dynamic":
            return (self.max_span * torch.sigmoid(self.span_proj(x))).transpose(1, 2)
        return None

    def forward(self, tokens, cues):
        """(logits (B, L, V), weights (B, h, L, L), spans (B, h, L) or None)."""
        for name, t in (("tokens", tokens), ("cues", cues)):
            _checks.tensor(t, name, floating=False)
            if t.dim() != 2:
                raise ValueError(f"{name} must be (B, L), got shape {tuple(t.shape)}")
        if tokens.shape != cues.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} and cues {tuple(cues.shape)} must have one shape")
        b, length = tokens.shape
        if length > self.length:
            raise ValueError(f"tokens have length {length} but the model has {self.length} distances")
        h, dh = self.num_heads, self.head_dim
        x = self.symbol(tokens) + self.cue(cues)                                    # (B, L, E)
        q = self.q_proj(x).view(b, length, h, dh).transpose(1, 2)                   # (B, h, L, dh)
        r = self.distance[:length].view(length, h, dh).transpose(0, 1)              # (h, L, dh)
        by_distance = q @ r.transpose(-2, -1) / math.sqrt(dh)                       # (B, h, L, D)
        d = distances(length, device=tokens.device)
        scores = by_distance.gather(-1, d.clamp(min=0).expand(b, h, length, length))
        z = self.spans(x)
        if z is None:
            weights = torch.softmax(scores.masked_fill(d < 0, float("-inf")), dim=-1)
        else:
            weights = span_softmax(scores, z, ramp=self.ramp)
        v = self.v_proj(x).view(b, length, h, dh).transpose(1, 2)
        out = (weights @ v).transpose(1, 2).reshape(b, length, h * dh)
        return self.out_proj(out), weights, z


def span_loss(model, batch, *, penalty=0.0):
    """Cross-entropy on the labelled positions + penalty · mean span z (over heads and tokens).

    The ``loss_fn`` for :func:`attnbook.train.fit` (wrap it to fix ``penalty``); the penalty is
    Sukhbaatar et al.'s L1 cost on the spans, here in units of positions. §6.4.
    """
    if not isinstance(batch, LagBatch):
        raise TypeError(f"batch must be a LagBatch, got {type(batch).__name__}")
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or penalty < 0:
        raise ValueError(f"penalty must be a number ≥ 0, got {penalty!r}")
    logits, _, z = model(batch.tokens, batch.cues)
    loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)
    return loss if z is None else loss + penalty * z.mean()


SpanReport = namedtuple("SpanReport", "accuracy keys spans")
SpanReport.__doc__ = """Per cue c (one entry per lag): accuracy (C,) on its labelled positions, keys (C,)
the mean number of keys reached per token of the cue, summed over heads (the scores a
span-aware kernel computes), spans (C, h) the mean span z of each head (NaN in mode "full")."""


@torch.no_grad()
def span_report(model, batch):
    """Accuracy, keys reached and spans of a :class:`SpanModel` on a :class:`LagBatch`, per cue.

    Accuracy is measured at the labelled positions; keys (counted with :func:`keys_in_span`; for
    "full", every causal key, i + 1) and spans at every position of the cue, since a model
    spends them whether or not the token has an answer. §6.4.
    """
    if not isinstance(batch, LagBatch):
        raise TypeError(f"batch must be a LagBatch, got {type(batch).__name__}")
    logits, _, z = model(batch.tokens, batch.cues)
    b, length = batch.tokens.shape
    h = model.num_heads
    if z is None:
        keys = (torch.arange(length) + 1).expand(b, h, length)
        z = torch.full((b, h, length), float("nan"))
    else:
        keys = keys_in_span(z, length, ramp=model.ramp)
    right = logits.argmax(-1) == batch.targets
    labelled = batch.targets != IGNORE
    cues = int(model.cue.num_embeddings)
    acc, n_keys, spans = torch.full((cues,), float("nan")), torch.full((cues,), float("nan")), \
        torch.full((cues, h), float("nan"))
    for c in range(cues):
        where = batch.cues == c
        if (where & labelled).any():
            acc[c] = right[where & labelled].float().mean()
        if where.any():
            n_keys[c] = keys.sum(1)[where].float().mean()
            spans[c] = z.transpose(1, 2)[where].mean(0)
    return SpanReport(acc, n_keys, spans)
