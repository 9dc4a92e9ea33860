"""Encoder-decoder attention for recurrent networks: Bahdanau, Luong global and local (§1.2, §3.1).

A decoder state (the query, d_q wide) looks at every encoder state (the keys, d_k wide)
and reads a context vector from them. Every attention here is called the same way:
``attn(query, keys, values=None, mask=None)`` with query (B, d_q) for one decoder step or
(B, Lq, d_q) for all of them, keys (B, Lk, d_k), values (B, Lk, d_v) (the keys when None),
and a boolean mask (True = may attend): (B, Lk) masks keys (padding), (B, Lq, Lk) masks
pairs. It returns context (B, d_v) or (B, Lq, d_v) and weights (B, Lk) or (B, Lq, Lk).
A query with no allowed key gets zero weights and a zero context, never NaN.

:class:`RNNEncoder` and :class:`AttentionDecoder` put one of them between a bidirectional
GRU and a GRU decoder; ``attention=None`` gives the fixed-vector baseline of §1.2.
"""
import numbers

import torch
from torch import nn

from . import _checks
from .scores import AdditiveScore, dot_scores, general_scores
from .softmax import masked_softmax

LUONG_SCORES = ("dot", "general")


def _rank(x, name, ranks, shapes):
    """Raise unless ``x`` is a floating tensor whose rank is one of ``ranks``."""
    _checks.tensor(x, name, min_dim=min(ranks))
    if x.dim() not in ranks:
        raise ValueError(f"{name} must have shape {shapes}, got shape {tuple(x.shape)}")


def _key_mask(mask, batch, lq, lk):
    """Lift a key mask (B, Lk) or a pair mask (B, Lq, Lk) to one that broadcasts to (B, Lq, Lk)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dim() <= 2:
        return _checks.mask_for(mask, (batch, lk)).unsqueeze(-2)
    return _checks.mask_for(mask, (batch, lq, lk))


class EncoderDecoderAttention(nn.Module):
    """Common base: checks the inputs, turns scores into weights, reads the context.

    Subclasses define :meth:`scores`, query (B, Lq, d_q), keys (B, Lk, d_k) -> (B, Lq, Lk).
    context_t = Σ_s a_t(s) v_s with a_t = softmax_s(score(h_t, h̄_s)) over the allowed keys.
    Explained in §1.2.
    """

    def __init__(self, query_dim, key_dim):
        super().__init__()
        self.query_dim = _checks.positive(query_dim, "query_dim", integer=True)
        self.key_dim = _checks.positive(key_dim, "key_dim", integer=True)

    def scores(self, query, keys):
        raise NotImplementedError

    def _inputs(self, query, keys, values, mask):
        """Checked (query (B, Lq, d_q), keys, values, mask, whether the query had no Lq)."""
        _rank(query, "query", (2, 3), "(B, d_q) or (B, Lq, d_q)")
        _rank(keys, "keys", (3,), "(B, Lk, d_k)")
        values = keys if values is None else values
        _rank(values, "values", (3,), "(B, Lk, d_v)")
        _checks.same_kind({"query": query, "keys": keys, "values": values})
        for p in self.parameters():
            if p.dtype != query.dtype:
                raise TypeError(f"query has dtype {query.dtype} but the attention's parameters "
                                f"are {p.dtype}; convert one with .to()")
        if not query.shape[0] == keys.shape[0] == values.shape[0]:
            raise ValueError(f"query, keys and values must share the batch size B, got shapes "
                             f"{tuple(query.shape)}, {tuple(keys.shape)} and {tuple(values.shape)}")
        if query.shape[-1] != self.query_dim:
            raise ValueError(f"query has width {query.shape[-1]} but query_dim={self.query_dim}")
        if keys.shape[-1] != self.key_dim:
            raise ValueError(f"keys have width {keys.shape[-1]} but key_dim={self.key_dim}")
        if keys.shape[1] != values.shape[1]:
            raise ValueError(f"keys have Lk={keys.shape[1]} positions but values have "
                             f"{values.shape[1]}: shapes {tuple(keys.shape)} and {tuple(values.shape)}")
        single = query.dim() == 2
        query = query.unsqueeze(1) if single else query
        mask = _key_mask(mask, query.shape[0], query.shape[1], keys.shape[1])
        return query, keys, values, mask, single

    def forward(self, query, keys, values=None, mask=None):
        """(context, weights): context (B, [Lq,] d_v), weights (B, [Lq,] Lk), rows summing to 1."""
        query, keys, values, mask, single = self._inputs(query, keys, values, mask)
        weights = masked_softmax(self.scores(query, keys), mask)
        context = weights @ values
        return (context.squeeze(1), weights.squeeze(1)) if single else (context, weights)


class BahdanauAttention(EncoderDecoderAttention):
    """Additive attention (Bahdanau et al., 2015): a_t = softmax_s vᵀ tanh(W h_t + U h̄_s).

    query (B, d_q) or (B, Lq, d_q), keys (B, Lk, d_k), values (B, Lk, d_v) (default: keys),
    mask (B, Lk) or (B, Lq, Lk) -> context (B, [Lq,] d_v), weights (B, [Lq,] Lk).
    Parameters W (hidden_dim × d_q), U (hidden_dim × d_k), v (hidden_dim); no biases, as in
    the paper. Cost O(B·Lq·Lk·hidden_dim) time and memory. Explained in §1.2.
    """

    def __init__(self, query_dim, key_dim, hidden_dim):
        super().__init__(query_dim, key_dim)
        _checks.positive(hidden_dim, "hidden_dim", integer=True)
        self.score = AdditiveScore(query_dim, key_dim, hidden_dim)

    def scores(self, query, keys):
        """e (B, Lq, Lk) = vᵀ tanh(W h_t + U h̄_s)."""
        return self.score(query, keys)


def _luong_score_name(score):
    if score not in LUONG_SCORES:
        raise ValueError(f"score must be one of {LUONG_SCORES}, got {score!r}")
    return score


class LuongAttention(EncoderDecoderAttention):
    """Global attention (Luong et al., 2015): score "dot" h_tᵀ h̄_s or "general" h_tᵀ W h̄_s.

    a_t(s) = softmax_s score(h_t, h̄_s) over all source positions. Same call as
    :class:`BahdanauAttention`. "dot" needs query_dim == key_dim and has no parameters;
    "general" learns W (d_q × d_k). Cost O(B·Lq·Lk·d) time, O(B·Lq·Lk) memory.
    Explained in §1.2 and §3.1.
    """

    def __init__(self, query_dim, key_dim, score="dot"):
        super().__init__(query_dim, key_dim)
        self.score = _luong_score_name(score)
        if score == "dot" and query_dim != key_dim:
            raise ValueError(f'score="dot" needs query_dim == key_dim, got query_dim={query_dim} '
                             f'and key_dim={key_dim}; use score="general"')
        # W as a Linear(key_dim -> query_dim) weight: W h̄_s, initialised like nn.Linear.
        self.weight = (nn.Parameter(nn.Linear(key_dim, query_dim, bias=False).weight.detach())
                       if score == "general" else None)

    def scores(self, query, keys):
        """score(h_t, h̄_s) (B, Lq, Lk)."""
        if self.score == "dot":
            return dot_scores(query, keys)
        return general_scores(query, keys, self.weight)


class LuongLocalAttention(LuongAttention):
    """Local attention (Luong et al., 2015): attend to the window [p_t − D, p_t + D] only.

    local-p (``positions=None``): p_t = S·sigmoid(v_pᵀ tanh(W_p h_t)) ∈ [0, S] with S the
    number of allowed keys of the row (the source length under a padding mask), and
    a_t(s) = align(h_t, h̄_s)·exp(−(s − p_t)² / (2σ²)), σ = D/2, where align is the softmax of
    score(h_t, h̄_s) over the allowed keys in the window. The Gaussian favours keys near p_t
    and carries the gradient to W_p, v_p; the weights sum to at most 1.
    local-m (``positions`` given, e.g. p_t = t): a_t(s) = align(h_t, h̄_s), no Gaussian,
    summing to 1 over the window (0 when the window holds no allowed key).
    Source positions s = 0, 1, …, Lk − 1.

    query (B, [Lq,] d_q), keys (B, Lk, d_k), values (B, Lk, d_v), boolean mask (B, Lk) or
    (B, Lq, Lk), positions broadcastable to (B, [Lq]) -> context (B, [Lq,] d_v),
    weights (B, [Lq,] Lk), positions p_t (B, [Lq]). Computed densely here: O(B·Lq·Lk·d)
    time; a sparse version costs O(B·Lq·D·d). Explained in §3.1.
    """

    def __init__(self, query_dim, key_dim, window, score="general"):
        super().__init__(query_dim, key_dim, score)
        self.window = _checks.positive(window, "window", integer=True)
        self.w_position = nn.Linear(query_dim, query_dim, bias=False)  # W_p
        self.v_position = nn.Linear(query_dim, 1, bias=False)  # v_p

    def predict_positions(self, query, lengths):
        """p_t = S·sigmoid(v_pᵀ tanh(W_p h_t)): query (B, Lq, d_q), lengths S (B, Lq) -> (B, Lq)."""
        return lengths * torch.sigmoid(self.v_position(torch.tanh(self.w_position(query)))).squeeze(-1)

    def _positions(self, positions, batch, lq, single, like):
        if isinstance(positions, numbers.Real) and not isinstance(positions, bool):
            positions = torch.tensor(positions, dtype=like.dtype, device=like.device)
        _checks.tensor(positions, "positions", min_dim=0, floating=False)
        if positions.dtype == torch.bool or positions.is_complex():
            raise TypeError(f"positions must hold real numbers, got dtype {positions.dtype}")
        if positions.device != like.device:
            raise ValueError(f"positions is on {positions.device} but query is on {like.device}")
        want = (batch,) if single else (batch, lq)
        try:
            ok = tuple(torch.broadcast_shapes(positions.shape, want)) == want
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"positions has shape {tuple(positions.shape)} but must broadcast to "
                             f"{want}")
        positions = positions.to(like.dtype)
        if not torch.isfinite(positions).all():
            raise ValueError("positions must be finite")
        return positions.unsqueeze(-1) if single else positions

    def forward(self, query, keys, values=None, mask=None, positions=None):
        """(context, weights, positions); see the class docstring for the shapes."""
        query, keys, values, mask, single = self._inputs(query, keys, values, mask)
        if mask is not None and mask.dtype != torch.bool:
            raise TypeError(f"local attention needs a boolean mask, got dtype {mask.dtype}")
        batch, lq, lk = query.shape[0], query.shape[1], keys.shape[1]
        allowed = torch.ones(batch, lq, lk, dtype=torch.bool, device=query.device)
        if mask is not None:
            allowed = allowed & mask
        s = torch.arange(lk, device=query.device, dtype=query.dtype)
        if positions is None:
            p = self.predict_positions(query, allowed.sum(-1).to(query.dtype))
        else:
            p = self._positions(positions, batch, lq, single, query).expand(batch, lq)
        offset = s - p.unsqueeze(-1)  # s − p_t, (B, Lq, Lk)
        in_window = offset.detach().abs() <= self.window
        weights = masked_softmax(self.scores(query, keys), allowed & in_window)  # align
        if positions is None:
            sigma = self.window / 2
            weights = weights * torch.exp(-offset ** 2 / (2 * sigma ** 2))
        context = weights @ values
        if single:
            return context.squeeze(1), weights.squeeze(1), p.squeeze(1)
        return context, weights, p


# ------------------------------------------------------------------- a small encoder-decoder

def _tokens(tokens, name, vocab):
    """Raise unless ``tokens`` is a (B, L) integer tensor with ids in 0..vocab-1."""
    _checks.tensor(tokens, name, min_dim=2, floating=False)
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"{name} must have shape (B, L), got shape {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ValueError(f"{name} must lie in 0..{vocab - 1} (vocab={vocab}), got ids "
                         f"{tokens.min().item()}..{tokens.max().item()}")


def _padding(mask, name, batch, length, device):
    """Raise unless ``mask`` is a (B, L) bool padding mask: True on a prefix of ≥ 1 positions."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean tensor (True = real token), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but must be (B, L) = {(batch, length)}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but the states are on {device}")
    lengths = mask.sum(-1)
    if (lengths < 1).any():
        raise ValueError(f"{name} leaves a sequence without any token; lengths {lengths.tolist()}")
    if not torch.equal(mask, torch.arange(length, device=device) < lengths[:, None]):
        raise ValueError(f"{name} must be True on a prefix of each row (padding at the end)")
    return lengths


def final_state(states, mask=None):
    """A bidirectional RNN's final state read off its states: [h→_{S−1}; h←_0].

    states (B, L, 2h) (forward half first, as ``nn.GRU(bidirectional=True)`` returns them),
    mask (B, L) padding mask or None -> (B, 2h): the forward direction's state at the last
    real position S−1 and the backward direction's state at position 0. Explained in §1.2.
    """
    _rank(states, "states", (3,), "(B, L, 2h)")
    if states.shape[-1] % 2:
        raise ValueError(f"states must have an even width 2h, got shape {tuple(states.shape)}")
    batch, length, width = states.shape
    last = torch.full((batch,), length - 1, device=states.device)
    if mask is not None:
        last = _padding(mask, "mask", batch, length, states.device) - 1
    forward = states[torch.arange(batch, device=states.device), last, : width // 2]
    return torch.cat([forward, states[:, 0, width // 2:]], dim=-1)


class RNNEncoder(nn.Module):
    """Bidirectional GRU encoder: h̄_s = [h→_s; h←_s], the annotations of Bahdanau et al. (2015).

    tokens (B, L) integer ids, mask (B, L) bool padding mask (True = real token) or None ->
    states (B, L, 2·hidden) (zeros at padding) and final state (B, 2·hidden) = [h→_{S−1}; h←_0],
    the single vector a decoder without attention must squeeze the whole source into.
    Cost O(B·L·hidden·(emb + hidden)) time, O(B·L·hidden) memory. Explained in §1.2.
    """

    def __init__(self, vocab, emb, hidden):
        super().__init__()
        for name, value in (("vocab", vocab), ("emb", emb), ("hidden", hidden)):
            _checks.positive(value, name, integer=True)
        self.vocab, self.hidden = vocab, hidden
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = nn.GRU(emb, hidden, batch_first=True, bidirectional=True)

    def forward(self, tokens, mask=None):
        """(states (B, L, 2·hidden), final (B, 2·hidden)); padding is skipped, not read."""
        _tokens(tokens, "tokens", self.vocab)
        x = self.embed(tokens)
        if mask is None:
            states, last = self.rnn(x)
        else:
            lengths = _padding(mask, "mask", *tokens.shape, tokens.device)
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                                       enforce_sorted=False)
            states, last = self.rnn(packed)
            states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True,
                                                         total_length=tokens.shape[1])
        return states, torch.cat([last[0], last[1]], dim=-1)


class AttentionDecoder(nn.Module):
    """GRU decoder that reads a context c_t from the encoder at every step (Bahdanau et al., 2015).

    s_0 = tanh(W_init·final), c_t = attention(s_{t−1}, encoder states),
    s_t = GRU([E y_{t−1}; c_t], s_{t−1}), logits_t = W_out [s_t; c_t; E y_{t−1}].
    With ``attention=None`` (the baseline of §1.2) c_t = final for every t: the decoder sees
    the source only through the encoder's final state, a fixed-size bottleneck.
    ``attention`` is any module called as attention(query (B, hidden), keys (B, Ls, enc_dim),
    values, mask (B, Ls)) -> (context, weights, ...), e.g. :class:`BahdanauAttention` or
    :class:`LuongAttention` with query_dim=hidden and key_dim=enc_dim.
    Cost per step O(B·(Ls·cost of one score + hidden·(emb + enc_dim + hidden + vocab))).
    Explained in §1.2.
    """

    def __init__(self, vocab, emb, hidden, enc_dim, attention=None):
        super().__init__()
        for name, value in (("vocab", vocab), ("emb", emb), ("hidden", hidden), ("enc_dim", enc_dim)):
            _checks.positive(value, name, integer=True)
        if attention is not None:
            if not isinstance(attention, nn.Module):
                raise TypeError(f"attention must be an nn.Module or None, "
                                f"got {type(attention).__name__}")
            dims = (getattr(attention, "query_dim", hidden), getattr(attention, "key_dim", enc_dim))
            if dims != (hidden, enc_dim):
                raise ValueError(f"attention has (query_dim, key_dim) = {dims} but the decoder needs "
                                 f"(hidden, enc_dim) = {(hidden, enc_dim)}")
        self.vocab, self.hidden, self.enc_dim = vocab, hidden, enc_dim
        self.embed = nn.Embedding(vocab, emb)
        self.init = nn.Linear(enc_dim, hidden)
        self.cell = nn.GRUCell(emb + enc_dim, hidden)
        self.out = nn.Linear(hidden + enc_dim + emb, vocab)
        self.attention = attention

    def _start(self, batch, encoder_states, src_mask, encoder_final):
        """Check the encoder side; return s_0 (B, hidden) and the final state (B, enc_dim)."""
        _rank(encoder_states, "encoder_states", (3,), "(B, Ls, enc_dim)")
        if encoder_states.shape[0] != batch or encoder_states.shape[-1] != self.enc_dim:
            raise ValueError(f"encoder_states has shape {tuple(encoder_states.shape)} but must be "
                             f"(B, Ls, enc_dim) = ({batch}, Ls, {self.enc_dim})")
        if src_mask is not None:
            _padding(src_mask, "src_mask", batch, encoder_states.shape[1], encoder_states.device)
        if encoder_final is None:
            encoder_final = final_state(encoder_states, src_mask)
        _rank(encoder_final, "encoder_final", (2,), "(B, enc_dim)")
        if tuple(encoder_final.shape) != (batch, self.enc_dim):
            raise ValueError(f"encoder_final has shape {tuple(encoder_final.shape)} but must be "
                             f"(B, enc_dim) = {(batch, self.enc_dim)}")
        return torch.tanh(self.init(encoder_final)), encoder_final

    def step(self, token, state, encoder_states, src_mask, encoder_final):
        """One step: y_{t−1} (B,), s_{t−1} (B, hidden) -> (logits (B, vocab), s_t, weights (B, Ls))."""
        e = self.embed(token)
        if self.attention is None:
            context, weights = encoder_final, None
        else:
            context, weights = self.attention(state, encoder_states, None, src_mask)[:2]
        state = self.cell(torch.cat([e, context], dim=-1), state)
        return self.out(torch.cat([state, context, e], dim=-1)), state, weights

    def forward(self, targets, encoder_states, src_mask=None, *, encoder_final=None):
        """Teacher forcing: targets y_0 … y_{T−1} (B, Lt), y_0 = BOS, the gold previous tokens.

        encoder_states (B, Ls, enc_dim), src_mask (B, Ls) bool padding mask or None,
        encoder_final (B, enc_dim) (default: :func:`final_state` of the encoder states) ->
        logits (B, Lt, vocab), where logits[:, t] scores y_{t+1}, and the attention weights
        (B, Lt, Ls) (None without attention).
        """
        _tokens(targets, "targets", self.vocab)
        state, final = self._start(targets.shape[0], encoder_states, src_mask, encoder_final)
        logits, weights = [], []
        for t in range(targets.shape[1]):
            out, state, w = self.step(targets[:, t], state, encoder_states, src_mask, final)
            logits.append(out)
            weights.append(w)
        if not logits:
            raise ValueError(f"targets must hold at least one step, got shape {tuple(targets.shape)}")
        return torch.stack(logits, 1), None if self.attention is None else torch.stack(weights, 1)

    @torch.no_grad()
    def generate(self, encoder_states, src_mask=None, *, bos, steps, encoder_final=None):
        """Greedy decoding from y_0 = bos: tokens (B, steps) and weights (B, steps, Ls) or None."""
        _checks.positive(steps, "steps", integer=True)
        batch = encoder_states.shape[0] if isinstance(encoder_states, torch.Tensor) else 0
        state, final = self._start(batch, encoder_states, src_mask, encoder_final)
        token = torch.full((batch,), bos, dtype=torch.long, device=encoder_states.device)
        _tokens(token[:, None], "bos", self.vocab)
        tokens, weights = [], []
        for _ in range(steps):
            out, state, w = self.step(token, state, encoder_states, src_mask, final)
            token = out.argmax(-1)
            tokens.append(token)
            weights.append(w)
        return torch.stack(tokens, 1), None if self.attention is None else torch.stack(weights, 1)
