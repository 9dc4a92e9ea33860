"""Speech and music: alignments in time (§4.5).

Two experiments on generated data, small enough to train in seconds on a CPU.

**Listen, Attend and Spell** (Chan et al., 2016; attention for speech, Chorowski et al., 2015).
:func:`make_utterances` synthesises "speech": a run of symbols, each sounded as a *formant
pair* (two sinusoids) of random length, with small silent gaps and noise, at 4 kHz, and
turns it into log-spectrogram frames. :class:`LAS` reads the frames with a pyramidal
bidirectional GRU (the *listener*, which halves the number of frames per pyramid layer) and
writes the symbols with a GRU *speller* that attends to the listener's states with Bahdanau
attention (:class:`attnbook.rnn.BahdanauAttention`). :func:`forward_share` and
:func:`mass_in_segment` measure how monotonic and how well placed its alignment is.

**Music Transformer** (Huang et al., 2019) with Shaw et al.'s (2018) relative positions.
:func:`relative_logits` computes S_rel[i, j] = q_i · E[j − i + L − 1] for j ≤ i by *skewing*
Q Eᵀ (pad, reshape, slice), in O(L·d) extra memory instead of the O(L²·d) of the gathered
table of :func:`attnbook.positions.relative_attention`. :func:`make_melodies` writes melodies
in AABA form behind an intro of random length, and :class:`MelodyTransformer` is a tiny
causal decoder with absolute (learned) or relative positions.

Token ids of the speller follow :mod:`attnbook.seq2seq`: PAD = 0, BOS = 1, EOS = 2, and
symbol k of :data:`SYMBOLS` is id 3 + k.

References (book/references.bib): chan2016listen, chorowski2015attention, huang2019music,
shaw2018self.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .rnn import BahdanauAttention
from .seq2seq import BOS, EOS, PAD, SPECIALS, bahdanau_step
from .softmax import masked_softmax
from .transformer import FeedForward

SAMPLE_RATE = 4000            # Hz: formants up to 2 kHz fit below the Nyquist frequency
N_FFT, HOP = 128, 64          # 32 ms windows, one frame every 16 ms: 62.5 frames per second
SYMBOLS = "aeiou"
# (F1, F2) in Hz: rough first two formants of five vowels, kept below 2 kHz.
FORMANTS = {"a": (730, 1090), "e": (530, 1840), "i": (300, 1950), "o": (570, 840), "u": (300, 870)}


def _int(value, name, minimum=1):
    return _checks.integer(value, name, minimum)


# ---------------------------------------------------------------- synthetic speech

def synthesize(symbols, generator=None, *, sample_rate=SAMPLE_RATE, noise=0.05):
    """Waveform of a run of symbols: each a formant pair, with gaps and noise (§4.5).

    Symbol s sounds for a random 70–150 ms as x(t) = a·(sin 2πF1 t + ½ sin 2πF2 t)·w(t), with
    (F1, F2) = FORMANTS[s], a random amplitude a ∈ [0.5, 1] and w a linear 10 ms fade in and out;
    a silent gap of 10–40 ms precedes every symbol and follows the last one; Gaussian noise of
    std ``noise`` covers everything. ``symbols``: a string over :data:`SYMBOLS`.
    Returns (wave (N,), spans (n, 2)): the start and end sample of each symbol.
    Cost O(N), about 0.12·sample_rate samples per symbol.
    """
    if not isinstance(symbols, str) or not symbols or any(s not in FORMANTS for s in symbols):
        raise ValueError(f"symbols must be a non-empty string over {SYMBOLS!r}, got {symbols!r}")
    g = _checks.generator(generator, default_seed=0)
    rate = _int(sample_rate, "sample_rate", 2 * max(max(f) for f in FORMANTS.values()) + 1)
    n = len(symbols)
    r = torch.rand(n + 1, 3, generator=g, dtype=torch.float64)        # gap, duration, amplitude
    gaps = ((0.01 + 0.03 * r[:, 0]) * rate).long().tolist()            # before each symbol, and after the last
    durations = ((0.07 + 0.08 * r[:n, 1]) * rate).long().tolist()
    amplitudes = 0.5 + 0.5 * r[:n, 2].float()
    # segments alternate gap, symbol, gap, …, symbol, gap; every sample learns its segment
    lengths = torch.tensor([x for pair in zip(gaps, durations) for x in pair] + [gaps[-1]])
    owner = torch.where(torch.arange(2 * n + 1).remainder(2).bool(), torch.arange(2 * n + 1) // 2, -1)
    owner = torch.repeat_interleave(owner, lengths)                    # symbol index per sample, −1 in gaps
    starts = torch.cumsum(lengths, 0) - lengths
    local = torch.arange(len(owner)) - torch.repeat_interleave(starts, lengths)   # samples since the segment began
    length = torch.repeat_interleave(lengths, lengths)
    fade = int(0.01 * rate)
    ramp = torch.minimum(local + 1, length - local).clamp(max=fade) / fade
    formants = torch.tensor([FORMANTS[c] for c in symbols], dtype=torch.float32)
    k = owner.clamp(min=0)
    t = local / rate
    tone = torch.sin(2 * math.pi * formants[k, 0] * t) + 0.5 * torch.sin(2 * math.pi * formants[k, 1] * t)
    wave = torch.where(owner >= 0, amplitudes[k] * ramp * tone, 0.0)
    sym_starts = starts[1::2]
    spans = torch.stack([sym_starts, sym_starts + lengths[1::2]], 1)
    return wave + noise * torch.randn(wave.shape, generator=g), spans


def log_spectrogram(wave, *, n_fft=N_FFT, hop=HOP):
    """Frames of log power: X = STFT(wave) with a Hann window, F = log(|X|² + 10⁻³) (§4.5).

    wave (N,) or (B, N) -> (frames, n_fft/2 + 1) or (B, frames, n_fft/2 + 1), frames =
    1 + N // hop (torch.stft with center=True, reflect padding). Cost O(N·log n_fft).
    """
    _checks.tensor(wave, "wave", min_dim=1)
    if wave.dim() > 2:
        raise ValueError(f"wave must have shape (N,) or (B, N), got {tuple(wave.shape)}")
    n_fft, hop = _int(n_fft, "n_fft", 2), _int(hop, "hop")
    if wave.shape[-1] <= n_fft // 2:
        raise ValueError(f"wave has {wave.shape[-1]} samples, too few for n_fft={n_fft}")
    spec = torch.stft(wave, n_fft, hop_length=hop, window=torch.hann_window(n_fft, dtype=wave.dtype),
                      return_complex=True)
    return torch.log(spec.abs() ** 2 + 1e-3).transpose(-2, -1)


class Utterances(NamedTuple):
    """A padded batch of synthetic utterances (§4.5).

    frames (B, T, F): normalised log-spectrogram frames, then zeros; frame_mask (B, T): True on
    real frames; tgt_in (B, Lt) = BOS y_1 … y_n then PAD; tgt_out (B, Lt) = y_1 … y_n EOS then
    PAD; spans (B, Lt − 1, 2): first and last + 1 frame of each symbol (−1 for padding);
    lengths (B,): the number of symbols n; waves: the list of the B waveforms; texts: the B
    symbol strings.
    """

    frames: torch.Tensor
    frame_mask: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    spans: torch.Tensor
    lengths: torch.Tensor
    waves: list
    texts: list


def make_utterances(batch, min_len=4, max_len=8, *, generator=None, noise=0.05):
    """``batch`` random utterances of ``min_len``…``max_len`` symbols, ready for :class:`LAS` (§4.5).

    Symbols are drawn uniformly from :data:`SYMBOLS`, sounded by :func:`synthesize` and turned
    into :func:`log_spectrogram` frames (one STFT over the zero-padded batch), standardised with fixed constants, (F + 2) / 2.5, so
    that every batch is scaled alike. A symbol's frame span covers the frames whose centre
    lies inside its samples. Returns :class:`Utterances`. Cost O(B·max_len) symbols of
    about 120 ms each, a few milliseconds per utterance.
    """
    batch = _int(batch, "batch")
    min_len = _int(min_len, "min_len")
    max_len = _int(max_len, "max_len", min_len)
    g = _checks.generator(generator, default_seed=0)
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=g)
    texts = ["".join(SYMBOLS[i] for i in torch.randint(len(SYMBOLS), (int(n),), generator=g)) for n in lengths]
    waves, spans = [], []
    for text in texts:
        wave, span = synthesize(text, g, noise=noise)
        waves.append(wave)
        spans.append(torch.stack([(span[:, 0] + HOP - 1) // HOP, span[:, 1] // HOP + 1], 1))  # centres t·HOP inside
    padded = nn.utils.rnn.pad_sequence(waves, batch_first=True)       # one STFT for the batch
    feats = [f[:1 + len(w) // HOP] for f, w in zip((log_spectrogram(padded) + 2.0) / 2.5, waves)]
    T, lt = max(len(f) for f in feats), int(lengths.max()) + 1
    frames = torch.zeros(batch, T, feats[0].shape[-1])
    frame_mask = torch.zeros(batch, T, dtype=torch.bool)
    tgt_in = torch.full((batch, lt), PAD)
    tgt_out = torch.full((batch, lt), PAD)
    span_t = torch.full((batch, lt - 1, 2), -1)
    for b, (text, f, span) in enumerate(zip(texts, feats, spans)):
        ids = torch.tensor([SPECIALS + SYMBOLS.index(s) for s in text])
        frames[b, :len(f)], frame_mask[b, :len(f)] = f, True
        tgt_in[b, :len(ids) + 1] = torch.cat([torch.tensor([BOS]), ids])
        tgt_out[b, :len(ids) + 1] = torch.cat([ids, torch.tensor([EOS])])
        span_t[b, :len(ids)] = span
    return Utterances(frames, frame_mask, tgt_in, tgt_out, span_t, lengths, waves, texts)


def decode_symbols(ids):
    """Symbol ids (a 1-D tensor or list) -> the string of symbols before the first EOS or PAD."""
    out = []
    for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
        if i in (EOS, PAD):
            break
        out.append(SYMBOLS[i - SPECIALS] if SPECIALS <= i < SPECIALS + len(SYMBOLS) else "?")
    return "".join(out)


# ---------------------------------------------------------------- Listen, Attend and Spell

class Listener(nn.Module):
    """A pyramidal bidirectional GRU (Chan et al., 2016): h^j_u = BiGRU(h^j_{u−1}, [h^{j−1}_{2u}; h^{j−1}_{2u+1}]).

    Each of the ``pyramid`` layers concatenates neighbouring pairs of its inputs (the frames,
    for the first layer) and reads them with its own bidirectional GRU, so the listener's
    states are 2^pyramid times fewer than the frames; ``pyramid=0`` is one BiGRU over the
    frames. (Chan et al. put one more BLSTM below the first concatenation; we save its time.)
    frames (B, T, F), mask (B, T) -> states (B, ⌈T / 2^p⌉, 2·hidden), mask (B, ⌈T / 2^p⌉) (a
    pair is real when either frame is; padded frames are zeroed first). Padded steps are
    skipped (packed sequences).
    Cost O(T·hidden·(F + hidden)) for the first layer, halving with every layer above it.
    """

    def __init__(self, features, hidden, pyramid=1):
        super().__init__()
        self.features, self.hidden = _int(features, "features"), _int(hidden, "hidden")
        self.pyramid = _int(pyramid, "pyramid", 0)
        widths = [features * (2 if pyramid else 1)] + [4 * hidden] * max(pyramid - 1, 0)
        self.layers = nn.ModuleList(nn.GRU(w, hidden, batch_first=True, bidirectional=True) for w in widths)

    @staticmethod
    def _run(gru, x, mask):
        lengths = mask.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = gru(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

    def forward(self, frames, mask):
        _checks.tensor(frames, "frames", min_dim=3)
        if frames.dim() != 3 or frames.shape[-1] != self.features:
            raise ValueError(f"frames must have shape (B, T, {self.features}), got {tuple(frames.shape)}")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != frames.shape[:2]:
            raise ValueError(f"mask must be a boolean tensor of shape {tuple(frames.shape[:2])}, got "
                             f"{getattr(mask, 'shape', type(mask).__name__)}")
        if not mask[:, 0].all():
            raise ValueError("every utterance needs at least one real frame, at the start (mask[:, 0])")
        h = frames.masked_fill(~mask[..., None], 0.0)                  # padding carries nothing
        for gru in self.layers:
            if self.pyramid:
                if h.shape[1] % 2:                                    # pad to an even length
                    h, mask = F.pad(h, (0, 0, 0, 1)), F.pad(mask, (0, 1))
                h = h.reshape(h.shape[0], h.shape[1] // 2, 2 * h.shape[2])  # [h_2u; h_2u+1]
                mask = mask.reshape(mask.shape[0], -1, 2).any(-1)
            h = self._run(gru, h, mask).masked_fill(~mask[..., None], 0.0)
        return h, mask


class LAS(nn.Module):
    """Listen, Attend and Spell (Chan et al., 2016) at a toy scale (§4.5).

    h = Listener(x); at step i the speller reads c_i = Σ_u α_iu h_u with
    α_i = softmax_u vᵀ tanh(W s_{i−1} + U h_u) (Bahdanau attention, as in Chorowski et al.,
    2015), updates s_i = GRUCell([emb(y_{i−1}); c_i], s_{i−1}) from s_0 = 0 and scores the next
    symbol from [s_i; c_i]. forward(frames (B, T, F), frame_mask (B, T), tgt_in (B, Lt)) ->
    logits (B, Lt, vocab), weights (B, Lt, U) with U = ⌈T / 2^pyramid⌉ listener states.
    Cost per utterance O(T·hidden²) to listen and O(Lt·U·attn_dim) to attend.
    """

    def __init__(self, features, vocab=SPECIALS + len(SYMBOLS), *, hidden=32, emb=16, attn_dim=32, pyramid=1):
        super().__init__()
        self.vocab = _int(vocab, "vocab", SPECIALS + 1)
        self.listener = Listener(features, hidden, pyramid)
        self.embed = nn.Embedding(vocab, emb)
        self.attention = BahdanauAttention(hidden, 2 * hidden, _int(attn_dim, "attn_dim"))
        self.cell = nn.GRUCell(emb + 2 * hidden, hidden)
        self.out = nn.Linear(3 * hidden, vocab)

    def _spell(self, states, mask, tgt_in=None, steps=None):
        keys = self.attention.score.w_key(states)                     # U h_u, once per utterance
        state = states.new_zeros(states.shape[0], self.cell.hidden_size)
        token = torch.full((states.shape[0],), BOS, dtype=torch.long, device=states.device)
        logits, weights = [], []
        for i in range(tgt_in.shape[1] if tgt_in is not None else steps):
            context, a = bahdanau_step(self.attention, state, states, mask, keys)
            e = self.embed(tgt_in[:, i] if tgt_in is not None else token)
            state = self.cell(torch.cat([e, context], -1), state)
            logits.append(self.out(torch.cat([state, context], -1)))
            weights.append(a)
            token = logits[-1].argmax(-1)
        return torch.stack(logits, 1), torch.stack(weights, 1)

    def forward(self, frames, frame_mask, tgt_in):
        if not isinstance(tgt_in, torch.Tensor) or tgt_in.dtype != torch.long or tgt_in.dim() != 2 \
                or tgt_in.shape[0] != frames.shape[0]:
            raise ValueError(f"tgt_in must be int64 of shape (B, Lt) with B = {frames.shape[0]}, got "
                             f"{getattr(tgt_in, 'shape', type(tgt_in).__name__)}")
        states, mask = self.listener(frames, frame_mask)
        return self._spell(states, mask, tgt_in=tgt_in)

    @torch.no_grad()
    def greedy(self, frames, frame_mask, steps):
        """Greedy decoding for ``steps`` steps: (ids (B, steps), weights (B, steps, U))."""
        was = self.training
        self.eval()
        states, mask = self.listener(frames, frame_mask)
        logits, weights = self._spell(states, mask, steps=_int(steps, "steps"))
        self.train(was)
        return logits.argmax(-1), weights


def las_loss(model, batch):
    """Cross-entropy of the next symbol under teacher forcing, PAD ignored (§4.5).

    model: a :class:`LAS`; batch: :class:`Utterances` -> scalar. Cost: one forward pass.
    """
    logits, _ = model(batch.frames, batch.frame_mask, batch.tgt_in)
    return F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD)


def edit_distance(a, b):
    """Levenshtein distance between sequences a and b: insertions, deletions, substitutions (§4.5).

    d[i][j] = min(d[i−1][j] + 1, d[i][j−1] + 1, d[i−1][j−1] + [a_i ≠ b_j]). Cost O(|a|·|b|).
    """
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def symbol_error_rate(hypotheses, references):
    """SER = Σ edit_distance(hyp, ref) / Σ |ref| over a list of strings (§4.5); the speech
    recognisers' word error rate, counted in symbols. Returns a float ≥ 0 (it can exceed 1)."""
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"need as many hypotheses as references (at least one), got "
                         f"{len(hypotheses)} and {len(references)}")
    return sum(edit_distance(h, r) for h, r in zip(hypotheses, references)) / sum(len(r) for r in references)


def _check_alignment(weights, lengths):
    _checks.tensor(weights, "weights", min_dim=3)
    if weights.dim() != 3:
        raise ValueError(f"weights must have shape (B, steps, U), got {tuple(weights.shape)}")
    if not isinstance(lengths, torch.Tensor) or lengths.shape != weights.shape[:1]:
        raise ValueError(f"lengths must be a tensor of shape ({weights.shape[0]},), got "
                         f"{getattr(lengths, 'shape', type(lengths).__name__)}")
    if (lengths < 1).any() or (lengths > weights.shape[1]).any():
        raise ValueError(f"lengths must lie in 1..steps = 1..{weights.shape[1]}, got {lengths.tolist()}")


def forward_share(weights, lengths):
    """Share of steps whose attention peak moves forward: mean over utterances and i = 2…n of
    [argmax_u α_iu > argmax_u α_{i−1,u}] (§4.5).

    weights (B, steps, U), lengths (B,) = n, the symbol steps to score (the EOS step is left
    out). 1 for a strictly monotonic alignment, about ½ for peaks in random order.
    Cost O(B·steps·U).
    """
    _check_alignment(weights, lengths)
    peak = weights.argmax(-1)                                         # (B, steps)
    moves = (peak[:, 1:] > peak[:, :-1]).float()
    valid = torch.arange(1, weights.shape[1])[None] < lengths[:, None]
    return (moves * valid).sum().item() / max(valid.sum().item(), 1)


def mass_in_segment(weights, spans, lengths, *, reduction=2):
    """Mean attention weight inside the symbol's own frames: (1/N) Σ_b Σ_{i<n_b} Σ_{u ∈ seg(b, i)} α_biu (§4.5).

    weights (B, steps, U) over listener states; spans (B, ≥ n, 2): first and last + 1 input
    frame of each symbol (:class:`Utterances`); listener state u covers input frames
    u·r … u·r + r − 1 with r = ``reduction`` = 2^pyramid, and belongs to the segment when it
    overlaps the symbol's frames. 1 when every step looks only at its own symbol; about the
    share of frames a symbol occupies for uniform attention. Cost O(B·steps·U).
    """
    _check_alignment(weights, lengths)
    r = _int(reduction, "reduction")
    u = torch.arange(weights.shape[-1])
    lo, hi = spans[..., 0, None], spans[..., 1, None]                   # (B, n, 1)
    inside = (u * r + r > lo) & (u * r < hi)                           # (B, n, U) overlaps
    n = spans.shape[1]
    valid = torch.arange(n)[None] < lengths[:, None]
    mass = (weights[:, :n] * inside).sum(-1)
    return (mass * valid).sum().item() / valid.sum().item()


# ---------------------------------------------------------------- Music Transformer

def relative_logits(query, table):
    """S_rel[..., i, j] = q_i · E[j − i + L − 1] for j ≤ i, 0 for j > i, by skewing (Huang et al., 2019).

    query (..., L, d), table E (L, d) or broadcasting (..., L, d): row r holds the embedding of
    the offset r − (L − 1), so the last row is offset 0 (the query itself) and the first is
    −(L − 1). Skewing: Q Eᵀ (..., L, L) holds q_i · E_r at [i, r]; pad one zero column on the
    left (..., L, L + 1), reshape to (..., L + 1, L), drop the first row: entry [i, j] is then
    q_i · E[j − i + L − 1]. Extra memory O(L·d) for E and O(L²) for the logits, instead of the
    O(L²·d) of the gathered (L, L, d) table of Shaw et al. (2018). Cost O(L²·d) time. §4.5.
    """
    _checks.tensor(query, "query", min_dim=2)
    _checks.tensor(table, "table", min_dim=2)
    _checks.same_kind({"query": query, "table": table})
    L, d = query.shape[-2:]
    if table.shape[-2:] != (L, d):
        raise ValueError(f"table must have shape (..., L, d) = (..., {L}, {d}) to match query "
                         f"{tuple(query.shape)}, got {tuple(table.shape)}")
    qe = query @ table.transpose(-2, -1)                                # (..., L, L): [i, r] = q_i · E_r
    padded = F.pad(qe, (1, 0))                                         # (..., L, L + 1)
    skewed = padded.reshape(*padded.shape[:-2], L + 1, L)[..., 1:, :]  # (..., L, L)
    return skewed.masked_fill(torch.ones(L, L, dtype=torch.bool, device=query.device).triu(1), 0.0)


def gathered_table(table):
    """Shaw et al.'s gathered table R[i, j] = E[clip(j − i + L − 1, 0, L − 1)], (..., L, L, d) (§4.5).

    What :func:`attnbook.positions.relative_attention` takes as ``rel_k`` for the causal table
    E (..., L, d) of :func:`relative_logits` (keys j > i get offset 0: they are masked anyway).
    Memory O(L²·d): the cost that skewing avoids.
    """
    _checks.tensor(table, "table", min_dim=2)
    L = table.shape[-2]
    index = (torch.arange(L)[None] - torch.arange(L)[:, None] + L - 1).clamp(0, L - 1)
    return table[..., index, :]


def relative_memory(length, dim):
    """Numbers of floats of the relative-position intermediates per head (§4.5).

    Returns {"gathered": L²·d (Shaw et al.'s (L, L, d) table), "skewed": L·d + L·(L + 1)
    (the table E and the padded product Q Eᵀ)}.
    """
    L, d = _int(length, "length"), _int(dim, "dim")
    return {"gathered": L * L * d, "skewed": L * d + L * (L + 1)}


class RelativeSelfAttention(nn.Module):
    """Causal multi-head self-attention with optional relative positions (Huang et al., 2019).

    e_ij = (q_i · k_j + q_i · E^h[j − i + L − 1]) / √d_h for j ≤ i, a_ij = softmax_j e_ij,
    y_i = W_o [Σ_j a_ij v_j]_heads. Each head h has its own table E^h of ``max_length``
    vectors (offsets −(max_length − 1) … 0); a sequence of length L ≤ max_length uses the last
    L. With ``relative=False`` the E term is dropped (plain causal attention).
    x (B, L, E) -> y (B, L, E), weights (B, heads, L, L). Cost O(L²·E) time, O(L²·heads + L·E)
    memory for the relative term (skewing, :func:`relative_logits`).
    """

    def __init__(self, embed_dim, heads, max_length, *, relative=True):
        super().__init__()
        self.embed_dim, self.heads = _int(embed_dim, "embed_dim"), _int(heads, "heads")
        if embed_dim % heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by heads={heads}")
        self.max_length = _int(max_length, "max_length")
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        d = embed_dim // heads
        self.table = nn.Parameter(torch.randn(heads, max_length, d) * d ** -0.5) if relative else None

    def forward(self, x):
        _checks.tensor(x, "x", min_dim=3)
        B, L, E = x.shape
        if E != self.embed_dim or L > self.max_length:
            raise ValueError(f"x must have shape (B, L ≤ {self.max_length}, {self.embed_dim}), got {tuple(x.shape)}")
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)   # (B, h, L, d)
        scores = q @ k.transpose(-2, -1)
        if self.table is not None:
            scores = scores + relative_logits(q, self.table[:, -L:])
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        weights = masked_softmax(scores / math.sqrt(q.shape[-1]), causal)
        y = (weights @ v).transpose(1, 2).reshape(B, L, E)
        return self.proj(y), weights


class MelodyTransformer(nn.Module):
    """A tiny causal decoder for next-note prediction, absolute or relative positions (§4.5).

    x_0 = emb(note) (+ P[position], learned, when ``positions="absolute"``); each of ``layers``
    pre-norm blocks computes x ← x + Attn(LN x), x ← x + FFN(LN x), with
    :class:`RelativeSelfAttention` (relative term only when ``positions="relative"``);
    logits = W LN(x). notes (B, L) int64 -> logits (B, L, vocab), [weights (B, h, L, L) per
    layer]. Cost O(layers·L²·E) per sequence.
    """

    POSITIONS = ("absolute", "relative")

    def __init__(self, vocab, max_length, *, embed_dim=32, heads=2, layers=2, positions="relative"):
        super().__init__()
        if positions not in self.POSITIONS:
            raise ValueError(f"positions must be one of {self.POSITIONS}, got {positions!r}")
        self.vocab, self.positions = _int(vocab, "vocab", 2), positions
        self.embed = nn.Embedding(vocab, embed_dim)
        self.position = nn.Embedding(max_length, embed_dim) if positions == "absolute" else None
        self.attn = nn.ModuleList(RelativeSelfAttention(embed_dim, heads, max_length,
                                                        relative=positions == "relative") for _ in range(layers))
        self.ff = nn.ModuleList(FeedForward(embed_dim, 2 * embed_dim) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in range(2 * layers + 1))
        self.out = nn.Linear(embed_dim, vocab)

    def forward(self, notes):
        if not isinstance(notes, torch.Tensor) or notes.dtype != torch.long or notes.dim() != 2:
            raise ValueError(f"notes must be int64 of shape (B, L), got {getattr(notes, 'shape', type(notes).__name__)}")
        if notes.numel() and (notes.min() < 0 or notes.max() >= self.vocab):
            raise ValueError(f"notes must lie in 0..{self.vocab - 1}, got {notes.min().item()}..{notes.max().item()}")
        x = self.embed(notes)
        if self.position is not None:
            x = x + self.position(torch.arange(notes.shape[1], device=notes.device))
        weights = []
        for i, (attn, ff) in enumerate(zip(self.attn, self.ff)):
            y, w = attn(self.norms[2 * i](x))
            x = x + y
            x = x + ff(self.norms[2 * i + 1](x))
            weights.append(w)
        return self.out(self.norms[-1](x)), weights


class Melodies(NamedTuple):
    """A batch of melodies (§4.5): notes (B, L) int64 pitches 0…vocab − 1; part (B, L) int64, the
    section of each note (0 intro or tail, 1 first A, 2 second A, 3 B, 4 last A); start (B,)
    where the first A begins."""

    notes: torch.Tensor
    part: torch.Tensor
    start: torch.Tensor


def make_melodies(batch, *, motif=8, vocab=12, intro=None, length=None, generator=None):
    """Melodies in AABA form behind an intro of random length (§4.5).

    An intro of s random notes, s uniform in ``intro`` = (lo, hi) inclusive (default
    (0, motif − 1)), then A, A, B, A (A and B: ``motif`` random notes each), then random
    notes up to ``length`` (default hi + 4·motif). Notes are uniform
    over 0…vocab − 1. Only the repeats of A can be predicted: note t of the second A equals
    note t − motif, note t of the last A equals note t − 2·motif. Returns :class:`Melodies`.
    Cost O(B·length).
    """
    batch, motif, vocab = _int(batch, "batch"), _int(motif, "motif", 2), _int(vocab, "vocab", 2)
    lo, hi = (0, motif - 1) if intro is None else intro
    lo, hi = _int(lo, "intro[0]", 0), _int(hi, "intro[1]", lo)
    length = hi + 4 * motif if length is None else _int(length, "length", hi + 4 * motif)
    g = _checks.generator(generator, default_seed=0)
    notes = torch.randint(vocab, (batch, length), generator=g)
    a = torch.randint(vocab, (batch, motif), generator=g)
    start = torch.randint(lo, hi + 1, (batch,), generator=g)
    part = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        s = int(start[b])
        for k, section in enumerate((1, 2, 3, 4)):
            where = slice(s + k * motif, s + (k + 1) * motif)
            part[b, where] = section
            if section != 3:
                notes[b, where] = a[b]
    return Melodies(notes, part, start)


def melody_loss(model, melodies):
    """Mean cross-entropy of the next note over all positions (§4.5): −(1/N) Σ log p(x_{t+1} | x_≤t)."""
    logits, _ = model(melodies.notes[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), melodies.notes[:, 1:].flatten())


@torch.no_grad()
def accuracy_by_part(model, melodies):
    """Next-note accuracy on each section (§4.5): {"random": intro, first A, B and tail,
    "second A": notes 2…motif of the second A, "last A": notes 2…motif of the last A}.
    The first note of a repeat is left out: nothing tells the model that the repeat starts."""
    was = model.training
    model.eval()
    logits, _ = model(melodies.notes[:, :-1])
    model.train(was)
    hit = logits.argmax(-1) == melodies.notes[:, 1:]
    part = melodies.part[:, 1:]
    first = torch.zeros_like(part, dtype=torch.bool)
    first[:, 1:] = part[:, 1:] != part[:, :-1]
    first[:, 0] = True
    masks = {"random": (part == 0) | (part == 1) | (part == 3),
             "second A": (part == 2) & ~first, "last A": (part == 4) & ~first}
    return {name: hit[m].float().mean().item() for name, m in masks.items()}
