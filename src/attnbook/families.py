"""Encoder-only (BERT), decoder-only (GPT) and LLaMA-style models on a toy language (§4.2).

The *echo language*: a random word of n letters, a bar, and the word's echo, each letter moved
one step on in the alphabet (``cafe|dbgf`` with 8 letters a…h, h → a). The first half can only
be guessed from the left but is determined by the right; the echo is determined by the left.
That makes the difference between bidirectional and causal context measurable.

Building blocks of LLaMA-style decoders: :class:`RMSNorm`, :class:`SwiGLU`,
:func:`grouped_query_attention` and :class:`GQASelfAttention` (with RoPE from
:mod:`attnbook.positions` and a KV cache from :mod:`attnbook.transformer`). :class:`TinyLM`
assembles the three families; :func:`generate` decodes greedily with the KV cache.

Conventions as everywhere in attnbook: batch-first, boolean masks True = may attend.
References (book/references.bib): ``devlin2019bert``, ``radford2018improving``,
``radford2019language``, ``touvron2023llama``, ``shazeer2020glu``, ``zhang2019root``,
``ainslie2023gqa``, ``su2021roformer``.
"""
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .attention import attention
from .digits import count_parameters  # re-exported: §4.2 counts its models with it
from .masks import causal_mask
from .multihead import merge_heads, split_heads
from .positions import LearnedPositionalEmbedding, apply_rope
from .transformer import Encoder, FeedForward, KVCache, LayerCache, SelfAttention

KINDS = ("bert", "gpt", "llama")
IGNORE = -100          # the target of a position that is not scored (cross_entropy's ignore_index)


def _integer(value, name, *, minimum=1):
    return _checks.integer(value, name, minimum)


def _check_tokens(tokens, name="tokens"):
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype != torch.long:
        raise TypeError(f"{name} must be an integer (torch.long) tensor, got dtype {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"{name} must be (B, L), got shape {tuple(tokens.shape)}")
    return tokens


# ---------------------------------------------------------------- the echo language

def bar_id(letters):
    """The id of the bar ``|`` that separates a word from its echo: ``letters``."""
    return _integer(letters, "letters", minimum=2)


def mask_id(letters):
    """The id of the ``[MASK]`` token of the encoder: ``letters + 1``; the vocabulary has letters + 2 ids."""
    return _integer(letters, "letters", minimum=2) + 1


def echo_batch(batch, length=6, letters=8, *, generator=None):
    """Sentences of the echo language: x_1 … x_n | y_1 … y_n with y_i = (x_i + 1) mod letters.

    x_i are independent uniform letters 0 … letters−1, the bar has id ``letters``.
    -> (batch, 2·length + 1) long. Cost O(batch·length). §4.2.
    """
    batch, length = _integer(batch, "batch"), _integer(length, "length")
    letters = bar_id(letters)
    word = torch.randint(letters, (batch, length), generator=generator)
    bar = torch.full((batch, 1), letters, dtype=torch.long)
    return torch.cat([word, bar, (word + 1) % letters], dim=1)


def decode(tokens, letters=8):
    """Token ids (L,) or (B, L) -> a string (or a list of strings): a, b, … for letters, ``|``, ``_`` for [MASK]."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.dim() not in (1, 2):
        raise TypeError(f"tokens must be a 1-D or 2-D long tensor, got {getattr(tokens, 'shape', type(tokens))}")
    if tokens.dim() == 2:
        return [decode(t, letters) for t in tokens]
    names = [chr(97 + i) for i in range(letters)] + ["|", "_"]
    return "".join(names[t] if 0 <= t < len(names) else "?" for t in tokens.tolist())


def bert_masking(tokens, letters=8, *, p=0.15, generator=None):
    """BERT's corruption: choose each letter with probability p; of the chosen, 80 % become
    [MASK], 10 % a random letter, 10 % stay as they are. The bar is never chosen.

    tokens (B, L) long -> (inputs (B, L), targets (B, L)): targets hold the original token at
    the chosen positions and :data:`IGNORE` (−100) elsewhere, so that only the chosen positions
    are scored. Cost O(B·L). §4.2; Devlin et al. (2019).
    """
    _check_tokens(tokens)
    mask = mask_id(letters)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
        raise ValueError(f"p must be a probability in (0, 1], got {p!r}")
    u = torch.rand(tokens.shape, generator=generator)
    chosen = (u < p) & (tokens < letters)
    action = torch.rand(tokens.shape, generator=generator)          # 80 / 10 / 10
    random_letters = torch.randint(letters, tokens.shape, generator=generator)
    inputs = torch.where(chosen & (action < 0.8), mask, tokens)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_letters, inputs)
    targets = torch.where(chosen, tokens, IGNORE)
    return inputs, targets


# ---------------------------------------------------------------- LLaMA's pieces

class RMSNorm(nn.Module):
    """RMSNorm(x) = g ⊙ x / √(mean_i x_i² + ε): LayerNorm without the mean and without a bias.

    x (..., d) -> (..., d); g (d,) starts at 1. Same as ``torch.nn.RMSNorm(d, eps)``.
    Cost O(n·d) for n vectors. §4.2; Zhang & Sennrich (2019).
    """

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.dim = _integer(dim, "dim")
        self.eps = _checks.positive(eps, "eps")
        self.weight = nn.Parameter(torch.ones(self.dim))

    def forward(self, x):
        _checks.tensor(x, "x")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has width {x.shape[-1]} (shape {tuple(x.shape)}) but the norm has dim={self.dim}")
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class SwiGLU(nn.Module):
    """SwiGLU(x) = W₂ (SiLU(W₁ x) ⊙ W₃ x), SiLU(z) = z·σ(z): a gated feed-forward network, no biases.

    x (..., E) -> (..., E) through a hidden width H; three E × H matrices, so H ≈ (2/3)·4E
    costs what a 4E-wide two-matrix FFN costs. Cost O(n·E·H) time, O(n·H) memory.
    §4.2; Shazeer (2020).
    """

    def __init__(self, embed_dim, hidden_dim):
        super().__init__()
        embed_dim, hidden_dim = _integer(embed_dim, "embed_dim"), _integer(hidden_dim, "hidden_dim")
        self.w1 = nn.Linear(embed_dim, hidden_dim, bias=False)     # the gate
        self.w3 = nn.Linear(embed_dim, hidden_dim, bias=False)     # the value
        self.w2 = nn.Linear(hidden_dim, embed_dim, bias=False)

    def forward(self, x):
        _checks.tensor(x, "x")
        if x.shape[-1] != self.w1.in_features:
            raise ValueError(f"x has width {x.shape[-1]} (shape {tuple(x.shape)}) "
                             f"but the layer expects {self.w1.in_features}")
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def grouped_query_attention(query, key, value, mask=None, *, is_causal=False):
    """GQA: h_q query heads share h_kv key/value heads, g = h_q / h_kv queries per group.

    query (B, h_q, Lq, d), key (B, h_kv, Lk, d), value (B, h_kv, Lk, d_v) -> output
    (B, h_q, Lq, d_v) and weights (B, h_q, Lq, Lk). Query head i reads key/value head ⌊i/g⌋,
    as ``scaled_dot_product_attention(..., enable_gqa=True)``; h_kv = h_q is multi-head
    attention, h_kv = 1 multi-query attention. mask and is_causal as in
    :func:`attnbook.attention`. Cost as multi-head attention in time, O(B·h_q·Lq·Lk·d); the
    keys and values (and a KV cache) are g times smaller. §4.2; Ainslie et al. (2023).
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        _checks.tensor(t, name, min_dim=4)
        if t.dim() != 4:
            raise ValueError(f"{name} must be (B, heads, L, d), got shape {tuple(t.shape)}")
    hq, hkv = query.shape[1], key.shape[1]
    if value.shape[1] != hkv:
        raise ValueError(f"key has {hkv} heads (shape {tuple(key.shape)}) but value has {value.shape[1]} "
                         f"(shape {tuple(value.shape)})")
    if hq % hkv:
        raise ValueError(f"the {hq} query heads (query {tuple(query.shape)}) must split into groups over the "
                         f"{hkv} key/value heads (key {tuple(key.shape)}): h_q must be a multiple of h_kv")
    g = hq // hkv
    return attention(query, key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1), mask,
                     is_causal=is_causal)


class GQASelfAttention(nn.Module):
    """Causal self-attention with RoPE and grouped key/value heads, no biases (LLaMA-style).

    x (B, T, E) -> y (B, T, E), weights (B, h, T, L). Queries: h heads of d = E/h; keys and
    values: h_kv heads of d (num_kv_heads divides num_heads). Queries and keys are rotated by
    RoPE at their positions; with ``cache`` (a LayerCache) x holds the T new tokens at
    positions cache.length … and the cache keeps the rotated keys, (B, h_kv, L, d): 2·h_kv·d
    numbers per token and layer instead of 2·E. Parameters E² + 2·E·h_kv·d + E².
    Cost O(B·T·L·E + B·T·E²). §4.2.
    """

    def __init__(self, embed_dim, num_heads, num_kv_heads, *, rope_base=10000.0):
        super().__init__()
        embed_dim, num_heads = _integer(embed_dim, "embed_dim"), _integer(num_heads, "num_heads")
        num_kv_heads = _integer(num_kv_heads, "num_kv_heads")
        if embed_dim % num_heads or (embed_dim // num_heads) % 2:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim} into heads of even "
                             "width (RoPE rotates pairs)")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads}")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim, self.rope_base = embed_dim // num_heads, rope_base
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=False)

    def forward(self, x, *, cache=None):
        _checks.tensor(x, "x", min_dim=3)
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x must be (B, T, {self.embed_dim}), got shape {tuple(x.shape)}")
        if cache is not None and not isinstance(cache, LayerCache):
            raise TypeError(f"cache must be a LayerCache or None, got {type(cache).__name__}")
        past, t = (0 if cache is None else cache.length), x.shape[1]
        positions = torch.arange(past, past + t, device=x.device)
        q = apply_rope(split_heads(self.q_proj(x), self.num_heads), positions, base=self.rope_base)
        k = apply_rope(split_heads(self.k_proj(x), self.num_kv_heads), positions, base=self.rope_base)
        v = split_heads(self.v_proj(x), self.num_kv_heads)
        if cache is not None:
            k, v = cache.append(k, v)
        out, weights = grouped_query_attention(q, k, v, causal_mask(t, past + t, offset=past, device=x.device))
        return self.out_proj(merge_heads(out)), weights


# ---------------------------------------------------------------- blocks and models

class GPTBlock(nn.Module):
    """A GPT-2 block (pre-norm): x ← x + CausalSA(LN(x)); x ← x + FFN_GELU(LN(x)), with biases.

    x (B, T, E) -> (y (B, T, E), weights (B, h, T, L)); ``cache`` as in
    :class:`attnbook.transformer.SelfAttention`. Parameters 4E² + 4E (attention) + 2·E·H + H + E
    (FFN) + 4E (two LayerNorms). Cost O(B·T·L·E + B·T·E·(E + H)). §4.2.
    """

    def __init__(self, embed_dim, num_heads, hidden_dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.attn = SelfAttention(embed_dim, num_heads, causal=True)
        self.ffn = FeedForward(embed_dim, hidden_dim, "gelu")

    def forward(self, x, *, cache=None):
        y, weights = self.attn(self.norm1(x), cache=cache)
        x = x + y
        return x + self.ffn(self.norm2(x)), weights


class LlamaBlock(nn.Module):
    """A LLaMA block (pre-norm, no biases): x ← x + GQA_RoPE(RMSNorm(x)); x ← x + SwiGLU(RMSNorm(x)).

    x (B, T, E) -> (y (B, T, E), weights (B, h, T, L)); ``cache`` a LayerCache of h_kv heads.
    Parameters 2E² + 2·E·h_kv·d (attention) + 3·E·H (SwiGLU) + 2E (two RMSNorms).
    Cost O(B·T·L·E + B·T·E·(E + H)). §4.2; Touvron et al. (2023).
    """

    def __init__(self, embed_dim, num_heads, num_kv_heads, hidden_dim):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(embed_dim), RMSNorm(embed_dim)
        self.attn = GQASelfAttention(embed_dim, num_heads, num_kv_heads)
        self.ffn = SwiGLU(embed_dim, hidden_dim)

    def forward(self, x, *, cache=None):
        y, weights = self.attn(self.norm1(x), cache=cache)
        x = x + y
        return x + self.ffn(self.norm2(x)), weights


class TinyLM(nn.Module):
    """A small language model of one family: ``kind`` is "bert", "gpt" or "llama".

    * bert: token + learned position embeddings, a post-norm :class:`~attnbook.transformer.Encoder`
      (bidirectional self-attention, GELU); trained to predict masked tokens.
    * gpt: token + learned position embeddings, pre-norm :class:`GPTBlock` (causal), a final LayerNorm.
    * llama: token embeddings only (RoPE inside attention), :class:`LlamaBlock` (causal, GQA
      with ``num_kv_heads``), a final RMSNorm, no biases anywhere.

    forward(tokens (B, L) long, *, cache=None) -> (logits (B, L, V), [weights (B, h, L, L') per layer]).
    A KVCache (gpt and llama only) makes tokens the next positions after those cached.
    hidden_dim defaults to 4E (bert, gpt) and to 8E/3 rounded up to a multiple of 4 (llama).
    Cost O(layers·B·L·E·(L + E + H)). §4.2.
    """

    def __init__(self, kind, vocab_size, max_length, *, embed_dim=32, num_heads=4, num_layers=2,
                 hidden_dim=None, num_kv_heads=None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        vocab_size, max_length = _integer(vocab_size, "vocab_size"), _integer(max_length, "max_length")
        e, layers = _integer(embed_dim, "embed_dim"), _integer(num_layers, "num_layers")
        if hidden_dim is None:
            hidden_dim = 4 * e if kind != "llama" else -(-8 * e // 12) * 4
        self.embed = nn.Embedding(vocab_size, e)
        self.positions = LearnedPositionalEmbedding(max_length, e) if kind != "llama" else None
        if kind == "bert":
            self.body = Encoder(layers, e, num_heads, hidden_dim, activation="gelu")
            self.norm = None
        elif kind == "gpt":
            self.body = nn.ModuleList(GPTBlock(e, num_heads, hidden_dim) for _ in range(layers))
            self.norm = nn.LayerNorm(e)
        else:
            kv = num_heads if num_kv_heads is None else num_kv_heads
            self.body = nn.ModuleList(LlamaBlock(e, num_heads, kv, hidden_dim) for _ in range(layers))
            self.norm = RMSNorm(e)
        self.head = nn.Linear(e, vocab_size, bias=kind != "llama")
        self.num_layers = layers

    def forward(self, tokens, *, cache=None):
        _check_tokens(tokens)
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.embed.num_embeddings):
            raise ValueError(f"tokens must lie in 0..{self.embed.num_embeddings - 1}, got values from "
                             f"{tokens.min().item()} to {tokens.max().item()}")
        if cache is not None and (self.kind == "bert" or not isinstance(cache, KVCache)):
            raise TypeError("only gpt and llama models decode with a KVCache; "
                            f"got {type(cache).__name__} for kind={self.kind!r}")
        if cache is not None and cache.num_layers != self.num_layers:
            raise ValueError(f"cache has {cache.num_layers} layers but the model has {self.num_layers}")
        x = self.embed(tokens)
        if self.positions is not None:
            past = 0 if cache is None else cache.length
            x = self.positions(x, torch.arange(past, past + tokens.shape[1], device=x.device))
        if self.kind == "bert":
            x, weights = self.body(x)
        else:
            weights = []
            for i, block in enumerate(self.body):
                x, w = block(x, cache=None if cache is None else cache[i])
                weights.append(w)
        x = x if self.norm is None else self.norm(x)
        return self.head(x), weights


# ---------------------------------------------------------------- objectives and measurements

def masked_lm_loss(model, tokens, letters=8, *, p=0.15, generator=None):
    """BERT's objective: cross-entropy on the positions chosen by :func:`bert_masking`.

    tokens (B, L) -> scalar. Cost one forward pass. §4.2.
    """
    inputs, targets = bert_masking(tokens, letters, p=p, generator=generator)
    logits, _ = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def next_token_loss(model, tokens):
    """GPT's objective: −(1/(B(L−1))) Σ log p(x_{t+1} | x_≤t), every position predicts the next token.

    tokens (B, L) -> scalar. Cost one forward pass. §4.2.
    """
    _check_tokens(tokens)
    logits, _ = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


@torch.no_grad()
def blank_accuracy(model, tokens, position, *, context="both", letters=8):
    """Accuracy of predicting the token at ``position`` of every sentence.

    bert: the token is replaced by [MASK]; with context="left" every later token is masked too,
    so that only the left side is visible. gpt/llama: predicted from the tokens before it (the
    left side, whatever ``context`` says, since a causal model cannot read the right).
    tokens (B, L) -> a float in [0, 1]. Cost one forward pass. §4.2.
    """
    _check_tokens(tokens)
    length = tokens.shape[1]
    position = _integer(position, "position", minimum=0 if model.kind == "bert" else 1)
    if position >= length:
        raise ValueError(f"position must be < L = {length} (tokens {tuple(tokens.shape)}), got {position}")
    if context not in ("both", "left"):
        raise ValueError(f"context must be 'both' or 'left', got {context!r}")
    if model.kind == "bert":
        inputs = tokens.clone()
        inputs[:, position if context == "both" else slice(position, None)] = mask_id(letters)
        logits, _ = model(inputs)
        guess = logits[:, position].argmax(-1)
    else:
        logits, _ = model(tokens[:, :position])
        guess = logits[:, -1].argmax(-1)
    return (guess == tokens[:, position]).float().mean().item()


@torch.no_grad()
def generate(model, prompt, steps, *, use_cache=True):
    """Greedy decoding: append argmax p(x_{t+1} | x_≤t) ``steps`` times.

    prompt (B, P) long -> (tokens (B, P + steps), cache or None). With ``use_cache`` the
    prompt is read once and every later step feeds one token, its keys and values appended
    to a KVCache: O(steps·L·E) attention per layer instead of O(steps·L²·E) without it; both
    give the same tokens. gpt and llama only. §4.2, §5.3.
    """
    if model.kind == "bert":
        raise ValueError("a bert model has no causal mask: it cannot continue a prefix token by token")
    _check_tokens(prompt, "prompt")
    steps = _integer(steps, "steps", minimum=0)
    tokens, cache = prompt, (KVCache(model.num_layers) if use_cache else None)
    new = prompt
    for _ in range(steps):
        logits, _ = model(new if use_cache else tokens, cache=cache)
        nxt = logits[:, -1:].argmax(-1)
        tokens = torch.cat([tokens, nxt], dim=1)
        new = nxt
    return tokens, cache


def kv_cache_numbers_per_token(num_layers, num_kv_heads, head_dim):
    """Numbers a KV cache stores per token: 2 (key and value) · layers · h_kv · d. §4.2, §5.3."""
    return 2 * _integer(num_layers, "num_layers") * _integer(num_kv_heads, "num_kv_heads") * \
        _integer(head_dim, "head_dim")
