"""Toy sequence-to-sequence tasks and an RNN encoder-decoder with or without attention (§1.2).

The experiment of §1.2: the same bidirectional-GRU encoder and GRU decoder, once reading the
source only through the encoder's final state (the fixed-size bottleneck of Cho et al., 2014
and Sutskever et al., 2014) and once through Bahdanau attention over all encoder states.

Token ids: ``PAD`` = 0, ``BOS`` = 1, ``EOS`` = 2; the symbols are 3 … vocab − 1. A source is a
run of random symbols padded at the end with PAD; its target is the source reversed (or
copied), followed by EOS. Padding masks are boolean, True = real token.
"""
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .rnn import AttentionDecoder, BahdanauAttention, RNNEncoder

PAD, BOS, EOS = 0, 1, 2
SPECIALS = 3  # ids below this are PAD, BOS, EOS
TASKS = ("reverse", "copy")
SPECIAL_LABELS = {PAD: "·", BOS: "<s>", EOS: "</s>"}


class Batch(NamedTuple):
    """A padded batch of a toy task (int64 ids on the CPU).

    src (B, Ls): symbols, then PAD; src_mask (B, Ls): True on the real tokens;
    tgt_in (B, Lt) = BOS y_1 … y_n, then PAD (the decoder's inputs under teacher forcing);
    tgt_out (B, Lt) = y_1 … y_n EOS, then PAD (what the decoder must predict);
    lengths (B,): the source lengths n. Ls = max n and Lt = Ls + 1.
    """

    src: torch.Tensor
    src_mask: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    lengths: torch.Tensor


def _int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _task(task):
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


def _model(model):
    if not isinstance(model, Seq2Seq):
        raise TypeError(f"model must be a Seq2Seq, got {type(model).__name__}")
    return model


def _tokens(tokens, name, vocab, batch=None):
    """Raise unless ``tokens`` is a (B, L) int64 tensor of ids in 0 … vocab − 1, L ≥ 1."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype != torch.long:
        raise TypeError(f"{name} must hold int64 token ids, got dtype {tokens.dtype}")
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, L) with L >= 1, got shape {tuple(tokens.shape)}")
    if batch is not None and tokens.shape[0] != batch:
        raise ValueError(f"{name} has batch size {tokens.shape[0]} but the source has {batch}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ValueError(f"{name} must hold ids in 0..{vocab - 1}, got {tokens.min().item()}.."
                         f"{tokens.max().item()}")


def _check_src(src, src_mask, vocab):
    """Raise unless src (B, Ls) and src_mask (B, Ls) form a padded batch."""
    _tokens(src, "src", vocab)
    if not isinstance(src_mask, torch.Tensor) or src_mask.dtype != torch.bool:
        raise TypeError(f"src_mask must be a boolean tensor (True = real token), got "
                        f"{getattr(src_mask, 'dtype', type(src_mask).__name__)}")
    if src_mask.shape != src.shape:
        raise ValueError(f"src_mask has shape {tuple(src_mask.shape)} but src has {tuple(src.shape)}")


def target_of(symbols, task="reverse"):
    """The target of one source: its symbols reversed (``"reverse"``) or unchanged (``"copy"``).

    symbols (n,) -> (n,). Explained in §1.2.
    """
    return symbols.flip(0) if _task(task) == "reverse" else symbols.clone()


def make_batch(batch, min_len, max_len=None, *, vocab, task="reverse", generator=None):
    """``batch`` random sources with lengths uniform in min_len … max_len, and their targets.

    Symbols are uniform over 3 … vocab − 1 (repeats allowed); ``max_len=None`` gives every
    source the length ``min_len``. The same ``generator`` state (a torch.Generator) gives
    the same batch. Returns a :class:`Batch` with Ls = the longest source and Lt = Ls + 1.
    Cost O(batch · max_len). Explained in §1.2.
    """
    batch = _int(batch, "batch", 1)
    min_len = _int(min_len, "min_len", 1)
    max_len = min_len if max_len is None else _int(max_len, "max_len", 1)
    if max_len < min_len:
        raise ValueError(f"max_len must be >= min_len, got min_len={min_len}, max_len={max_len}")
    vocab = _int(vocab, "vocab", SPECIALS + 1)
    _task(task)
    _checks.generator(generator)
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=generator)
    longest = int(lengths.max())
    symbols = torch.randint(SPECIALS, vocab, (batch, longest), generator=generator)
    src_mask = torch.arange(longest) < lengths[:, None]
    src = symbols.masked_fill(~src_mask, PAD)
    tgt_in = torch.full((batch, longest + 1), PAD, dtype=torch.long)
    tgt_out = torch.full((batch, longest + 1), PAD, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        y = target_of(src[b, :n], task)
        tgt_in[b, 0], tgt_in[b, 1:n + 1] = BOS, y
        tgt_out[b, :n], tgt_out[b, n] = y, EOS
    return Batch(src, src_mask, tgt_in, tgt_out, lengths)


def token_labels(ids):
    """Readable labels of token ids: symbols 3, 4, … as "a", "b", …, PAD "·", BOS "<s>", EOS "</s>".

    ids: a 1-D tensor or a list of ints -> list of str. Used in the plots of §1.2.
    """
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    labels = []
    for i in ids:
        if i in SPECIAL_LABELS:
            labels.append(SPECIAL_LABELS[i])
        else:
            labels.append(chr(ord("a") + i - SPECIALS) if i < SPECIALS + 26 else str(i))
    return labels


def bahdanau_step(attention, state, states, src_mask, projected_keys=None):
    """One decoder step of Bahdanau attention: the weights a_i and the context c_i.

    e_ij = vᵀ tanh(W s_{i−1} + U h_j),  a_ij = softmax_j(e_ij) over the real tokens,
    c_i = Σ_j a_ij h_j.
    attention: a :class:`~attnbook.rnn.BahdanauAttention` (holds W, U, v); state s_{i−1}
    (B, d_q); states h (B, Ls, d_k); src_mask (B, Ls), True on at least one token per row;
    projected_keys: U h (B, Ls, attn_dim), computed once per source and reused at every step
    (computed here when None) -> (context (B, d_k), weights (B, Ls)). Same result as
    ``attention(state, states, None, src_mask)``, without re-projecting the keys.
    Cost O(B·Ls·attn_dim) per step, plus O(B·Ls·d_k·attn_dim) once for U h. §1.2.
    """
    if not isinstance(attention, BahdanauAttention):
        raise TypeError(f"attention must be a BahdanauAttention, got {type(attention).__name__}")
    if projected_keys is None:
        projected_keys = attention.score.w_key(states)  # U h_j
    score = attention.score
    e = torch.tanh(projected_keys + score.w_query(state)[:, None]) @ score.v.weight[0]  # (B, Ls)
    a = e.masked_fill(~src_mask, float("-inf")).softmax(-1)
    return (a[:, None] @ states)[:, 0], a


class Seq2Seq(nn.Module):
    """An RNN encoder-decoder: a bidirectional GRU encoder and a GRU decoder (§1.2).

    With ``attention=True`` the decoder reads c_i = Σ_j a_ij h_j at every step, with
    a_ij = softmax_j vᵀ tanh(W s_{i−1} + U h_j) (Bahdanau et al., 2015); with
    ``attention=False`` it reads c_i = h_final = [h→_{n−1}; h←_0] at every step: one vector of
    2·hidden numbers, whatever the source length (Cho et al., 2014).
    The parameters are those of :class:`~attnbook.rnn.RNNEncoder` and
    :class:`~attnbook.rnn.AttentionDecoder`, and ``forward`` computes what they compute.
    src (B, Ls), src_mask (B, Ls), tgt_in (B, Lt) -> logits (B, Lt, vocab) and weights
    (B, Lt, Ls) (None without attention). Cost per sequence O(Ls·hidden·(emb + hidden)) in
    the encoder, O(Lt·hidden·(emb + hidden + vocab)) in the decoder, plus
    O(Ls·Lt·attn_dim + Ls·hidden·attn_dim) with attention.
    """

    def __init__(self, vocab, emb=32, hidden=64, *, attention=True, attn_dim=None):
        super().__init__()
        self.vocab = _int(vocab, "vocab", SPECIALS + 1)
        if not isinstance(attention, bool):
            raise TypeError(f"attention must be True or False, got {type(attention).__name__}")
        self.encoder = RNNEncoder(vocab, emb, hidden)
        enc_dim = 2 * hidden
        attn = BahdanauAttention(hidden, enc_dim, attn_dim or hidden) if attention else None
        self.decoder = AttentionDecoder(vocab, emb, hidden, enc_dim, attn)

    @property
    def has_attention(self):
        """Whether the decoder reads the encoder states through attention."""
        return self.decoder.attention is not None

    def forward(self, src, src_mask, tgt_in):
        """Teacher forcing: (logits (B, Lt, vocab), weights (B, Lt, Ls) or None).

        logits[:, i] scores the token after tgt_in[:, i]. Equal to
        ``self.decoder(tgt_in, states, src_mask, encoder_final=final)`` with
        ``states, final = self.encoder(src, src_mask)``, and faster: U h_j is computed once.
        """
        _check_src(src, src_mask, self.vocab)
        _tokens(tgt_in, "tgt_in", self.vocab, batch=src.shape[0])
        states, final = self.encoder(src, src_mask)
        return self._decode(states, src_mask, final, tgt_in=tgt_in)

    def _decode(self, states, src_mask, final, *, tgt_in=None, steps=None):
        """Decode on the gold inputs ``tgt_in`` (logits), or greedily for ``steps`` steps (tokens)."""
        dec, attn = self.decoder, self.decoder.attention
        state = torch.tanh(dec.init(final))  # s_0 = tanh(W_init h_final)
        projected_keys = None if attn is None else attn.score.w_key(states)  # U h_j, once
        if tgt_in is not None:
            inputs, steps = dec.embed(tgt_in).unbind(1), tgt_in.shape[1]
        token = torch.full((states.shape[0],), BOS, dtype=torch.long, device=states.device)
        features, weights, tokens = [], [], []
        for i in range(steps):
            e = inputs[i] if tgt_in is not None else dec.embed(token)
            if attn is None:
                context = final  # the same vector at every step: the bottleneck
            else:
                context, a = bahdanau_step(attn, state, states, src_mask, projected_keys)
                weights.append(a)
            state = dec.cell(torch.cat([e, context], dim=-1), state)
            features.append(torch.cat([state, context, e], dim=-1))
            if tgt_in is None:
                token = dec.out(features[-1]).argmax(-1)
                tokens.append(token)
        weights = torch.stack(weights, 1) if weights else None
        if tgt_in is None:
            return torch.stack(tokens, 1), weights
        return dec.out(torch.stack(features, 1)), weights


def sequence_loss(model, batch):
    """Mean cross-entropy of the next token under teacher forcing, PAD targets ignored.

    L = −(1/N) Σ_{b,i: y_bi ≠ PAD} log p(y_bi | y_b,<i, x_b), N the number of real target
    tokens (EOS included). model: a :class:`Seq2Seq`; batch: a :class:`Batch` -> scalar.
    Cost: one forward pass. Explained in §1.2.
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"batch must be a seq2seq.Batch, got {type(batch).__name__}")
    logits, _ = _model(model)(batch.src, batch.src_mask, batch.tgt_in)
    return F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD)


@torch.no_grad()
def greedy_decode(model, src, src_mask, steps):
    """Greedy decoding: y_i = argmax_y p(y | y_<i, x), from y_0 = BOS, for ``steps`` steps.

    src (B, Ls), src_mask (B, Ls) -> tokens (B, steps), PAD after each row's first EOS, and
    weights (B, steps, Ls), zero after the first EOS (None without attention).
    Cost: ``steps`` decoder steps. Explained in §1.2.
    """
    _model(model)
    steps = _int(steps, "steps", 1)
    _check_src(src, src_mask, model.vocab)
    was_training = model.training
    model.eval()
    states, final = model.encoder(src, src_mask)
    tokens, weights = model._decode(states, src_mask, final, steps=steps)
    model.train(was_training)
    is_eos = tokens == EOS
    after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    tokens = tokens.masked_fill(after, PAD)
    if weights is not None:
        weights = weights.masked_fill(after[..., None], 0.0)
    return tokens, weights


def accuracy_by_length(model, lengths, *, per_length=200, task="reverse", generator=None):
    """Greedy-decoding accuracy on ``per_length`` fresh sources of each length n in ``lengths``.

    Returns a dict of tensors (len(lengths),): "sequence", the fraction of sources whose whole
    output (n symbols, then EOS) is right; "token", the fraction of the n + 1 output
    positions that are right. Cost: per_length · len(lengths) greedy decodings of n + 1
    steps. Explained in §1.2.
    """
    _model(model)
    lengths = [_int(n, "lengths", 1) for n in lengths]
    if not lengths:
        raise ValueError("lengths must hold at least one length")
    sequence, token = [], []
    for n in lengths:
        b = make_batch(per_length, n, vocab=model.vocab, task=task, generator=generator)
        out, _ = greedy_decode(model, b.src, b.src_mask, n + 1)
        right = out == b.tgt_out
        sequence.append(right.all(1).float().mean())
        token.append(right.float().mean())
    return {"sequence": torch.stack(sequence), "token": torch.stack(token)}


@torch.no_grad()
def position_accuracy(model, batch):
    """Teacher-forced accuracy at each target position: is argmax p(y | y_<i, x) = y_i?

    batch: a :class:`Batch` -> (Lt,) the fraction of right predictions at each position i,
    over the rows whose target there is not PAD (NaN where every row is PAD). With gold
    previous tokens, an error at one position cannot cause the next: what the curve
    measures is how well each symbol was remembered. Cost: one forward pass. §1.2.
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"batch must be a seq2seq.Batch, got {type(batch).__name__}")
    was_training = _model(model).training
    model.eval()
    logits, _ = model(batch.src, batch.src_mask, batch.tgt_in)
    model.train(was_training)
    real = batch.tgt_out != PAD
    right = (logits.argmax(-1) == batch.tgt_out) & real
    return right.sum(0) / real.sum(0)


def encoder_jacobian_norms(encoder, src):
    """‖∂h_final / ∂x_j‖_F for each source position j, per direction of the encoder.

    h_final = [h→_{n−1}; h←_0] is the encoder's final state and x_j the embedding of token j.
    encoder: an :class:`~attnbook.rnn.RNNEncoder`; src (B, n) ids without padding ->
    (B, n, 2): the Frobenius norm of the Jacobian of the forward half h→_{n−1} ([..., 0])
    and of the backward half h←_0 ([..., 1]) with respect to x_j. A norm that shrinks
    with the distance from j to the end where a direction stops reading is the vanishing
    gradient of Bengio et al. (1994). Cost: one batched backward pass for the 2·hidden
    outputs, O(hidden · B · n · hidden · (emb + hidden)) time. Explained in §1.2.
    """
    if not isinstance(encoder, RNNEncoder):
        raise TypeError(f"encoder must be an RNNEncoder, got {type(encoder).__name__}")
    _tokens(src, "src", encoder.vocab)
    x = encoder.embed(src).detach().requires_grad_(True)
    _, last = encoder.rnn(x)  # last (2, B, hidden): forward h→_{n−1}, backward h←_0
    h = encoder.hidden
    # one backward pass per output unit k of each direction, batched: grad_outputs one-hot
    units = torch.eye(2 * h, dtype=x.dtype).reshape(2 * h, 2, 1, h).expand(2 * h, 2, src.shape[0], h)
    rows, = torch.autograd.grad(last, x, units, is_grads_batched=True)  # (2h, B, n, emb)
    squares = rows.pow(2).sum(-1).reshape(2, h, *src.shape).sum(1)  # (2, B, n)
    return squares.sqrt().permute(1, 2, 0)
