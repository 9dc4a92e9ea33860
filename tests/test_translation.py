"""attnbook.translation (§4.1): the date task against hand-written cases and brute-force loops,
the translator's masks and greedy decoding against teacher forcing, and bad input."""
import datetime

import pytest
import torch

from attnbook.translation import (BOS, EOS, PAD, SOURCE_CHARS, STYLES, TARGET_CHARS, DateBatch, DateTranslator,
                                  accuracies, alignment_mass, count_projected_rows, date_batch, decode, encode,
                                  field_alignment, format_date, iso_date, labels, ordinal_suffix, random_dates,
                                  translation_loss)

MARCH_3 = datetime.date(1998, 3, 3)


@pytest.mark.parametrize("style, text, fields", [
    ("long", "3 March 1998", ("1998", "March", "3")),
    ("us", "March 3, 1998", ("1998", "March", "3")),
    ("weekday", "Tuesday, March 3rd 1998", ("1998", "March", "3rd")),
    ("short", "3 Mar 1998", ("1998", "Mar", "3")),
    ("numeric", "03/03/98", ("98", "03", "03")),
])
def test_format_date_writes_each_style_with_the_spans_of_its_fields(style, text, fields):
    got, spans = format_date(MARCH_3, style)
    assert got == text
    assert tuple(got[slice(*spans[f])] for f in ("year", "month", "day")) == fields


def test_weekday_and_two_digit_years():
    assert format_date(datetime.date(2049, 12, 31), "weekday")[0] == "Friday, December 31st 2049"
    assert format_date(datetime.date(1950, 1, 1), "numeric")[0] == "01/01/50"
    assert format_date(datetime.date(2001, 11, 12), "numeric")[0] == "12/11/01"
    assert iso_date(datetime.date(2001, 11, 2)) == "2001-11-02"


def test_ordinal_suffix_against_the_english_rule():
    want = {1: "st", 2: "nd", 3: "rd", 4: "th", 11: "th", 12: "th", 13: "th", 21: "st", 22: "nd", 23: "rd",
            24: "th", 30: "th", 31: "st"}
    assert {d: ordinal_suffix(d) for d in want} == want


def test_random_dates_are_reproducible_and_in_range():
    a = random_dates(500, generator=torch.Generator().manual_seed(3))
    assert a == random_dates(500, generator=torch.Generator().manual_seed(3))
    assert min(a) >= datetime.date(1950, 1, 1) and max(a) <= datetime.date(2049, 12, 31)
    assert len({d.year for d in a}) > 50                      # spread over the century


def test_encode_decode_round_trip_and_labels():
    ids = encode(["12-03", "9"], TARGET_CHARS, bos=True, eos=True)
    assert ids.shape == (2, 7) and ids[0, 0] == BOS and ids[0, -1] == EOS and ids[1, 3:].tolist() == [PAD] * 4
    assert decode(ids, TARGET_CHARS) == ["12-03", "9"]
    assert labels(encode(["3 M"], SOURCE_CHARS)[0], SOURCE_CHARS) == ["3", "·", "M"]
    assert labels(ids[1], TARGET_CHARS)[:3] == ["<s>", "9", "</s>"]


def test_date_batch_shapes_shift_and_alignment():
    b = date_batch(16, generator=torch.Generator().manual_seed(0))
    assert isinstance(b, DateBatch) and b.tgt_in.shape == b.tgt_out.shape == (16, 11)
    assert torch.equal(b.tgt_in[:, 1:], b.tgt_out[:, :-1]) and (b.tgt_in[:, 0] == BOS).all()
    assert (b.tgt_out[:, -1] == EOS).all() and set(b.styles) <= set(STYLES)
    assert decode(b.src, SOURCE_CHARS) == b.sources and decode(b.tgt_out, TARGET_CHARS) == b.targets
    for i in range(16):                                       # brute force: the aligned characters
        text, spans = b.sources[i], format_date(datetime.date.fromisoformat(b.targets[i]), b.styles[i])[1]
        for t, field in enumerate(["year"] * 4 + [None] + ["month"] * 2 + [None] + ["day"] * 2 + [None]):
            got = "".join(text[s] for s in range(len(text)) if b.align[i, t, s])
            assert got == ("" if field is None else text[slice(*spans[field])])


def test_field_alignment_rejects_a_short_source():
    with pytest.raises(ValueError, match="src_length"):
        field_alignment(format_date(MARCH_3, "weekday")[1], 10)


def test_padding_the_source_changes_nothing():
    torch.manual_seed(0)
    model = DateTranslator(dim=16, heads=2, layers=2, hidden=24).double().eval()
    b = date_batch(4, generator=torch.Generator().manual_seed(1))
    logits, w = model(b.src, b.tgt_in[:, :5])                 # S != T
    padded = torch.cat([b.src, torch.full((4, 6), PAD)], 1)
    logits_p, w_p = model(padded, b.tgt_in[:, :5])
    torch.testing.assert_close(logits_p, logits)
    assert logits.shape == (4, 5, model.tgt_vocab)
    assert w["encoder"][0].shape == (4, 2, b.src.shape[1], b.src.shape[1])
    assert w["decoder"][1]["self"].shape == (4, 2, 5, 5) and w["decoder"][1]["cross"].shape == (4, 2, 5, b.src.shape[1])
    assert (w_p["decoder"][0]["cross"][..., b.src.shape[1]:] == 0).all()    # no weight on padding
    assert torch.triu(w["decoder"][0]["self"], diagonal=1).abs().max() == 0  # causal


def test_greedy_with_cache_equals_full_recompute_and_teacher_forcing():
    torch.manual_seed(2)
    model = DateTranslator(dim=16, heads=4, layers=3, hidden=24).double()
    src = date_batch(5, generator=torch.Generator().manual_seed(4)).src
    tokens, logits, cross = model.greedy(src, 9)
    tokens_full, logits_full, cross_full = model.greedy(src, 9, cache=False)
    assert torch.equal(tokens, tokens_full)
    torch.testing.assert_close(logits, logits_full)
    torch.testing.assert_close(cross[2], cross_full[2])
    # independent reference: teacher forcing on the decoded tokens gives the same logits at once
    tf_logits, w = model(src, torch.cat([torch.full((5, 1), BOS), tokens[:, :-1]], 1))
    torch.testing.assert_close(tf_logits, logits)
    torch.testing.assert_close(w["decoder"][2]["cross"], cross[2])
    assert torch.equal(tokens, logits.argmax(-1)) and model.training


def test_a_wrong_position_breaks_the_equality():
    """The test above can fail: decoding every token at position 0 gives other logits."""
    torch.manual_seed(2)
    model = DateTranslator(dim=16, heads=4, layers=2, hidden=24).double().eval()
    src = date_batch(2, generator=torch.Generator().manual_seed(4)).src
    _, logits, _ = model.greedy(src, 4)
    tgt = torch.cat([torch.full((2, 1), BOS), logits.argmax(-1)[:, :-1]], 1)
    memory, _ = model.encode(src)
    at_zero = torch.cat([model.embed_target(tgt[:, i:i + 1], start=0) for i in range(4)], 1)
    wrong = model.decoder(at_zero, memory, memory_mask=model.source_mask(src))[0]
    right = model.decoder(model.embed_target(tgt), memory, memory_mask=model.source_mask(src))[0]
    torch.testing.assert_close(model.out(right), logits)
    assert not torch.allclose(model.out(wrong), logits)


def test_count_projected_rows_matches_the_formula():
    torch.manual_seed(0)
    model = DateTranslator(dim=16, heads=2, layers=2, hidden=24)
    src = date_batch(3, generator=torch.Generator().manual_seed(0)).src
    steps, layers, b, s = 6, 2, 3, src.shape[1]
    _, cached = count_projected_rows(model, lambda: model.greedy(src, steps))
    _, full = count_projected_rows(model, lambda: model.greedy(src, steps, cache=False))
    assert cached == {"self": layers * b * steps, "cross": layers * b * s * steps}
    assert full == {"self": layers * b * steps * (steps + 1) // 2, "cross": layers * b * s * steps}
    assert not model.decoder.layers[0].self_attn.attn.k_proj._forward_hooks       # hooks removed


def test_accuracies_against_a_loop():
    g = torch.Generator().manual_seed(0)
    want = torch.randint(3, 9, (40, 11), generator=g)
    got = torch.where(torch.rand(40, 11, generator=g) < 0.1, torch.zeros_like(want), want)
    exact = sum(all(a == b for a, b in zip(r, w)) for r, w in zip(got.tolist(), want.tolist())) / 40
    per_char = sum(a == b for r, w in zip(got.tolist(), want.tolist()) for a, b in zip(r, w)) / 440
    assert accuracies(got, want) == pytest.approx((exact, per_char))
    with pytest.raises(ValueError, match="one shape"):
        accuracies(got[:, :5], want)


def test_alignment_mass_against_a_loop_and_the_uniform_case():
    g = torch.Generator().manual_seed(0)
    b = date_batch(6, generator=g)
    s = b.src.shape[1]
    w = torch.softmax(torch.randn(6, 3, 11, s, generator=g, dtype=torch.float64), -1)
    got = alignment_mass(w, b.align)
    rows = [(i, t) for i in range(6) for t in range(11) if b.align[i, t].any()]
    for h in range(3):
        want = sum(sum(w[i, h, t, j].item() for j in range(s) if b.align[i, t, j]) for i, t in rows) / len(rows)
        assert got[h].item() == pytest.approx(want)
    uniform = torch.full((6, 11, s), 1.0 / s, dtype=torch.float64)
    want = sum(b.align[i, t].sum().item() / s for i, t in rows) / len(rows)
    assert alignment_mass(uniform, b.align).item() == pytest.approx(want)


def test_loss_decreases_a_little():
    torch.manual_seed(0)
    model = DateTranslator(dim=16, heads=2, layers=1, hidden=24)
    b = date_batch(32, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = translation_loss(model, b).item()
    for _ in range(20):
        loss = translation_loss(model, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5


@pytest.mark.parametrize("call, error, match", [
    (lambda: format_date(datetime.date(1949, 12, 31), "long"), ValueError, "between"),
    (lambda: format_date(MARCH_3, "iso"), ValueError, "style must be one of"),
    (lambda: format_date("1998-03-03", "long"), TypeError, "datetime.date"),
    (lambda: ordinal_suffix(32), ValueError, "at most 31"),
    (lambda: encode(["1998_03"], TARGET_CHARS), ValueError, "outside the alphabet"),
    (lambda: encode(["1998"], TARGET_CHARS, length=2), ValueError, "shorter"),
    (lambda: encode("1998", TARGET_CHARS), TypeError, "list of strings"),
    (lambda: date_batch(4, styles=("long", "roman")), ValueError, "style must be one of"),
    (lambda: random_dates(0), ValueError, "n must be >= 1"),
    (lambda: DateTranslator(dim=30, heads=4), ValueError, "divisible"),
    (lambda: DateTranslator()(torch.zeros(2, 5), torch.zeros(2, 3, dtype=torch.long)), TypeError, "src must be a long"),
    (lambda: DateTranslator()(torch.zeros(2, 5, dtype=torch.long), torch.full((2, 3), 99)), ValueError, "tgt_in holds ids"),
    (lambda: DateTranslator()(torch.zeros(2, 5, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long)), ValueError,
     "share the batch"),
    (lambda: DateTranslator(max_length=8).greedy(torch.ones(1, 4, dtype=torch.long), 9), ValueError, "max_length"),
    (lambda: translation_loss(DateTranslator(), (1, 2)), TypeError, "DateBatch"),
    (lambda: alignment_mass(torch.rand(2, 11, 5), torch.ones(2, 11, 4, dtype=torch.bool)), ValueError, "align must"),
    (lambda: count_projected_rows(DateTranslator(), 3), TypeError, "callable"),
])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
