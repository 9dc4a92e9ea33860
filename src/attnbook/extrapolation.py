"""Train short, test long: a task that needs positions and tiny models to compare encodings (§5.1).

A positional encoding is only as good as what it does at positions the model never saw. To
measure that, this module holds:

- a synthetic task, :func:`copy_back_task`: at every position, output the token ``shift``
  places back. The answer sits a fixed *offset* away, so a model must know where the tokens
  are relative to each other;
- a tiny causal Transformer, :class:`PositionalTransformer`, whose positional information is
  chosen by name, one of :data:`ENCODINGS`: none, sinusoidal or learned (added to the token
  embeddings), T5's bucketed bias or ALiBi's linear bias (added to the scores), or RoPE
  (queries and keys rotated);
- the loss for :func:`attnbook.train.fit`, and :func:`accuracy`, :func:`accuracy_by_position`
  and :func:`length_sweep`, which evaluate a model trained on short sequences on longer ones.
  A learned table has no vector beyond the length it was trained on: there the accuracy is
  *undefined* (NaN), never a made-up number;
- :func:`plot_length_sweep`, the figure of accuracy against test length.

The encodings themselves are those of :mod:`attnbook.positions`. Conventions as everywhere in
attnbook: batch-first (B, L, E), token ids int64, boolean masks True = may attend.
References (book/references.bib): vaswani2017attention, devlin2019bert, raffel2020exploring,
su2021roformer, press2022train.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .attention import attention
from .masks import causal_mask
from .multihead import MultiHeadAttention, merge_heads, split_heads
from .positions import (LearnedPositionalEmbedding, T5RelativeBias, alibi_bias, apply_rope,
                        sinusoidal_encoding)
from .transformer import FeedForward

ENCODINGS = ("none", "sinusoidal", "learned", "t5", "rope", "alibi")
IGNORE = -100  # the target of the first ``shift`` positions, which have no token that far back
STYLE = {  # Okabe & Ito's colours (readable with colour-vision deficiencies) and one marker each
    "none": ("#999999", "x"), "sinusoidal": ("#E69F00", "o"), "learned": ("#56B4E9", "s"),
    "t5": ("#009E73", "^"), "rope": ("#0072B2", "D"), "alibi": ("#D55E00", "v"),
}
LABELS = {"none": "none", "sinusoidal": "sinusoidal", "learned": "learned", "t5": "T5 bias",
          "rope": "RoPE", "alibi": "ALiBi"}


def _check_encoding(encoding, name="encoding"):
    if encoding not in ENCODINGS:
        raise ValueError(f"{name} must be one of {ENCODINGS}, got {encoding!r}")
    return encoding


def _check_generator(generator):
    _checks.generator(generator)


# ---------------------------------------------------------------- the task

class CopyBatch(NamedTuple):
    """tokens (B, L) int64; targets (B, L) int64: the tokens moved ``shift`` places right, IGNORE before."""
    tokens: torch.Tensor
    targets: torch.Tensor


def copy_back_task(batch, length, *, shift=2, vocab_size=16, generator=None):
    """Copy the token ``shift`` positions back: target_i = token_{i − shift} for i ≥ shift.

    Tokens are uniform over 0 … vocab_size − 1, so a blind guess is right with probability
    1/vocab_size. The first ``shift`` targets are IGNORE (no token that far back).
    Returns a :class:`CopyBatch` of two (batch, length) int64 tensors. Cost O(B·L). §5.1.
    """
    _checks.positive(batch, "batch", integer=True)
    _checks.positive(length, "length", integer=True)
    _checks.positive(shift, "shift", integer=True)
    _checks.positive(vocab_size, "vocab_size", integer=True)
    _check_generator(generator)
    if shift >= length:
        raise ValueError(f"shift must be smaller than length, got shift={shift}, length={length}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
    tokens = torch.randint(vocab_size, (batch, length), generator=generator)
    targets = torch.full_like(tokens, IGNORE)
    targets[:, shift:] = tokens[:, :-shift]
    return CopyBatch(tokens, targets)


# ---------------------------------------------------------------- the model

class PositionalAttention(nn.Module):
    """Causal multi-head self-attention, with RoPE applied to the queries and keys when asked.

    forward(x (B, L, E), mask) -> y (B, L, E), weights (B, h, L, L) (:meth:`scores`: the
    scores before the softmax); ``mask`` is the (L, L)
    boolean causal mask (True = may attend) or an (h, L, L) float bias with −inf above the
    diagonal. ``rope``: the queries and keys of each head are rotated by their position
    (:func:`attnbook.positions.apply_rope`) before the scores. Cost O(B·L²·E + B·L·E²). §5.1.
    """

    def __init__(self, dim, heads, *, rope=False):
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads)
        self.heads, self.rope = heads, bool(rope)

    def _heads(self, x):
        a = self.attn
        q, k, v = (split_heads(proj(x), self.heads) for proj in (a.q_proj, a.k_proj, a.v_proj))
        if self.rope:
            q, k = apply_rope(q), apply_rope(k)
        return q, k, v

    def forward(self, x, mask):
        q, k, v = self._heads(x)
        out, weights = attention(q, k, v, mask)
        return self.attn.out_proj(merge_heads(out)), weights

    def scores(self, x, mask):
        """The scores before the softmax, (B, h, L, L): q·k/√d plus the float bias, −inf where masked."""
        q, k, _ = self._heads(x)
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        return s + mask if mask.is_floating_point() else s.masked_fill(~mask, float("-inf"))


class _Block(nn.Module):
    """Pre-norm block: h ← h + Attn(LN h), then h ← h + FFN(LN h) when hidden > 0."""

    def __init__(self, dim, heads, hidden, rope):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), PositionalAttention(dim, heads, rope=rope)
        self.norm2 = nn.LayerNorm(dim) if hidden else None
        self.ffn = FeedForward(dim, hidden) if hidden else None

    def forward(self, h, mask):
        y, weights = self.attn(self.norm1(h), mask)
        h = h + y
        if self.ffn is not None:
            h = h + self.ffn(self.norm2(h))
        return h, weights


class PositionalTransformer(nn.Module):
    """A tiny causal Transformer whose positional information is chosen by name (§5.1).

    h_0 = e(x) (+ p_i for "sinusoidal" or "learned"); ``layers`` pre-norm blocks
    h ← h + Attn(LN h), h ← h + FFN(LN h) (no FFN when hidden = 0); logits = W LN(h).
    ``encoding`` is one of :data:`ENCODINGS`:

    - "none": only the causal mask; "sinusoidal": Vaswani et al.'s fixed table, computed for
      any length; "learned": a table of ``max_length`` vectors (BERT), undefined beyond it;
    - "t5": one learned scalar per head and bucket of the offset, shared by the layers:
      ``t5_buckets`` one-directional buckets (default min(max_length, 32)), log-spaced up to
      ``t5_max_distance`` (default ``max_length``, so that every bucket is met in training;
      longer offsets share the last bucket); initialised at zero;
    - "rope": queries and keys rotated by their position in every layer;
    - "alibi": the fixed bias −m_h·(i − j) with slopes m_h = 2^(−8h/heads).

    forward(tokens (B, L) int64) -> logits (B, L, vocab_size) and a list of the attention
    weights (B, h, L, L) of each layer; :meth:`scores_by_offset` averages a layer's scores
    by distance. ``max_length`` is the training length; only "learned" refuses longer
    inputs (see :meth:`defined_for`).
    Cost O(layers·(B·L²·dim + B·L·dim·(dim + hidden))) time, O(layers·B·h·L²) memory.
    """

    def __init__(self, vocab_size, encoding, *, dim=32, heads=4, layers=1, hidden=None, max_length=16,
                 t5_buckets=None, t5_max_distance=None):
        super().__init__()
        _checks.positive(vocab_size, "vocab_size", integer=True)
        for name, value in (("dim", dim), ("heads", heads), ("layers", layers), ("max_length", max_length)):
            _checks.positive(value, name, integer=True)
        _check_encoding(encoding)
        if dim % heads:
            raise ValueError(f"heads={heads} does not divide dim={dim}")
        if encoding == "rope" and (dim // heads) % 2:
            raise ValueError(f"rope needs an even head width, got dim={dim}, heads={heads}")
        hidden = 2 * dim if hidden is None else hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int):
            raise TypeError(f"hidden must be an integer (0: no feed-forward network), got {type(hidden).__name__}")
        if hidden < 0:
            raise ValueError(f"hidden must be ≥ 0 (0: no feed-forward network), got {hidden}")
        self.vocab_size, self.encoding, self.heads = vocab_size, encoding, heads
        self.dim, self.max_length = dim, max_length
        self.embed = nn.Embedding(vocab_size, dim)
        self.learned = LearnedPositionalEmbedding(max_length, dim) if encoding == "learned" else None
        self.t5 = None
        if encoding == "t5":
            self.t5 = T5RelativeBias(t5_buckets or min(max_length, 32), t5_max_distance or max_length, heads,
                                     bidirectional=False)
            nn.init.zeros_(self.t5.embedding.weight)
        self.blocks = nn.ModuleList(_Block(dim, heads, hidden, encoding == "rope") for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size)

    def defined_for(self, length):
        """Whether the model can read a sequence of ``length``: always, except a learned table beyond max_length."""
        _checks.positive(length, "length", integer=True)
        return self.encoding != "learned" or length <= self.max_length

    def attention_mask(self, length, *, dtype=torch.float32, device=None):
        """The mask every layer uses: (L, L) boolean causal, or an (h, L, L) float bias in ``dtype``, −inf above the diagonal."""
        if self.encoding == "alibi":
            return alibi_bias(self.heads, length, causal=True, dtype=dtype, device=device)
        keep = causal_mask(length, device=device)
        if self.encoding == "t5":
            return self.t5(length).to(dtype).masked_fill(~keep, float("-inf"))
        return keep

    def forward(self, tokens):
        h, mask = self._inputs(tokens)
        weights = []
        for block in self.blocks:
            h, w = block(h, mask)
            weights.append(w)
        return self.out(self.norm(h)), weights

    def _inputs(self, tokens):
        _check_tokens(tokens, self.vocab_size)
        length = tokens.shape[1]
        if not self.defined_for(length):
            raise ValueError(f"tokens have length {length} > max_length={self.max_length}: a learned "
                             "table has no vector for the later positions")
        h = self.embed(tokens)
        if self.encoding == "sinusoidal":
            h = h + sinusoidal_encoding(length, self.dim, device=h.device)
        elif self.encoding == "learned":
            h = self.learned(h)
        return h, self.attention_mask(length, dtype=h.dtype, device=h.device)

    @torch.no_grad()
    def scores_by_offset(self, tokens, layer=0):
        """Mean score before the softmax of query i and key i − r, for r = 0 … L − 1: (h, L).

        The scores of ``layer`` (content q·k/√d plus the positional bias, as the softmax sees
        them) are averaged over the batch and over every query that has a key r places back.
        Shows which distances a trained head prefers, including distances never seen in
        training. Cost: a forward pass up to ``layer`` and O(B·h·L²) memory. §5.1.
        """
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(self.blocks):
            raise ValueError(f"layer must be an integer in 0 … {len(self.blocks) - 1}, got {layer!r}")
        h, mask = self._inputs(tokens)
        for block in self.blocks[:layer]:
            h, _ = block(h, mask)
        block = self.blocks[layer]
        s = block.attn.scores(block.norm1(h), mask)                       # (B, h, L, L)
        return torch.stack([s.diagonal(-r, dim1=-2, dim2=-1).mean((0, -1)) for r in range(s.shape[-1])], -1)


def _check_tokens(tokens, vocab_size):
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must have shape (B, L) with L ≥ 1, got {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"tokens must lie in 0 … {vocab_size - 1}, got values from "
                         f"{tokens.min().item()} to {tokens.max().item()}")


# ---------------------------------------------------------------- training and evaluation

def _check_model(model):
    if not isinstance(model, PositionalTransformer):
        raise TypeError(f"model must be a PositionalTransformer, got {type(model).__name__}")


def _check_batch(batch):
    if not isinstance(batch, CopyBatch):
        raise TypeError(f"batch must be a CopyBatch (from copy_back_task), got {type(batch).__name__}")
    if batch.tokens.shape != batch.targets.shape:
        raise ValueError(f"tokens {tuple(batch.tokens.shape)} and targets {tuple(batch.targets.shape)} "
                         "must have the same shape")


def copy_loss(model, batch):
    """Mean cross-entropy over the positions that have a target; ``loss_fn`` of :func:`attnbook.train.fit`. §5.1."""
    _check_model(model)
    _check_batch(batch)
    logits, _ = model(batch.tokens)
    return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def accuracy_by_position(model, batch):
    """Fraction of correct argmax predictions at each position, over the batch: (L,) float32.

    NaN at the first ``shift`` positions (no target), and everywhere when the model is not
    defined for this length (a learned table beyond its max_length). Cost: one forward. §5.1.
    """
    _check_model(model)
    _check_batch(batch)
    length = batch.tokens.shape[1]
    if not model.defined_for(length):
        return torch.full((length,), math.nan)
    logits, _ = model(batch.tokens)
    has_target = batch.targets != IGNORE
    correct = ((logits.argmax(-1) == batch.targets) & has_target).sum(0).float()
    count = has_target.sum(0).float()
    return torch.where(count > 0, correct / count.clamp_min(1), math.nan)


@torch.no_grad()
def accuracy(model, batch):
    """Fraction of correct argmax predictions over all positions with a target; NaN where undefined. §5.1."""
    _check_model(model)
    _check_batch(batch)
    has_target = batch.targets != IGNORE
    if not model.defined_for(batch.tokens.shape[1]) or not has_target.any():
        return math.nan
    logits, _ = model(batch.tokens)
    return ((logits.argmax(-1) == batch.targets) & has_target).sum().item() / has_target.sum().item()


def length_sweep(model, lengths, *, batch=64, shift=2, vocab_size=16, generator=None):
    """Accuracy of ``model`` on a fresh copy-back batch of each length: {length: accuracy}.

    Lengths for which the model is undefined (a learned table beyond its max_length) give NaN.
    Cost: one forward per length, O(Σ B·L²·dim). §5.1.
    """
    _check_model(model)
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__iter__"):
        raise TypeError(f"lengths must be an iterable of positive integers, got {type(lengths).__name__}")
    lengths = [_checks.positive(n, "lengths", integer=True) for n in lengths]
    if not lengths:
        raise ValueError("lengths must hold at least one length")
    return {n: accuracy(model, copy_back_task(batch, n, shift=shift, vocab_size=vocab_size, generator=generator))
            for n in lengths}


# ---------------------------------------------------------------- figure

def plot_length_sweep(ax, sweeps, train_length, *, chance=None):
    """Draw accuracy against test length, one line per encoding, on a log₂ length axis. §5.1.

    ``sweeps`` maps an encoding name to {length: accuracy} (NaN: undefined, not drawn);
    a dotted line marks ``train_length`` and, if given, a dashed one the ``chance`` level.
    Returns ``ax``.
    """
    if not isinstance(sweeps, dict) or not sweeps:
        raise TypeError("sweeps must be a non-empty dict {encoding: {length: accuracy}}")
    for encoding, sweep in sweeps.items():
        _check_encoding(encoding, "a key of sweeps")
        lengths = sorted(sweep)
        colour, marker = STYLE[encoding]
        ax.plot(lengths, [sweep[n] for n in lengths], marker=marker, color=colour, label=LABELS[encoding])
    ax.axvline(train_length, color="0.4", ls=":", lw=1)
    if chance is not None:
        ax.axhline(chance, color="0.6", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    all_lengths = sorted({n for s in sweeps.values() for n in s})
    ax.set_xticks(all_lengths, [str(n) for n in all_lengths])
    ax.minorticks_off()
    ax.set(xlabel="test length L", ylabel="accuracy", ylim=(0, 1.04))
    return ax
