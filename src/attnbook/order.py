"""Order in self-attention: permutations, toy tasks that need positions, path lengths (§3.2).

Self-attention without positions is permutation-equivariant, SA(P X) = P SA(X): shuffle the
tokens and the outputs shuffle the same way, so a model built from it sees a bag of tokens.
This module holds what §3.2 uses to show it and to show what it costs or buys:

- permutation helpers: :func:`random_permutation`, :func:`permute`, :func:`inverse_permutation`,
  :func:`equivariance_gap`;
- synthetic tasks: :func:`before_task` and :func:`first_token_task` (the answer depends on the
  order of the tokens), :func:`kv_retrieval_task` (cross-attention looks up values);
- tiny models: :class:`OrderClassifier` (one self-attention layer, positions optional) and
  :class:`RetrievalModel` (one cross-attention layer);
- counting: :func:`rnn_states` (an Elman RNN), :func:`sequential_depth` (the longest chain of
  dependent matrix products in the autograd graph) and :func:`count_flops`.

Conventions as everywhere in attnbook: batch-first (B, L, E) tensors, token ids int64.
References (book/references.bib): vaswani2017attention, shaw2018self, su2021roformer.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .attention import attention
from .multihead import MultiHeadAttention, merge_heads, split_heads
from .positions import LearnedPositionalEmbedding, apply_rope, sinusoidal_encoding
from .transformer import CrossAttention

POSITIONS = ("none", "sinusoidal", "learned", "rope")
A_TOKEN, B_TOKEN = 0, 1  # the two marked tokens of before_task


# ---------------------------------------------------------------- permutations

def _check_generator(generator):
    _checks.generator(generator)


def random_permutation(length, *, generator=None):
    """A uniformly random permutation π of 0 … length−1, as an int64 tensor (length,).

    Row i of ``permute(x, π)`` is row π(i) of x. Cost O(length). Explained in §3.2.
    """
    _checks.positive(length, "length", integer=True)
    _check_generator(generator)
    return torch.randperm(length, generator=generator)


def _check_permutation(perm, length, name="perm"):
    if not isinstance(perm, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of indices, got {type(perm).__name__}")
    if perm.dtype in (torch.bool,) or perm.is_floating_point() or perm.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {perm.dtype}")
    if perm.dim() != 1 or perm.numel() != length:
        raise ValueError(f"{name} has shape {tuple(perm.shape)} but must be ({length},): "
                         f"a permutation of the {length} positions")
    if not torch.equal(perm.sort().values.cpu(), torch.arange(length)):
        raise ValueError(f"{name} must contain each of 0 … {length - 1} exactly once, got {perm.tolist()}")
    return perm.long()


def permute(x, perm, *, dim=-2):
    """(P x)_i = x_π(i): reorder the positions of x along ``dim`` (default −2, the sequence axis).

    x (..., L, E) (or any tensor whose ``dim`` has L entries), perm (L,) a permutation of
    0 … L−1 -> a tensor of the shape of x. Cost O(x.numel()). Explained in §3.2.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not -x.dim() <= dim < max(x.dim(), 1):
        raise ValueError(f"dim={dim} is out of range for x of shape {tuple(x.shape)}")
    perm = _check_permutation(perm, x.shape[dim])
    return x.index_select(dim, perm.to(x.device))


def inverse_permutation(perm):
    """π⁻¹ with π⁻¹(π(i)) = i, so that permute(permute(x, π), π⁻¹) = x. perm (L,) -> (L,). §3.2."""
    if not isinstance(perm, torch.Tensor):
        raise TypeError(f"perm must be a torch.Tensor of indices, got {type(perm).__name__}")
    if perm.dim() != 1:
        raise ValueError(f"perm must be 1-D (L,), got shape {tuple(perm.shape)}")
    perm = _check_permutation(perm, perm.numel())
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return inverse


def equivariance_gap(fn, x, perm):
    """max |fn(P x) − P fn(x)|: 0 (up to rounding) when fn is permutation-equivariant.

    fn maps x (..., L, E) to a tensor (..., L, E'), or to a tuple whose first entry is one
    (as the layers of attnbook return (output, weights)); perm (L,) permutes the positions
    (axis −2). Returns a Python float. Cost: two calls of fn. Explained in §3.2.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _checks.tensor(x, "x", min_dim=2)

    def call(inp):
        out = fn(inp)
        out = out[0] if isinstance(out, tuple) else out
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[-2] != x.shape[-2]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"fn must return (..., L, E') with L = {x.shape[-2]} positions, got {shape}")
        return out

    with torch.no_grad():
        return (call(permute(x, perm)) - permute(call(x), perm)).abs().max().item()


# ---------------------------------------------------------------- tasks that depend on order

def _check_task(batch, length, vocab_size, generator, *, min_vocab, names=("length", "vocab_size")):
    _checks.positive(batch, "batch", integer=True)
    _checks.positive(length, names[0], integer=True)
    _checks.positive(vocab_size, names[1], integer=True)
    _check_generator(generator)
    if vocab_size < min_vocab:
        raise ValueError(f"{names[1]}={vocab_size} is too small: this task needs at least {min_vocab}")


def before_task(batch, length, vocab_size, *, generator=None):
    """Sequences holding token A = 0 and token B = 1 once each; label 1 when A comes before B.

    The other length−2 tokens are drawn uniformly from 2 … vocab_size−1. Both orders are
    equally likely and independent of the other tokens, so a model that ignores order
    (sees only the bag of tokens) is right half the time at best.
    Returns tokens (batch, length) int64 and labels (batch,) int64. Needs length ≥ 2 and
    vocab_size ≥ 3. Cost O(batch·length). Explained in §3.2.
    """
    _check_task(batch, length, vocab_size, generator, min_vocab=3)
    if length < 2:
        raise ValueError(f"length must be ≥ 2 to hold both A and B, got {length}")
    tokens = torch.randint(2, vocab_size, (batch, length), generator=generator)
    slots = torch.rand(batch, length, generator=generator).argsort(dim=-1)[:, :2]  # two distinct positions
    rows = torch.arange(batch)
    tokens[rows, slots[:, 0]] = A_TOKEN
    tokens[rows, slots[:, 1]] = B_TOKEN
    return tokens, (slots[:, 0] < slots[:, 1]).long()


def first_token_task(batch, length, vocab_size, *, generator=None):
    """Sequences of ``length`` distinct tokens from 0 … vocab_size−1; the label is the first token.

    The tokens are distinct, so without positions the first one is any of the ``length``
    tokens present: a model that ignores order is right with probability 1/length at best.
    Returns tokens (batch, length) int64 and labels (batch,) int64 (= tokens[:, 0]).
    Needs vocab_size ≥ length. Cost O(batch·vocab_size). Explained in §3.2.
    """
    _check_task(batch, length, vocab_size, generator, min_vocab=length)
    tokens = torch.rand(batch, vocab_size, generator=generator).argsort(dim=-1)[:, :length]
    return tokens, tokens[:, 0].clone()


def kv_retrieval_task(batch, num_pairs, num_queries, num_keys, num_values, *, generator=None):
    """A memory of ``num_pairs`` (key, value) pairs and queries that ask for the value of a key.

    Keys of one memory are distinct, drawn from 0 … num_keys−1; values are uniform in
    0 … num_values−1; the queries are ``num_queries`` distinct keys of the memory, in random
    order. Returns (memory_keys (B, Lk), memory_values (B, Lk), query_keys (B, Lq),
    targets (B, Lq), slots (B, Lq)) as int64, Lk = num_pairs, Lq = num_queries, with
    slots[b, i] the memory position holding query i's key: memory_keys[b, slots] = query_keys.
    Needs num_queries ≤ num_pairs ≤ num_keys. Cost O(B·num_keys). Explained in §3.2.
    """
    _check_task(batch, num_pairs, num_keys, generator, min_vocab=num_pairs, names=("num_pairs", "num_keys"))
    _checks.positive(num_queries, "num_queries", integer=True)
    _checks.positive(num_values, "num_values", integer=True)
    if num_queries > num_pairs:
        raise ValueError(f"num_queries={num_queries} must be ≤ num_pairs={num_pairs}: "
                         "each query asks for a different key of the memory")
    keys = torch.rand(batch, num_keys, generator=generator).argsort(dim=-1)[:, :num_pairs]
    values = torch.randint(0, num_values, (batch, num_pairs), generator=generator)
    slots = torch.rand(batch, num_pairs, generator=generator).argsort(dim=-1)[:, :num_queries]
    return keys, values, keys.gather(1, slots), values.gather(1, slots), slots


# ---------------------------------------------------------------- tiny models

def _check_tokens(tokens, name, vocab_size, max_length=None):
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"{name} must have shape (B, L), got {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"{name} must lie in 0 … {vocab_size - 1}, got values from "
                         f"{tokens.min().item()} to {tokens.max().item()}")
    if max_length is not None and tokens.shape[1] > max_length:
        raise ValueError(f"{name} has length {tokens.shape[1]} > max_length={max_length}")


class OrderClassifier(nn.Module):
    """Tokens -> embeddings (+ positions) -> one self-attention layer -> mean over positions -> MLP.

    h = e(x) + p (p: sinusoidal or learned, added), z = h + SelfAttn(h), logits = MLP(mean_i z_i).
    ``positions``: "none" (the model is permutation-invariant: a bag of tokens), "sinusoidal",
    "learned" or "rope" (queries and keys rotated by their position, nothing added).
    tokens (B, L) int64 with L ≤ max_length -> logits (B, num_classes) and weights
    (B, heads, L, L). Cost O(B·L²·dim + B·L·dim²). Explained in §3.2.
    """

    def __init__(self, vocab_size, num_classes, *, dim=32, heads=2, max_length=16, positions="sinusoidal"):
        super().__init__()
        _checks.positive(vocab_size, "vocab_size", integer=True)
        _checks.positive(num_classes, "num_classes", integer=True)
        _checks.positive(max_length, "max_length", integer=True)
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if positions == "rope" and (dim // max(heads, 1)) % 2:
            raise ValueError(f"rope needs an even head width, got dim={dim}, heads={heads}")
        self.vocab_size, self.max_length, self.positions, self.heads = vocab_size, max_length, positions, heads
        self.embed = nn.Embedding(vocab_size, dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.learned = LearnedPositionalEmbedding(max_length, dim) if positions == "learned" else None
        self.register_buffer("table", sinusoidal_encoding(max_length, dim), persistent=False)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, num_classes))

    def forward(self, tokens):
        _check_tokens(tokens, "tokens", self.vocab_size, self.max_length)
        h = self.embed(tokens)
        if self.positions == "sinusoidal":
            h = h + self.table[: h.shape[1]]
        elif self.positions == "learned":
            h = self.learned(h)
        a = self.attn
        q, k, v = (split_heads(proj(h), self.heads) for proj in (a.q_proj, a.k_proj, a.v_proj))
        if self.positions == "rope":
            q, k = apply_rope(q), apply_rope(k)
        out, weights = attention(q, k, v)
        z = h + a.out_proj(merge_heads(out))
        return self.head(z.mean(dim=1)), weights


class RetrievalModel(nn.Module):
    """Cross-attention that looks up values: queries are keys, the memory holds (key, value) pairs.

    memory m_j = e_K(key_j) + e_V(value_j) (Lk slots), queries y_i = e_K(query_i) (Lq),
    o = CrossAttention(y, m) (queries from y, keys and values from m), logits = W o over the
    values. No positions: the lookup is by content. memory_keys, memory_values (B, Lk),
    query_keys (B, Lq) int64 -> logits (B, Lq, num_values) and weights (B, heads, Lq, Lk).
    Cost O(B·Lq·Lk·dim + B·(Lq + Lk)·dim²). Explained in §3.2.
    """

    def __init__(self, num_keys, num_values, *, dim=32, heads=1):
        super().__init__()
        _checks.positive(num_keys, "num_keys", integer=True)
        _checks.positive(num_values, "num_values", integer=True)
        self.num_keys, self.num_values = num_keys, num_values
        self.key_embed = nn.Embedding(num_keys, dim)
        self.value_embed = nn.Embedding(num_values, dim)
        self.cross = CrossAttention(dim, heads)
        self.readout = nn.Linear(dim, num_values)

    def memory(self, memory_keys, memory_values):
        """The memory m_j = e_K(key_j) + e_V(value_j), (B, Lk, dim)."""
        _check_tokens(memory_keys, "memory_keys", self.num_keys)
        _check_tokens(memory_values, "memory_values", self.num_values)
        if memory_keys.shape != memory_values.shape:
            raise ValueError(f"memory_keys {tuple(memory_keys.shape)} and memory_values "
                             f"{tuple(memory_values.shape)} must have the same shape (B, Lk)")
        return self.key_embed(memory_keys) + self.value_embed(memory_values)

    def forward(self, memory_keys, memory_values, query_keys):
        m = self.memory(memory_keys, memory_values)
        _check_tokens(query_keys, "query_keys", self.num_keys)
        if query_keys.shape[0] != m.shape[0]:
            raise ValueError(f"query_keys has batch {query_keys.shape[0]} but the memory has {m.shape[0]}")
        out, weights = self.cross(self.key_embed(query_keys), m)
        return self.readout(out), weights


# ---------------------------------------------------------------- counting steps and operations

def rnn_states(x, w_ih, w_hh, bias=None):
    """An Elman RNN, one step at a time: h_t = tanh(x_t W_ihᵀ + h_{t−1} W_hhᵀ + b), h_{−1} = 0.

    x (B, L, E), w_ih (d, E), w_hh (d, d), bias (d,) or None -> states (B, L, d).
    Step t needs h_{t−1}: L sequential steps. Cost O(B·L·d·(E + d)) time. Explained in §3.2.
    """
    _checks.tensor(x, "x", min_dim=3)
    if x.dim() != 3:
        raise ValueError(f"x must be (B, L, E), got shape {tuple(x.shape)}")
    for name, w in (("w_ih", w_ih), ("w_hh", w_hh)):
        _checks.tensor(w, name, min_dim=2)
    d, width = w_hh.shape[0], x.shape[-1]
    if w_hh.shape != (d, d) or w_ih.shape != (d, width):
        raise ValueError(f"w_ih must be (d, E) and w_hh (d, d) with E = {width}; got "
                         f"w_ih {tuple(w_ih.shape)} and w_hh {tuple(w_hh.shape)}")
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"bias must be ({d},), got {tuple(bias.shape)}")
    h = x.new_zeros(x.shape[0], d)
    states = []
    for t in range(x.shape[1]):
        h = torch.tanh(F.linear(x[:, t], w_ih, bias) + h @ w_hh.T)
        states.append(h)
    return torch.stack(states, dim=1)


def _is_matmul(node):
    name = type(node).__name__.lower()
    return any(op in name for op in ("mmbackward", "addmmbackward", "bmmbackward", "mvbackward",
                                     "dotbackward", "baddbmmbackward"))


def sequential_depth(output, source):
    """The longest chain of dependent matrix products from ``source`` to ``output`` (autograd graph).

    Each product in the chain needs the result of the previous one, so the chain is the
    number of matrix products that must run one after another, however many processors
    there are: for an RNN over L positions it is L (h_t needs h_{t−1}), for a self-attention
    layer a constant (projections, scores, weighted sum, output projection) whatever L.
    Tensors, not positions, are the nodes: pass the whole input and output sequences.
    ``source`` is a leaf tensor with requires_grad; ``output`` a tensor computed from it.
    Raises a ValueError when output does not depend on source. O(nodes + edges). §3.2.
    """
    for name, t in (("output", output), ("source", source)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not (source.is_leaf and source.requires_grad):
        raise ValueError("source must be a leaf tensor with requires_grad=True")
    if output.grad_fn is None:
        raise ValueError("output has no autograd graph: compute it from source with grad enabled")
    depth = {}                                 # node -> longest chain below it, None: no path
    stack = [(output.grad_fn, False)]
    while stack:                               # iterative post-order walk of the DAG
        node, children_done = stack.pop()
        if node in depth:
            continue
        if getattr(node, "variable", None) is source:
            depth[node] = 0
            continue
        children = [child for child, _ in node.next_functions if child is not None]
        if not children_done:
            stack.append((node, True))
            stack.extend((child, False) for child in children if child not in depth)
            continue
        below = [depth[child] for child in children if depth[child] is not None]
        depth[node] = max(below) + int(_is_matmul(node)) if below else None
    if depth[output.grad_fn] is None:
        raise ValueError("output does not depend on source: no path between them in the graph")
    return depth[output.grad_fn]


def count_flops(fn, *args, **kwargs):
    """Floating-point operations of the matrix products in fn(*args, **kwargs), counted by torch.

    Uses ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; the
    elementwise operations, softmax included, are not counted). Returns an int. Cost: one
    call of fn without gradients. Explained in §3.2.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()
