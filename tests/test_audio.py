"""Tests of attnbook.audio (§4.5): synthetic speech, LAS, alignment measures, skewing, melodies."""
import pytest
import torch

from attnbook.audio import (FORMANTS, HOP, LAS, SYMBOLS, Listener, MelodyTransformer, RelativeSelfAttention,
                            accuracy_by_part, decode_symbols, edit_distance, forward_share, gathered_table,
                            las_loss, log_spectrogram, make_melodies, make_utterances, mass_in_segment,
                            relative_logits, relative_memory, symbol_error_rate, synthesize)
from attnbook.positions import relative_attention
from attnbook.seq2seq import BOS, EOS, PAD, SPECIALS


def brute_relative_logits(query, table):
    L = query.shape[-2]
    out = torch.zeros(*query.shape[:-1], L, dtype=query.dtype)
    for i in range(L):
        for j in range(i + 1):
            out[..., i, j] = (query[..., i, :] * table[..., j - i + L - 1, :]).sum(-1)
    return out


@pytest.mark.parametrize("shape, table_shape", [((7, 5), (7, 5)), ((2, 3, 6, 4), (3, 6, 4)),
                                                ((2, 1, 9, 3), (9, 3))])
def test_relative_logits_match_a_brute_force_loop(shape, table_shape):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(*shape, generator=g, dtype=torch.float64)
    e = torch.randn(*table_shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(relative_logits(q, e), brute_relative_logits(q, e))


def test_skewed_attention_equals_shaw_relative_attention_under_a_causal_mask():
    g = torch.Generator().manual_seed(1)
    B, h, L, d, dv = 2, 3, 7, 4, 5
    q, k = (torch.randn(B, h, L, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, h, L, dv, generator=g, dtype=torch.float64)
    e = torch.randn(h, L, d, generator=g, dtype=torch.float64)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-2, -1) + relative_logits(q, e)) / d ** 0.5
    weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)
    for head in range(h):                    # relative_attention takes one (L, L, d) table: one head at a time
        out, w = relative_attention(q[:, head], k[:, head], v[:, head], gathered_table(e[head]), mask=causal)
        torch.testing.assert_close(w, weights[:, head])
        torch.testing.assert_close(out, weights[:, head] @ v[:, head])


def test_gathered_table_holds_the_offset_of_each_pair():
    e = torch.arange(5.0)[:, None]                                     # row r = offset r − 4
    r = gathered_table(e)[..., 0]
    assert r.shape == (5, 5)
    assert r[4, 0] == 0 and r[4, 4] == 4 and r[2, 1] == 3 and r[0, 3] == 4   # j > i clipped to offset 0


def test_relative_logits_reject_bad_input():
    q = torch.randn(2, 6, 4)
    with pytest.raises(ValueError, match="table must have shape"):
        relative_logits(q, torch.randn(5, 4))
    with pytest.raises(TypeError, match="dtype"):
        relative_logits(q, torch.randn(6, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="query"):
        relative_logits(q.long(), torch.randn(6, 4))


def test_relative_memory_counts():
    assert relative_memory(2048, 512) == {"gathered": 2048 * 2048 * 512, "skewed": 2048 * 512 + 2048 * 2049}


def test_relative_self_attention_is_causal_and_uses_the_table():
    torch.manual_seed(0)
    layer = RelativeSelfAttention(8, 2, 10)
    x = torch.randn(3, 6, 8)
    y, w = layer(x)
    assert y.shape == (3, 6, 8) and w.shape == (3, 2, 6, 6)
    assert torch.all(w.triu(1) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 6))
    x2 = x.clone()
    x2[:, 4:] += 1.0                                                   # the future does not change the past
    torch.testing.assert_close(layer(x2)[0][:, :4], y[:, :4])
    plain = RelativeSelfAttention(8, 2, 10, relative=False)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "table"})
    assert not torch.allclose(plain(x)[1], w)
    with pytest.raises(ValueError, match="L ≤ 10"):
        layer(torch.randn(1, 11, 8))
    with pytest.raises(ValueError, match="divisible"):
        RelativeSelfAttention(9, 2, 10)


def test_synthesize_places_the_formants_in_their_spans():
    wave, spans = synthesize("ai", torch.Generator().manual_seed(0), noise=0.0)
    assert spans.shape == (2, 2) and spans[0, 1] <= spans[1, 0] and spans[1, 1] <= len(wave)
    for (start, end), s in zip(spans.tolist(), "ai"):
        power = torch.fft.rfft(wave[start:end]).abs()
        freqs = torch.fft.rfftfreq(end - start, 1 / 4000)
        assert abs(freqs[power.argmax()].item() - FORMANTS[s][0]) < 40   # F1 is the strongest line
    assert wave[:spans[0, 0]].abs().max() == 0                           # a silent gap before
    with pytest.raises(ValueError, match="symbols"):
        synthesize("ax")


def test_log_spectrogram_matches_torch_stft():
    wave = torch.randn(2, 1000, generator=torch.Generator().manual_seed(0))
    spec = log_spectrogram(wave)
    want = torch.stft(wave, 128, hop_length=HOP, window=torch.hann_window(128), return_complex=True)
    assert spec.shape == (2, 1 + 1000 // HOP, 65)
    torch.testing.assert_close(spec, torch.log(want.abs().transpose(-2, -1) ** 2 + 1e-3))
    with pytest.raises(ValueError, match="shape"):
        log_spectrogram(torch.randn(1, 2, 500))


def test_make_utterances_targets_spans_and_masks():
    u = make_utterances(5, 2, 4, generator=torch.Generator().manual_seed(0))
    for b, text in enumerate(u.texts):
        n = len(text)
        assert u.lengths[b] == n and decode_symbols(u.tgt_out[b]) == text
        assert u.tgt_in[b, 0] == BOS and u.tgt_out[b, n] == EOS and (u.tgt_out[b, n + 1:] == PAD).all()
        assert u.frame_mask[b].sum() == 1 + len(u.waves[b]) // HOP
        spans = u.spans[b, :n]
        assert (spans[:, 0] < spans[:, 1]).all() and (spans[1:, 0] >= spans[:-1, 1]).all()
        assert (u.spans[b, n:] == -1).all()
    assert u.tgt_in[0, 1] == SPECIALS + SYMBOLS.index(u.texts[0][0])


def test_listener_halves_the_frames_and_ignores_padding():
    torch.manual_seed(0)
    listener = Listener(4, 3, pyramid=2)
    x = torch.randn(2, 9, 4)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    states, m = listener(x, mask)
    assert states.shape == (2, 3, 6) and m.tolist() == [[True] * 3, [True, True, False]]
    x2 = x.clone()
    x2[1, 5:] = 100.0                                                  # padding must not matter
    torch.testing.assert_close(listener(x2, mask)[0][1, :2], states[1, :2])
    with pytest.raises(ValueError, match="frames must have shape"):
        listener(torch.randn(2, 9, 5), mask)
    with pytest.raises(ValueError, match="mask"):
        listener(x, mask.float())


def test_las_shapes_loss_and_greedy():
    torch.manual_seed(0)
    u = make_utterances(3, 2, 3, generator=torch.Generator().manual_seed(1))
    model = LAS(u.frames.shape[-1], hidden=8, emb=4, attn_dim=8)
    logits, weights = model(u.frames, u.frame_mask, u.tgt_in)
    U = (u.frames.shape[1] + 1) // 2
    assert logits.shape == (3, u.tgt_in.shape[1], SPECIALS + len(SYMBOLS)) and weights.shape == (3, u.tgt_in.shape[1], U)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    assert las_loss(model, u).item() > 0
    ids, w = model.greedy(u.frames, u.frame_mask, 4)
    assert ids.shape == (3, 4) and w.shape == (3, 4, U)
    with pytest.raises(ValueError, match="tgt_in"):
        model(u.frames, u.frame_mask, u.tgt_in.float())


def test_edit_distance_and_symbol_error_rate():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert edit_distance("aei", "eia") == 2
    assert symbol_error_rate(["ae", "iou"], ["aei", "iou"]) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="hypotheses"):
        symbol_error_rate(["a"], ["a", "b"])


def test_alignment_measures_on_hand_made_alignments():
    diagonal = torch.eye(4)[None]                                      # step i looks at state i
    backwards = diagonal.flip(-1)
    lengths = torch.tensor([4])
    assert forward_share(diagonal, lengths) == 1.0 and forward_share(backwards, lengths) == 0.0
    assert forward_share(diagonal, torch.tensor([3])) == 1.0
    spans = torch.tensor([[[0, 2], [2, 4], [4, 6], [6, 8]]])          # frames; states cover 2 frames each
    assert mass_in_segment(diagonal, spans, lengths) == 1.0
    assert mass_in_segment(backwards, spans, lengths) == 0.0
    uniform = torch.full((1, 4, 4), 0.25)
    assert mass_in_segment(uniform, spans, lengths) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="lengths"):
        forward_share(diagonal, torch.tensor([5]))


def test_make_melodies_has_the_aaba_form():
    m = make_melodies(6, motif=4, vocab=7, intro=(1, 3), generator=torch.Generator().manual_seed(0))
    assert m.notes.shape == (6, 3 + 16) and m.notes.max() < 7
    for b in range(6):
        s = int(m.start[b])
        assert 1 <= s <= 3 and (m.part[b, :s] == 0).all()
        a = m.notes[b, s:s + 4]
        assert torch.equal(m.notes[b, s + 4:s + 8], a) and torch.equal(m.notes[b, s + 12:s + 16], a)
        assert m.part[b, s:s + 16].tolist() == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    with pytest.raises(ValueError, match="length"):
        make_melodies(2, motif=4, length=10)


def test_melody_transformer_shapes_and_bad_input():
    torch.manual_seed(0)
    m = make_melodies(4, motif=4, vocab=6, generator=torch.Generator().manual_seed(0))
    for positions in ("absolute", "relative"):
        model = MelodyTransformer(6, 20, embed_dim=8, heads=2, layers=2, positions=positions)
        logits, weights = model(m.notes)
        assert logits.shape == (4, m.notes.shape[1], 6) and len(weights) == 2
        assert set(accuracy_by_part(model, m)) == {"random", "second A", "last A"}
    with pytest.raises(ValueError, match="positions"):
        MelodyTransformer(6, 20, positions="rope")
    with pytest.raises(ValueError, match="notes must lie"):
        model(m.notes + 6)
