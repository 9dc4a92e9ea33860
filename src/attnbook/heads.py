"""What the heads of a multi-head layer learn: a task that needs two relations, a tiny model
whose heads can be switched off, per-head relation scores and head ablation (§3.3).

The task (:func:`two_relation_task`): a sequence of symbols from an alphabet of V, one of
which is *marked* (its token id is shifted by V). The label at every position i ≥ 1 is the
pair (x_{i-1}, x_m), encoded as the class V·x_{i-1} + x_m: it needs the previous token (a
relation by *position*) and the marked token (a relation by *content*). One attention layer
can fetch both at once if two heads share the work. :class:`HeadsModel` is that layer, with a
``head_mask`` that multiplies each head's output before Wᴼ (0 = the head is ablated), as in
Michel et al. (2019).

References (book/references.bib): ``vaswani2017attention``, ``michel2019sixteen``,
``voita2019analyzing``, ``clark2019what``, ``olsson2022context``.
"""
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .attention import attention
from .multihead import MultiHeadAttention, merge_heads, split_heads
from .transformer import FeedForward

IGNORE = -100  # the label of positions without a target (torch's default ignore_index)

TwoRelationBatch = namedtuple("TwoRelationBatch", "tokens targets marked")
TwoRelationBatch.__doc__ = """A batch of :func:`two_relation_task`: tokens (B, L) in 0..2V-1, targets
(B, L) in 0..V²-1 (IGNORE at position 0) and the marked positions (B,)."""


def _check_index(x, name):
    """Raise unless ``x`` is an int64 tensor (token ids or positions)."""
    _checks.tensor(x, name, floating=False)
    if x.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 tensor, got dtype {x.dtype}")
    return x


def two_relation_task(batch, length=8, vocab=6, *, generator=None):
    """A batch of the two-relation task: y_i = V·x_{i-1} + x_m, the pair (previous, marked), for i ≥ 1.

    Each of the ``batch`` sequences holds ``length`` symbols drawn uniformly from 0..V-1
    (V = ``vocab``); one position m, uniform in 0..L-1, is marked: its token id is the symbol
    plus V, so the model sees 2V token ids. The target at position 0 is IGNORE (there is no
    previous token). ``generator`` (a torch.Generator) makes the batch reproducible.
    -> :class:`TwoRelationBatch` (tokens (B, L), targets (B, L), marked (B,)), all int64.
    Cost O(B·L). Explained in §3.3.
    """
    batch = _checks.at_least(batch, "batch", 1)
    length = _checks.at_least(length, "length", 2)
    vocab = _checks.at_least(vocab, "vocab", 2)
    _checks.generator(generator)
    symbols = torch.randint(vocab, (batch, length), generator=generator)
    marked = torch.randint(length, (batch,), generator=generator)
    rows = torch.arange(batch)
    tokens = symbols.clone()
    tokens[rows, marked] += vocab
    targets = torch.full_like(symbols, IGNORE)
    targets[:, 1:] = vocab * symbols[:, :-1] + symbols[rows, marked][:, None]
    return TwoRelationBatch(tokens, targets, marked)


def token_names(tokens, vocab):
    """Readable labels for a sequence (L,) of the task: symbol k is the letter 'a' + k, and the
    marked token is written in capitals with a star, e.g. ['c', 'a', '*F', 'b']. §3.3."""
    _check_index(tokens, "tokens")
    vocab = _checks.at_least(vocab, "vocab", 1)
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be one sequence (L,), got shape {tuple(tokens.shape)}")
    if tokens.min() < 0 or tokens.max() >= 2 * vocab:
        raise ValueError(f"tokens must lie in 0..{2 * vocab - 1} for vocab={vocab}")
    letters = [chr(ord("a") + (int(t) % vocab)) if vocab <= 26 else str(int(t) % vocab) for t in tokens]
    return [("*" + s.upper()) if int(t) >= vocab else s for s, t in zip(letters, tokens)]


class HeadsModel(nn.Module):
    """A one-layer pre-norm Transformer classifier whose heads can be ablated.

    x = E_tok[t mod V] + E_mark[t ≥ V] + E_pos for the token ids t; z = x + MHA(LN(x)) with
    MHA = Concat(ξ_1 head_1, …, ξ_h head_h) Wᴼ (ξ = ``head_mask``, 1 = on, 0 = ablated);
    y = z + FFN(LN(z)); logits = W_out LN(y).
    tokens (B, L) int64 in 0..2V-1 -> logits (B, L, V²) and weights (B, h, L, L).
    The attention is bidirectional (no mask). The position embeddings start with standard
    deviation ``position_std`` (2 by default, against 1 for the tokens), so that a relation
    by position is as easy to find early in training as one by content. Parameters:
    V·E + 2E + L·E (embeddings) + 4E² + 4E (attention) + 2·E·H + H + E (FFN) + 6E (norms) + E·V² + V² (the readout).
    Cost O(B·L²·E + B·L·E² + B·L·E·H). Built from :class:`~attnbook.MultiHeadAttention` and
    :class:`~attnbook.transformer.FeedForward`. Explained in §3.3.
    """

    def __init__(self, vocab=6, length=8, embed_dim=32, num_heads=2, hidden_dim=64, *, position_std=2.0):
        super().__init__()
        self.vocab = _checks.at_least(vocab, "vocab", 2)
        self.length = _checks.at_least(length, "length", 2)
        self.num_heads = _checks.at_least(num_heads, "num_heads", 1)
        self.token = nn.Embedding(vocab, embed_dim)
        self.mark = nn.Embedding(2, embed_dim)
        self.position = nn.Embedding(length, embed_dim)
        nn.init.normal_(self.position.weight, std=_checks.positive(position_std, "position_std"))
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(embed_dim) for _ in range(3))
        self.attn = MultiHeadAttention(embed_dim, num_heads)
        self.ffn = FeedForward(embed_dim, hidden_dim)
        self.readout = nn.Linear(embed_dim, vocab * vocab)

    def check(self, tokens, head_mask=None):
        """Raise unless tokens (B, L) and head_mask (h,) fit the model; return the head mask."""
        _check_index(tokens, "tokens")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, L), got shape {tuple(tokens.shape)}")
        if not 1 <= tokens.shape[1] <= self.length:
            raise ValueError(f"tokens have length {tokens.shape[1]} but the model has {self.length} positions")
        if tokens.min() < 0 or tokens.max() >= 2 * self.vocab:
            raise ValueError(f"tokens must lie in 0..{2 * self.vocab - 1}")
        if head_mask is None:
            return None
        _checks.tensor(head_mask, "head_mask")
        if head_mask.shape != (self.num_heads,):
            raise ValueError(f"head_mask must have shape ({self.num_heads},), one factor per head, "
                             f"got {tuple(head_mask.shape)}")
        return head_mask

    def forward(self, tokens, head_mask=None):
        """(logits (B, L, V²), weights (B, h, L, L)); head_mask (h,) scales each head's output."""
        head_mask = self.check(tokens, head_mask)
        a, h = self.attn, self.num_heads
        marked = tokens >= self.vocab
        x = self.token(tokens % self.vocab) + self.mark(marked.long()) + self.position.weight[: tokens.shape[1]]
        z = self.norm1(x)
        q, k, v = (split_heads(proj(z), h) for proj in (a.q_proj, a.k_proj, a.v_proj))
        heads, weights = attention(q, k, v)                          # (B, h, L, E/h)
        if head_mask is not None:
            heads = heads * head_mask.to(heads.dtype)[:, None, None]  # ξ_i head_i
        x = x + a.out_proj(merge_heads(heads))
        x = x + self.ffn(self.norm2(x))
        return self.readout(self.norm3(x)), weights


def task_loss(model, batch):
    """Mean cross-entropy of ``model`` on a :class:`TwoRelationBatch` (IGNORE labels skipped);
    the ``loss_fn`` to pass to :func:`attnbook.train.fit`. §3.3."""
    logits, _ = model(batch.tokens)
    return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)


Accuracy = namedtuple("Accuracy", "pair previous marked")
Accuracy.__doc__ = """Accuracies of :func:`accuracy`: the whole pair, its first symbol (x_{i-1}) and
its second symbol (x_m), each a float in [0, 1]."""


@torch.no_grad()
def accuracy(model, batch, head_mask=None):
    """How often argmax logits is right at the labelled positions (targets ≠ IGNORE).

    The predicted class c = V·p + q is read as the pair (p, q): returns an :class:`Accuracy`
    with the fraction of positions where the pair is right, where p = x_{i-1} and where
    q = x_m. ``head_mask`` (h,) as in :meth:`HeadsModel.forward`. Cost one forward pass. §3.3.
    """
    if not isinstance(batch, TwoRelationBatch):
        raise TypeError(f"batch must be a TwoRelationBatch, got {type(batch).__name__}")
    logits, _ = model(batch.tokens, head_mask)
    keep = batch.targets != IGNORE
    got, want, v = logits.argmax(-1)[keep], batch.targets[keep], model.vocab
    rate = lambda right: right.float().mean().item()
    return Accuracy(rate(got == want), rate(got // v == want // v), rate(got % v == want % v))


def ablation_accuracies(model, batch):
    """Accuracies with each head zeroed in turn: a tensor (h, 3), row i with ξ_i = 0 and the
    other heads on; columns as in :class:`Accuracy` (pair, previous, marked).

    Zeroing head i before Wᴼ removes the term head_i W_iᴼ from the layer's output
    (Concat(head_1, …, head_h) Wᴼ = Σ_i head_i W_iᴼ, W_iᴼ the i-th block of E/h rows of Wᴼ).
    Cost h forward passes. Explained in §3.3.
    """
    if not isinstance(model, HeadsModel):
        raise TypeError(f"model must be a HeadsModel, got {type(model).__name__}")
    h = model.num_heads
    return torch.tensor([accuracy(model, batch, 1.0 - F.one_hot(torch.tensor(i), h).float())
                         for i in range(h)])


def previous_token_targets(length):
    """The relation "j = i - 1" as a boolean (L, L) matrix, True at (i, i-1). §3.3."""
    length = _checks.at_least(length, "length", 2)
    return torch.ones(length, length, dtype=torch.bool).tril(-1).triu(-1)


def marked_token_targets(marked, length):
    """The relation "j = m_b" for marked positions m (B,): boolean (B, L, L), True at (b, i, m_b)
    for every query i. §3.3."""
    _check_index(marked, "marked")
    length = _checks.at_least(length, "length", 1)
    if marked.dim() != 1:
        raise ValueError(f"marked must be (B,), one position per sequence, got shape {tuple(marked.shape)}")
    if marked.min() < 0 or marked.max() >= length:
        raise ValueError(f"marked positions must lie in 0..{length - 1}")
    columns = F.one_hot(marked, length).bool()                      # (B, L): True at m_b
    return columns[:, None, :].expand(-1, length, -1)


def relation_scores(weights, targets):
    """How much of its weight each head puts on a relation: score_h = mean over (b, i) of Σ_j a_bhij t_bij.

    weights (B, h, Lq, Lk) attention weights; targets boolean, broadcastable to (B, Lq, Lk),
    True where key j stands in the relation to query i. Queries with no target in their row
    (e.g. i = 0 for "previous token") are left out of the mean. -> (h,) scores in [0, 1];
    1 means the head attends only to the relation. Cost O(B·h·Lq·Lk). Explained in §3.3.
    """
    _checks.tensor(weights, "weights", min_dim=4)
    if weights.dim() != 4:
        raise ValueError(f"weights must be (B, h, Lq, Lk), got shape {tuple(weights.shape)}")
    if not isinstance(targets, torch.Tensor) or targets.dtype != torch.bool:
        raise TypeError(f"targets must be a boolean tensor, got "
                        f"{targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__}")
    b, _, lq, lk = weights.shape
    _checks.mask_for(targets, (b, lq, lk), name="targets")
    targets = targets.expand(b, lq, lk)
    rows = targets.any(-1)                                          # (B, Lq): queries with a target
    if not rows.any():
        raise ValueError("targets has no True entry: no query has a key in the relation")
    on_target = (weights * targets[:, None]).sum(-1)                # (B, h, Lq)
    return (on_target * rows[:, None]).sum((0, 2)) / rows.sum()


def multihead_flops(batch, lq, lk, embed_dim, num_heads):
    """Floating-point operations of a multi-head layer's matrix products (2 per multiply-add).

    Projections: 2·B·E²·(Lq + 2·Lk) for Q, K, V and 2·B·Lq·E² for Wᴼ; attention: each of the
    h heads does Q_i K_iᵀ and A_i V_i with width E/h, 2·2·B·h·Lq·Lk·(E/h) = 4·B·Lq·Lk·E.
    The count does not depend on h (h must divide E); the softmax and the biases are left out.
    Explained in §3.3.
    """
    for name, value in (("batch", batch), ("lq", lq), ("lk", lk), ("embed_dim", embed_dim),
                        ("num_heads", num_heads)):
        _checks.positive(value, name, integer=True)
    if embed_dim % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide embed_dim={embed_dim}")
    d = embed_dim // num_heads
    projections = 2 * batch * embed_dim ** 2 * (2 * lq + 2 * lk)
    return projections + 2 * 2 * batch * num_heads * lq * lk * d
