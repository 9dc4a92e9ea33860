"""The Transformer's building blocks: self- and cross-attention, the feed-forward network,
encoder and decoder layers and stacks, and the KV cache of incremental decoding (§3.2, §4.1, §5.3).

Conventions, as everywhere in attnbook: batch-first tensors (B, L, E); boolean masks mean
True = may attend; a floating mask is added to the scores; a query with no allowed key gets a
zero attention output. torch's Transformer layers use the opposite boolean convention
(True = *not* allowed): pass ``~src_key_padding_mask[:, None, :]`` for a torch padding mask
(B, S) and ``~attn_mask`` for a boolean torch attention mask. Every layer returns its output
together with its attention weights (B, h, Lq, Lk), so that the book can draw them.

Reference (book/references.bib): ``vaswani2017attention``.
"""
import copy
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .attention import attention
from .masks import causal_mask
from .multihead import MultiHeadAttention, heads_mask, merge_heads, split_heads

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


# ---------------------------------------------------------------- argument checks

def _check_sequence(x, name, width):
    """Raise unless ``x`` is a floating batch-first sequence (B, L, width)."""
    _checks.tensor(x, name, min_dim=3)
    if x.dim() != 3:
        raise ValueError(f"{name} must be a batch-first 3-D tensor (B, L, E), got shape {tuple(x.shape)}")
    if x.shape[-1] != width:
        raise ValueError(f"{name} has width {x.shape[-1]} (shape {tuple(x.shape)}) but the layer expects {width}")
    return x


def _check_activation(activation):
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    return activation


def _check_probability(p, name):
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(p).__name__}")
    if not 0 <= p <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {p}")
    return p


def _with_causal(mask, lq, lk, device):
    """Add the causal constraint j ≤ i + (Lk - Lq) to ``mask``: the Lq queries are the *last* Lq positions.

    Without a cache Lq = Lk and this is the usual j ≤ i; with a cache of P positions the new
    query i sits at position P + i and sees keys 0..P + i.
    """
    keep = causal_mask(lq, lk, offset=lk - lq, device=device)
    if mask is None:
        return keep
    if mask.dtype == torch.bool:
        return mask & keep
    return torch.where(keep, mask, float("-inf"))


# ---------------------------------------------------------------- the KV cache

class LayerCache:
    """The keys and values that one self-attention layer has computed so far, each (B, h, L, d).

    :meth:`append` adds the T new positions of a decoding step and returns all L + T of them.
    Explained in §5.3.
    """

    def __init__(self):
        self.key = None
        self.value = None

    @property
    def length(self):
        """The number of positions L cached so far (0 when empty)."""
        return 0 if self.key is None else self.key.shape[-2]

    def check(self, key, value):
        """Raise unless key and value (B, h, T, d) can be appended to this cache."""
        for name, t in (("key", key), ("value", value)):
            _checks.tensor(t, name, min_dim=4)
            if t.dim() != 4:
                raise ValueError(f"{name} must be (B, h, T, d), got shape {tuple(t.shape)}")
        _checks.same_kind({"key": key, "value": value})
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must share (B, h, T)")
        if self.key is not None:
            _checks.same_kind({"cache": self.key, "key": key})
            for name, new, old in (("key", key, self.key), ("value", value, self.value)):
                if new.shape[:2] != old.shape[:2] or new.shape[-1] != old.shape[-1]:
                    raise ValueError(
                        f"{name} has shape {tuple(new.shape)} but the cache holds (B, h, L, d) = "
                        f"{tuple(old.shape)}: a cache serves one batch of one layer"
                    )

    def append(self, key, value):
        """Concatenate key, value (B, h, T, d) after the cached positions; return both (B, h, L + T, d).

        Cost O(B·(L + T)·h·d) time for the copy (a preallocated cache avoids it), memory as stored.
        """
        self.check(key, value)
        if self.key is None:
            self.key, self.value = key, value
        else:
            self.key = torch.cat([self.key, key], dim=-2)
            self.value = torch.cat([self.value, value], dim=-2)
        return self.key, self.value


class KVCache:
    """Keys and values of every decoder layer, kept between the steps of incremental decoding.

    ``cache[i]`` is the :class:`LayerCache` of layer i: key and value (B, h, L, E/h) for the L
    positions decoded so far; each step appends one position to every layer.
    Memory: 2·layers·B·L·E numbers (keys and values; h·(E/h) = E), that is O(layers·B·L·E),
    see :meth:`numel`. Time: the new token's query attends over the L cached keys, O(L·E) per
    layer, instead of recomputing the causal pass over the whole prefix, O(L²·E); generating L
    tokens costs O(L²·E) in all instead of O(L³·E). Explained in §5.3.
    """

    def __init__(self, num_layers):
        _checks.positive(num_layers, "num_layers", integer=True)
        self.layers = [LayerCache() for _ in range(num_layers)]

    @property
    def num_layers(self):
        return len(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    @property
    def length(self):
        """The number of positions L decoded so far."""
        return self.layers[0].length

    def numel(self):
        """Numbers stored: Σ over layers of key.numel() + value.numel() = 2·layers·B·L·E."""
        return sum(t.numel() for layer in self.layers for t in (layer.key, layer.value) if t is not None)

    def nbytes(self):
        """Bytes stored: numel() × bytes per element."""
        return sum(t.numel() * t.element_size()
                   for layer in self.layers for t in (layer.key, layer.value) if t is not None)


# ---------------------------------------------------------------- attention blocks

class SelfAttention(nn.Module):
    """SelfAttention(X) = MultiHead(X, X, X): the tokens of one sequence attend to each other.

    x (B, L, E) -> y (B, L, E) and weights (B, h, L, L). ``causal``: token i sees tokens j ≤ i.
    mask: (L, L), (B, L, L), (B, 1, L) (padding) or (B, h, L, L), True = may attend, combined
    with the causal mask. With ``cache`` (a :class:`LayerCache`), x holds only the T new
    tokens: their keys and values are appended to the cache and their queries attend to all
    L = cached + T positions, giving weights (B, h, T, L) (a mask must then be (…, T, L)).
    Without positions the layer is permutation-equivariant (when not causal).
    Cost O(B·L²·E + B·L·E²) time, O(B·h·L²) memory; with a cache, O(B·T·L·E + B·T·E²) per step.
    The parameters are those of a :class:`~attnbook.MultiHeadAttention` (``self.attn``).
    Explained in §3.2.
    """

    def __init__(self, embed_dim, num_heads, *, bias=True, causal=False):
        super().__init__()
        self.attn = MultiHeadAttention(embed_dim, num_heads, bias=bias)
        self.embed_dim, self.num_heads, self.causal = embed_dim, num_heads, bool(causal)

    def check(self, x, mask=None, cache=None, *, mask_name="mask"):
        """Raise unless x, mask and cache fit; return the mask lifted to 4-D (with the causal part)."""
        _check_sequence(x, "x", self.embed_dim)
        if cache is not None and not isinstance(cache, LayerCache):
            raise TypeError(
                f"cache must be a LayerCache (one layer of a KVCache) or None, got {type(cache).__name__}")
        lq = x.shape[1]
        lk = lq + (0 if cache is None else cache.length)
        mask = heads_mask(mask, x.shape[0], self.num_heads, lq, lk, name=mask_name, dtype=x.dtype)
        return _with_causal(mask, lq, lk, x.device) if self.causal else mask

    def forward(self, x, mask=None, *, cache=None):
        """y (B, L, E) and weights (B, h, L, cached + L); see the class docstring."""
        mask = self.check(x, mask, cache)
        a, h = self.attn, self.num_heads
        query, key, value = (split_heads(proj(x), h) for proj in (a.q_proj, a.k_proj, a.v_proj))
        if cache is not None:
            key, value = cache.append(key, value)
        out, weights = attention(query, key, value, mask)
        return a.out_proj(merge_heads(out)), weights


class CrossAttention(nn.Module):
    """CrossAttention(X, M) = MultiHead(X, M, M): queries from x, keys and values from memory.

    x (B, Lq, E), memory (B, Lm, E_m) -> y (B, Lq, E) and weights (B, h, Lq, Lm).
    memory_mask: (Lq, Lm), (B, Lq, Lm), (B, 1, Lm) (padding of the memory) or (B, h, Lq, Lm),
    True = may attend. E_m = kdim = vdim (default E): keys and values both come from memory.
    Cost O(B·Lq·Lm·E + B·Lm·E·E_m) time, O(B·h·Lq·Lm) memory. Explained in §3.2.
    """

    def __init__(self, embed_dim, num_heads, *, kdim=None, vdim=None, bias=True):
        super().__init__()
        for name, dim in (("kdim", kdim), ("vdim", vdim)):
            if dim is not None:
                _checks.positive(dim, name, integer=True)
        if kdim is not None and vdim is not None and kdim != vdim:
            raise ValueError(f"kdim={kdim} and vdim={vdim} must be equal: keys and values both come from memory")
        self.memory_dim = kdim or vdim or embed_dim
        self.attn = MultiHeadAttention(embed_dim, num_heads, kdim=self.memory_dim, vdim=self.memory_dim,
                                       bias=bias)
        self.embed_dim, self.num_heads = embed_dim, num_heads

    def check(self, x, memory, memory_mask=None):
        """Raise unless x, memory and memory_mask fit this layer; return the mask lifted to 4-D."""
        _check_sequence(x, "x", self.embed_dim)
        _check_sequence(memory, "memory", self.memory_dim)
        _checks.same_kind({"x": x, "memory": memory})
        if memory.shape[0] != x.shape[0]:
            raise ValueError(f"memory has batch {memory.shape[0]} (shape {tuple(memory.shape)}) "
                             f"but x has {x.shape[0]} (shape {tuple(x.shape)})")
        return heads_mask(memory_mask, x.shape[0], self.num_heads, x.shape[1], memory.shape[1],
                          name="memory_mask", dtype=x.dtype)

    def forward(self, x, memory, memory_mask=None):
        """y (B, Lq, E) and weights (B, h, Lq, Lm); see the class docstring."""
        mask = self.check(x, memory, memory_mask)
        return self.attn(x, memory, memory, mask)


class FeedForward(nn.Module):
    """FFN(x) = W₂ · dropout(act(W₁ x + b₁)) + b₂, the same two-layer network at every position.

    x (..., E) -> (..., E) through a hidden width H (often 4E); act is "relu" or "gelu" (exact).
    Cost O(n·E·H) time and O(n·H) memory for n positions. Explained in §4.1.
    """

    def __init__(self, embed_dim, hidden_dim, activation="relu", dropout=0.0, *, bias=True):
        super().__init__()
        _checks.positive(embed_dim, "embed_dim", integer=True)
        _checks.positive(hidden_dim, "hidden_dim", integer=True)
        self.activation = _check_activation(activation)
        self.linear1 = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.dropout = nn.Dropout(_check_probability(dropout, "dropout"))
        self.linear2 = nn.Linear(hidden_dim, embed_dim, bias=bias)

    def forward(self, x):
        _checks.tensor(x, "x", min_dim=1)
        if x.shape[-1] != self.linear1.in_features:
            raise ValueError(f"x has width {x.shape[-1]} (shape {tuple(x.shape)}) "
                             f"but the layer expects {self.linear1.in_features}")
        return self.linear2(self.dropout(ACTIVATIONS[self.activation](self.linear1(x))))


# ---------------------------------------------------------------- layers

def _sublayer(x, block, norm, dropout, norm_first):
    """Residual connection around ``block``: x + f(LN(x)) (pre-norm) or LN(x + f(x)) (post-norm).

    ``block`` returns (f(x), extra); dropout acts on f(x). Returns (new x, extra).
    """
    y, extra = block(norm(x) if norm_first else x)
    x = x + dropout(y)
    return (x if norm_first else norm(x)), extra


def _activation_name(fn):
    """"relu" or "gelu" for the activation of a torch Transformer layer, else a ValueError."""
    if fn is F.relu or isinstance(fn, nn.ReLU):
        return "relu"
    if fn is F.gelu or (isinstance(fn, nn.GELU) and fn.approximate == "none"):
        return "gelu"
    raise ValueError(f"activation {fn!r} of the torch layer is not supported: use relu or gelu")


def _options_of(layer):
    """The keyword options of a torch Transformer layer, in attnbook's names."""
    return dict(norm_first=layer.norm_first, dropout=layer.dropout.p,
                activation=_activation_name(layer.activation), layer_norm_eps=layer.norm1.eps,
                bias=layer.linear1.bias is not None)


class EncoderLayer(nn.Module):
    """One encoder layer: self-attention, then a feed-forward network, each inside a residual.

    post-norm (norm_first=False, the original): x ← LN(x + SA(x)); x ← LN(x + FFN(x)).
    pre-norm (norm_first=True): x ← x + SA(LN(x)); x ← x + FFN(LN(x)).
    forward(x (B, L, E), mask=None) -> (y (B, L, E), weights (B, h, L, L)); mask as in
    :class:`SelfAttention` (True = may attend; torch's src_key_padding_mask kpm becomes
    ``~kpm[:, None, :]``). Dropout (training only) acts on both blocks' outputs and inside the
    FFN; unlike torch, the attention weights themselves are not dropped.
    Cost O(B·L²·E + B·L·E² + B·L·E·H) time, O(B·h·L² + B·L·H) memory. Explained in §4.1.
    """

    def __init__(self, embed_dim, num_heads, hidden_dim, *, norm_first=False, dropout=0.0,
                 activation="relu", layer_norm_eps=1e-5, bias=True):
        super().__init__()
        self.norm_first = bool(norm_first)
        self.self_attn = SelfAttention(embed_dim, num_heads, bias=bias)
        self.ffn = FeedForward(embed_dim, hidden_dim, activation, dropout, bias=bias)
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    @classmethod
    def from_torch(cls, layer):
        """A copy of a ``torch.nn.TransformerEncoderLayer`` (relu or gelu) with the same weights.

        With batch_first=True and in eval mode both give the same outputs; the copy is on the
        layer's device and in its dtype.
        """
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise TypeError(f"layer must be a torch.nn.TransformerEncoderLayer, got {type(layer).__name__}")
        w = layer.linear1.weight
        new = cls(layer.linear1.in_features, layer.self_attn.num_heads, layer.linear1.out_features,
                  **_options_of(layer)).to(device=w.device, dtype=w.dtype)
        new.self_attn.attn = MultiHeadAttention.from_torch(layer.self_attn).to(w.device)
        for mine, theirs in ((new.ffn.linear1, layer.linear1), (new.ffn.linear2, layer.linear2),
                             (new.norm1, layer.norm1), (new.norm2, layer.norm2)):
            mine.load_state_dict(theirs.state_dict())
        return new.train(layer.training)

    def forward(self, x, mask=None):
        """(y (B, L, E), weights (B, h, L, L)); see the class docstring."""
        _check_sequence(x, "x", self.self_attn.embed_dim)
        x, weights = _sublayer(x, lambda z: self.self_attn(z, mask), self.norm1, self.dropout1, self.norm_first)
        x, _ = _sublayer(x, lambda z: (self.ffn(z), None), self.norm2, self.dropout2, self.norm_first)
        return x, weights


class DecoderLayer(nn.Module):
    """One decoder layer: causal self-attention, cross-attention to the memory, a feed-forward network.

    post-norm: x ← LN(x + SA(x)); x ← LN(x + CA(x, M)); x ← LN(x + FFN(x)).
    pre-norm (norm_first=True): x ← x + SA(LN(x)); x ← x + CA(LN(x), M); x ← x + FFN(LN(x)).
    forward(x (B, T, E), memory (B, S, E_m), tgt_mask=None, memory_mask=None, *, cache=None)
    -> (y (B, T, E), {"self": (B, h, T, L), "cross": (B, h, T, S)}), L = T (+ cached positions).
    The self-attention is always causal; tgt_mask (…, T, L) adds to it (e.g. target padding),
    memory_mask (…, T, S) hides memory positions; both True = may attend. With ``cache``
    (a :class:`LayerCache`) x holds only the new tokens (see :class:`SelfAttention`).
    E_m = memory_dim (default E). Dropout as in :class:`EncoderLayer`.
    Cost O(B·T·(L + S)·E + B·T·E² + B·T·E·H + B·S·E·E_m) time, O(B·h·T·(L + S) + B·T·H) memory.
    Explained in §4.1.
    """

    def __init__(self, embed_dim, num_heads, hidden_dim, *, memory_dim=None, norm_first=False, dropout=0.0,
                 activation="relu", layer_norm_eps=1e-5, bias=True):
        super().__init__()
        self.norm_first = bool(norm_first)
        self.self_attn = SelfAttention(embed_dim, num_heads, bias=bias, causal=True)
        self.cross_attn = CrossAttention(embed_dim, num_heads, kdim=memory_dim, vdim=memory_dim, bias=bias)
        self.ffn = FeedForward(embed_dim, hidden_dim, activation, dropout, bias=bias)
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias)
        self.norm3 = nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias)
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    @classmethod
    def from_torch(cls, layer):
        """A copy of a ``torch.nn.TransformerDecoderLayer`` (relu or gelu) with the same weights.

        With batch_first=True, eval mode and a causal tgt_mask, both give the same outputs.
        """
        if not isinstance(layer, nn.TransformerDecoderLayer):
            raise TypeError(f"layer must be a torch.nn.TransformerDecoderLayer, got {type(layer).__name__}")
        w = layer.linear1.weight
        new = cls(layer.linear1.in_features, layer.self_attn.num_heads, layer.linear1.out_features,
                  **_options_of(layer)).to(device=w.device, dtype=w.dtype)
        new.self_attn.attn = MultiHeadAttention.from_torch(layer.self_attn).to(w.device)
        new.cross_attn.attn = MultiHeadAttention.from_torch(layer.multihead_attn).to(w.device)
        for mine, theirs in ((new.ffn.linear1, layer.linear1), (new.ffn.linear2, layer.linear2),
                             (new.norm1, layer.norm1), (new.norm2, layer.norm2), (new.norm3, layer.norm3)):
            mine.load_state_dict(theirs.state_dict())
        return new.train(layer.training)

    def forward(self, x, memory, tgt_mask=None, memory_mask=None, *, cache=None):
        """(y (B, T, E), {"self": weights, "cross": weights}); see the class docstring."""
        self.self_attn.check(x, tgt_mask, cache, mask_name="tgt_mask")  # before the cache changes
        self.cross_attn.check(x, memory, memory_mask)
        x, self_weights = _sublayer(x, lambda z: self.self_attn(z, tgt_mask, cache=cache),
                                    self.norm1, self.dropout1, self.norm_first)
        x, cross_weights = _sublayer(x, lambda z: self.cross_attn(z, memory, memory_mask),
                                     self.norm2, self.dropout2, self.norm_first)
        x, _ = _sublayer(x, lambda z: (self.ffn(z), None), self.norm3, self.dropout3, self.norm_first)
        return x, {"self": self_weights, "cross": cross_weights}


# ---------------------------------------------------------------- stacks

def _final_norm(embed_dim, use, layer_norm_eps, bias):
    return nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias) if use else None


def _copy_final_norm(stack, torch_stack):
    """Copy torch's optional final norm (a LayerNorm) into ``stack.norm``."""
    if torch_stack.norm is None:
        return
    if not isinstance(torch_stack.norm, nn.LayerNorm):
        raise ValueError(f"the final norm must be a torch.nn.LayerNorm, got {type(torch_stack.norm).__name__}")
    stack.norm = copy.deepcopy(torch_stack.norm)


class Encoder(nn.Module):
    """A stack of ``num_layers`` :class:`EncoderLayer`, then a LayerNorm (by default only for pre-norm).

    x (B, L, E), mask as in :class:`EncoderLayer` -> (y (B, L, E), [weights (B, h, L, L) per layer]).
    ``final_norm`` (default: ``norm_first``) adds the last LayerNorm that a pre-norm stack
    needs, since its residual stream is never normalised otherwise.
    Cost num_layers × that of one layer. Explained in §4.1.
    """

    def __init__(self, num_layers, embed_dim, num_heads, hidden_dim, *, norm_first=False, dropout=0.0,
                 activation="relu", layer_norm_eps=1e-5, bias=True, final_norm=None):
        super().__init__()
        _checks.positive(num_layers, "num_layers", integer=True)
        self.layers = nn.ModuleList(
            EncoderLayer(embed_dim, num_heads, hidden_dim, norm_first=norm_first, dropout=dropout,
                         activation=activation, layer_norm_eps=layer_norm_eps, bias=bias)
            for _ in range(num_layers))
        self.norm = _final_norm(embed_dim, norm_first if final_norm is None else final_norm, layer_norm_eps, bias)

    @classmethod
    def from_torch(cls, encoder):
        """A copy of a ``torch.nn.TransformerEncoder`` (its layers and its optional final LayerNorm)."""
        if not isinstance(encoder, nn.TransformerEncoder):
            raise TypeError(f"encoder must be a torch.nn.TransformerEncoder, got {type(encoder).__name__}")
        layers = [EncoderLayer.from_torch(layer) for layer in encoder.layers]
        new = cls(1, layers[0].self_attn.embed_dim, layers[0].self_attn.num_heads, 1, final_norm=False)
        new.layers = nn.ModuleList(layers)
        _copy_final_norm(new, encoder)
        w = encoder.layers[0].linear1.weight
        return new.to(device=w.device, dtype=w.dtype).train(encoder.training)

    def forward(self, x, mask=None):
        """(y (B, L, E), [weights (B, h, L, L) per layer])."""
        weights = []
        for layer in self.layers:
            x, w = layer(x, mask)
            weights.append(w)
        return (x if self.norm is None else self.norm(x)), weights


class Decoder(nn.Module):
    """A stack of ``num_layers`` :class:`DecoderLayer`, then a LayerNorm (by default only for pre-norm).

    forward(x (B, T, E), memory (B, S, E_m), tgt_mask=None, memory_mask=None)
    -> (y (B, T, E), [{"self": (B, h, T, T), "cross": (B, h, T, S)} per layer]).
    :meth:`forward_step` decodes token by token with a :class:`KVCache` and gives the same
    outputs as the full causal pass. Cost num_layers × that of one layer. Explained in §4.1, §5.3.
    """

    def __init__(self, num_layers, embed_dim, num_heads, hidden_dim, *, memory_dim=None, norm_first=False,
                 dropout=0.0, activation="relu", layer_norm_eps=1e-5, bias=True, final_norm=None):
        super().__init__()
        _checks.positive(num_layers, "num_layers", integer=True)
        self.layers = nn.ModuleList(
            DecoderLayer(embed_dim, num_heads, hidden_dim, memory_dim=memory_dim, norm_first=norm_first,
                         dropout=dropout, activation=activation, layer_norm_eps=layer_norm_eps, bias=bias)
            for _ in range(num_layers))
        self.norm = _final_norm(embed_dim, norm_first if final_norm is None else final_norm, layer_norm_eps, bias)

    @property
    def num_layers(self):
        return len(self.layers)

    @classmethod
    def from_torch(cls, decoder):
        """A copy of a ``torch.nn.TransformerDecoder`` (its layers and its optional final LayerNorm)."""
        if not isinstance(decoder, nn.TransformerDecoder):
            raise TypeError(f"decoder must be a torch.nn.TransformerDecoder, got {type(decoder).__name__}")
        layers = [DecoderLayer.from_torch(layer) for layer in decoder.layers]
        new = cls(1, layers[0].self_attn.embed_dim, layers[0].self_attn.num_heads, 1, final_norm=False)
        new.layers = nn.ModuleList(layers)
        _copy_final_norm(new, decoder)
        w = decoder.layers[0].linear1.weight
        return new.to(device=w.device, dtype=w.dtype).train(decoder.training)

    def forward(self, x, memory, tgt_mask=None, memory_mask=None, *, cache=None):
        """(y (B, T, E), [weights per layer]); with ``cache`` (a KVCache) see :meth:`forward_step`."""
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache or None, got {type(cache).__name__}")
        if cache is not None and cache.num_layers != self.num_layers:
            raise ValueError(f"cache has {cache.num_layers} layers but the decoder has {self.num_layers}")
        weights = []
        for i, layer in enumerate(self.layers):
            x, w = layer(x, memory, tgt_mask, memory_mask, cache=None if cache is None else cache[i])
            weights.append(w)
        return (x if self.norm is None else self.norm(x)), weights

    def forward_step(self, x, memory, cache, memory_mask=None):
        """Decode the next T positions (usually T = 1) after the ``cache.length`` already in ``cache``.

        x (B, T, E): the embeddings of the new tokens (with their positions' encodings, at
        positions cache.length … cache.length + T - 1); memory (B, S, E_m); cache a
        ``KVCache(num_layers)``, updated in place (one more position per token).
        -> (y (B, T, E), [{"self": (B, h, T, L), "cross": (B, h, T, S)} per layer]), L = cache.length
        after the step; y equals the last T rows of :meth:`forward` on the whole prefix.
        Cost per token O(layers·B·(L·E + S·E + E² + E·H + S·E·E_m)) time instead of
        O(layers·B·L²·E) for recomputing the prefix (the memory's keys and values are still
        projected at every step; caching them too would remove the S·E·E_m term); memory: the
        cache, O(layers·B·L·E). Explained in §5.3.
        """
        if cache is None:
            raise TypeError(f"cache must be a KVCache({self.num_layers}), got None")
        return self.forward(x, memory, memory_mask=memory_mask, cache=cache)
