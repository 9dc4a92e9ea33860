"""The timeline of §1.3: the table against the bibliography and arXiv, queries against loops, the figure."""
import collections
import itertools
import math
import pathlib
import re
import unicodedata

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure
from support import randn

from attnbook import history
from attnbook.history import (ERAS, FIELDS, MILESTONES, MUTED, SCORE_KINDS, SECTIONS, Milestone, by_section,
                              count_by, find, format_table, mean_top_weight, milestones, plot_timeline,
                              score_weights, stagger, timeline_panel, year_range)

BIB = pathlib.Path(__file__).resolve().parents[1] / "book" / "references.bib"


# ---------------------------------------------------------------- the bibliography, parsed independently

def _braced(text, start):
    """The text inside the braces that open at text[start], and the index after the closing brace."""
    depth, i = 0, start
    while True:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
        if depth == 0:
            return text[start + 1:i - 1], i


def parse_bib(text):
    """{key: {field: value}} for every @type{key, field = {value}, ...} entry."""
    entries = {}
    for match in re.finditer(r"@\w+\s*\{\s*([^,\s]+)\s*,", text):
        body, _ = _braced(text, match.end() - len(match.group(0)) + match.group(0).index("{"))
        fields, i = {}, body.index(",") + 1
        for f in re.finditer(r"(\w+)\s*=\s*\{", body):
            if f.start() < i:
                continue
            value, i = _braced(body, f.end() - 1)
            fields[f.group(1).lower()] = value
        entries[match.group(1)] = fields
    return entries


def plain(text):
    """Lower-case letters and digits only: LaTeX accents and braces removed, accents folded."""
    text = re.sub(r"\\[\"'`^~.=]|[{}]", "", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", text.lower())


BIB_ENTRIES = parse_bib(BIB.read_text(encoding="utf-8"))


def test_the_bib_parser_reads_a_known_entry():
    entry = BIB_ENTRIES["vaswani2017attention"]
    assert entry["title"] == "Attention Is All You Need" and entry["year"] == "2017"
    assert entry["author"].startswith("Vaswani, Ashish and Shazeer, Noam")


@pytest.mark.parametrize("m", MILESTONES, ids=[m.key for m in MILESTONES])
def test_each_milestone_agrees_with_its_bibliography_entry(m):
    assert m.key in BIB_ENTRIES, f"{m.key} is not in book/references.bib"
    entry = BIB_ENTRIES[m.key]
    assert plain(entry["title"]) == plain(m.title)
    first_author = entry["author"].split(" and ")[0]
    assert plain(first_author.split(",")[0]) == plain(m.author)
    venue_year = int(entry["year"])
    assert m.year <= venue_year <= m.year + 2, "the venue year is the first version's year or up to two later"
    arxiv = re.search(r"arxiv\.org/abs/([0-9.]+)", entry.get("url", ""))
    if arxiv:
        assert arxiv.group(1) == m.arxiv


@pytest.mark.parametrize("m", [m for m in MILESTONES if m.arxiv], ids=[m.key for m in MILESTONES if m.arxiv])
def test_year_and_month_are_those_of_the_arxiv_identifier(m):
    yymm, number = re.fullmatch(r"(\d{4})\.(\d+)", m.arxiv).groups()
    assert (m.year, m.month) == (2000 + int(yymm[:2]), int(yymm[2:]))
    assert len(number) == (5 if yymm >= "1501" else 4), "arXiv numbers have 5 digits from 1501 on"


def test_the_table_is_chronological_unique_and_well_formed():
    dates = [(m.year, m.month) for m in MILESTONES]
    assert dates == sorted(dates)
    for attribute in ("name", "key", "title"):
        values = [getattr(m, attribute) for m in MILESTONES]
        assert len(set(values)) == len(values), f"a {attribute} appears twice"
    for m in MILESTONES:
        assert m.field in FIELDS and m.section in SECTIONS
        assert 1 <= m.month <= 12 and 2014 <= m.year <= 2023
        assert 0 < len(m.name) <= 28 and 0 < len(m.idea) <= 70, m.name
    assert min(collections.Counter(m.field for m in MILESTONES).values()) >= 3


def test_the_outline_milestones_are_there():
    assert (find("Bahdanau attention").year, find("Transformer").year) == (2014, 2017)
    assert find("transformer").key == "vaswani2017attention"                   # case-insensitive
    assert find("ViT").field == "vision" and find("ViT").year == 2020
    assert milestones("speech", (2015, 2015)) and milestones("multimodal", (2021, 2022))


def test_dates_as_text_and_as_fractional_years():
    m = find("Transformer")
    assert m.date == "2017-06" and m.when == pytest.approx(2017 + 5.5 / 12)
    assert all(m.year < m.when < m.year + 1 for m in MILESTONES)


# ---------------------------------------------------------------- queries against loops

def brute(field=None, years=None, section=None):
    out = []
    for m in MILESTONES:
        if field is not None and m.field != field:
            continue
        if years is not None and not (years[0] <= m.year <= years[1]):
            continue
        if section is not None and not (m.section == section or m.section.startswith(section + ".")):
            continue
        out.append(m)
    return out        # MILESTONES is chronological already


@pytest.mark.parametrize("field", (None,) + FIELDS)
@pytest.mark.parametrize("years", [None, (2014, 2016), (2017, 2017), (2020, 2023), (2010, 2013)])
def test_milestones_filters_like_a_loop(field, years):
    assert milestones(field, years) == brute(field, years)


@pytest.mark.parametrize("section", ["§1.2", "§3.1", "§4.4", "§5.1", "§7.1", "§3", "§4", "§6"])
def test_milestones_by_section_and_by_part(section):
    assert milestones(section=section) == brute(section=section)
    assert milestones(section=section.lstrip("§")) == brute(section=section)


def test_milestones_combines_filters_and_sorts_any_table():
    shuffled = [MILESTONES[i] for i in torch.randperm(len(MILESTONES), generator=torch.Generator().manual_seed(3))]
    assert milestones(table=shuffled) == list(MILESTONES)
    assert milestones("vision", 2018, "§3.6", table=shuffled) == [find("Attention U-Net")]
    assert milestones(years=2017) == milestones(years=(2017, 2017)) == brute(years=(2017, 2017))
    assert milestones(table=[]) == []


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(field="audio"), ValueError, "field must be one of"),
    (dict(field=3), TypeError, "field must be a string"),
    (dict(years=(2019, 2017)), ValueError, "first <= last, got \\(2019, 2017\\)"),
    (dict(years="2017"), TypeError, "years must be None"),
    (dict(years=(2017.5, 2018)), TypeError, "years\\[0\\] must be an integer"),
    (dict(years=(2017, 2018, 2019)), TypeError, "pair"),
    (dict(years=True), TypeError, "years must be None"),
    (dict(section="§9.9"), ValueError, "section must be one of"),
    (dict(section=4.3), TypeError, "section must be a string"),
    (dict(table=[MILESTONES[0], "BERT"]), TypeError, "entry 1 is str"),
    (dict(table="BERT"), TypeError, "iterable of Milestone"),
])
def test_milestones_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        milestones(**kwargs)


def test_year_range_and_find_reject_bad_input():
    assert year_range(None) is None and year_range(2019) == (2019, 2019) and year_range([2015, 2016]) == (2015, 2016)
    with pytest.raises(ValueError, match="no milestone is called 'Transformers'"):
        find("Transformers")
    with pytest.raises(TypeError, match="name must be a string"):
        find(None)


@pytest.mark.parametrize("attribute", ["field", "year", "section", "part"])
def test_count_by_equals_a_counter_with_zeros(attribute):
    value = {"field": lambda m: m.field, "year": lambda m: m.year, "section": lambda m: m.section,
             "part": lambda m: m.section.split(".")[0]}[attribute]
    counts = count_by(attribute)
    counter = collections.Counter(value(m) for m in MILESTONES)
    assert {k: v for k, v in counts.items() if v} == dict(counter)
    assert sum(counts.values()) == len(MILESTONES)
    expected_keys = {"field": list(FIELDS), "section": list(SECTIONS),
                     "part": [f"§{i}" for i in range(1, 8)], "year": list(range(2014, 2024))}[attribute]
    assert list(counts) == expected_keys


def test_count_by_rejects_an_unknown_attribute_and_counts_a_small_table():
    with pytest.raises(ValueError, match="attribute must be"):
        count_by("author")
    small = milestones("speech")
    assert count_by("year", table=small) == {2015: 2, 2016: 0, 2017: 0, 2018: 1, 2019: 0, 2020: 1, 2021: 0,
                                             2022: 1}


def test_by_section_partitions_the_table_in_book_order():
    sections = by_section()
    assert list(sections) == [s for s in SECTIONS if s in sections]
    flat = list(itertools.chain.from_iterable(sections.values()))
    assert sorted(flat, key=MILESTONES.index) == list(MILESTONES)         # each exactly once
    for s, chosen in sections.items():
        assert all(m.section == s for m in chosen) and chosen == sorted(chosen, key=lambda m: m.when)


def test_format_table_has_a_header_and_one_line_per_milestone():
    text = format_table(milestones("vision"), columns=("date", "name", "section"))
    lines = text.splitlines()
    assert lines[0].split() == ["date", "name", "section"] and len(lines) == 1 + len(milestones("vision"))
    for line, m in zip(lines[1:], milestones("vision")):
        assert line.startswith(m.date) and m.name in line and line.endswith(m.section)
    with pytest.raises(ValueError, match="columns must be attributes"):
        format_table(columns=("date", "venue"))


# ---------------------------------------------------------------- staggered labels

def depth(starts, ends, gap):
    """The largest number of intervals [s, e + gap) that share a point (brute force over the starts)."""
    return max(sum(s <= x < e + gap for s, e in zip(starts, ends)) for x in starts)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("gap", [0.0, 0.3])
def test_stagger_never_overlaps_and_uses_the_fewest_levels(seed, gap):
    g = torch.Generator().manual_seed(seed)
    starts = (torch.rand(25, generator=g) * 10).tolist()
    ends = [s + w for s, w in zip(starts, (torch.rand(25, generator=g) * 2).tolist())]
    levels = stagger(starts, ends, gap)
    for i, j in itertools.combinations(range(25), 2):
        if levels[i] == levels[j]:
            assert ends[i] + gap <= starts[j] or ends[j] + gap <= starts[i]
    assert max(levels) + 1 == depth(starts, ends, gap)


def test_stagger_small_cases_and_bad_input():
    assert stagger([], []) == []
    assert stagger([0, 1, 2], [0.5, 1.5, 2.5]) == [0, 0, 0]
    assert stagger([2, 0, 1], [3, 1.5, 2.5]) == [0, 0, 1]          # input order is kept in the result
    with pytest.raises(ValueError, match="same length"):
        stagger([0, 1], [1])
    with pytest.raises(ValueError, match="start <= end"):
        stagger([1], [0])
    with pytest.raises(ValueError, match="gap must be >= 0"):
        stagger([0], [1], gap=-1)


# ---------------------------------------------------------------- the figure

def _boxes(ax):
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}


def test_plot_timeline_draws_every_milestone_with_labels_that_do_not_overlap():
    fig, ax = plt.subplots(figsize=(11, 5.2))
    assert plot_timeline(ax=ax) is ax
    markers = [line for line in ax.lines if line.get_marker() not in (None, "None", "")]
    assert len(markers) == len(MILESTONES)
    assert sorted(x for line in markers for x in line.get_xdata()) == pytest.approx(sorted(m.when for m in MILESTONES))
    boxes = _boxes(ax)
    assert set(boxes) == {m.name for m in MILESTONES}
    for a, b in itertools.combinations(boxes, 2):
        assert not boxes[a].overlaps(boxes[b]), f"labels {a!r} and {b!r} overlap"
    assert [t.get_text() for t in ax.get_yticklabels()] == [history.FIELD_LABELS[f] for f in FIELDS]


def test_plot_timeline_greys_out_what_is_not_highlighted():
    fig, ax = plt.subplots(figsize=(11, 5.2))
    plot_timeline(highlight="speech", years=(2015, 2018), ax=ax, labels=False)
    markers = [line for line in ax.lines if line.get_marker() not in (None, "None", "")]
    by_date = {}
    for line in markers:
        by_date.setdefault(round(float(line.get_xdata()[0]), 6), []).append(line.get_color())
    for m in MILESTONES:
        coloured = m.field == "speech" and 2015 <= m.year <= 2018
        expected = history.COLOURS[m.field] if coloured else MUTED
        assert expected in by_date[round(m.when, 6)], m.name
    assert not ax.texts                                       # labels=False


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(highlight="music"), ValueError, "highlight must be one of"),
    (dict(years=(2020, 2015)), ValueError, "first <= last"),
    (dict(span=(2024, 2014)), ValueError, "span must be"),
    (dict(table=[1, 2]), TypeError, "Milestone"),
])
def test_plot_timeline_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        plot_timeline(**kwargs)


@pytest.mark.parametrize("field, era", [("vision", "2017–2019"), ("speech", "2014–2016"), ("general", "all years")])
def test_timeline_panel_lists_the_selected_milestones(field, era):
    fig = Figure(figsize=(8, 3.2))
    timeline_panel(fig, field, era)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    chosen = milestones(field, ERAS[era])
    assert texts[0].endswith(f": {len(chosen)}")
    assert [t.split("  ")[1] for t in texts[1:1 + len(chosen)]] == [m.name for m in chosen]
    with pytest.raises(ValueError, match="era must be one of"):
        timeline_panel(fig, field, "2014-2016")                # a hyphen instead of the en dash


# ---------------------------------------------------------------- the scores of 2014, 2015, 2017

def test_score_weights_match_hand_written_scores_on_non_square_shapes():
    q, k = randn(2, 3, 6, seed=1), randn(2, 5, 6, seed=2)
    torch.testing.assert_close(score_weights("dot", q, k), torch.softmax(torch.einsum("bid,bjd->bij", q, k), -1))
    torch.testing.assert_close(score_weights("scaled dot", q, k),
                               torch.softmax(torch.einsum("bid,bjd->bij", q, k) / math.sqrt(6), -1))
    k4 = randn(2, 5, 4, seed=3)                                   # general and additive allow d_k != d_q
    g = torch.Generator().manual_seed(7)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64) / math.sqrt(6)
    torch.testing.assert_close(score_weights("general", q, k4, generator=torch.Generator().manual_seed(7)),
                               torch.softmax(torch.einsum("bid,de,bje->bij", q, w, k4), -1))
    g = torch.Generator().manual_seed(7)
    W = torch.randn(6, 6, generator=g, dtype=torch.float64) / math.sqrt(6)       # (h, d_q), h = d_q = 6
    U = torch.randn(6, 4, generator=g, dtype=torch.float64) / math.sqrt(4)       # (h, d_k)
    v = torch.randn(6, generator=g, dtype=torch.float64) / math.sqrt(6)
    loop = torch.empty(2, 3, 5, dtype=torch.float64)
    for b, i, j in itertools.product(range(2), range(3), range(5)):
        loop[b, i, j] = v @ torch.tanh(W @ q[b, i] + U @ k4[b, j])
    torch.testing.assert_close(score_weights("additive", q, k4, generator=torch.Generator().manual_seed(7)),
                               torch.softmax(loop, -1))


@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_score_weights_are_distributions(kind):
    w = score_weights(kind, randn(4, 8, seed=4), randn(7, 8, seed=5), generator=torch.Generator().manual_seed(0))
    assert w.shape == (4, 7) and (w > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(4, dtype=w.dtype))


def test_score_weights_rejects_bad_input():
    q = randn(3, 4)
    with pytest.raises(ValueError, match="kind must be one of"):
        score_weights("cosine", q, q)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        score_weights("additive", q, q, generator=0)
    with pytest.raises(ValueError, match="query has width d=4 but key has d=5"):
        score_weights("dot", q, randn(3, 5))
    with pytest.raises(TypeError, match="query must be a torch.Tensor"):
        score_weights("dot", q.tolist(), q)


def test_mean_top_weight_saturates_for_unscaled_dot_products_only():
    top = {kind: [mean_top_weight(kind, d, n_keys=8, n_samples=100, generator=torch.Generator().manual_seed(0))
                  for d in (4, 64, 512)] for kind in SCORE_KINDS}
    for values in top.values():
        assert all(1 / 8 <= v <= 1 for v in values)
    assert top["dot"][0] < top["dot"][1] < top["dot"][2] and top["dot"][2] > 0.9
    assert top["general"][2] > 0.85
    assert max(top["scaled dot"]) - min(top["scaled dot"]) < 0.05 and max(top["additive"]) < 0.3
    with pytest.raises(ValueError, match="d must be finite and > 0"):
        mean_top_weight("dot", 0)
    with pytest.raises(TypeError, match="n_keys must be an integer"):
        mean_top_weight("dot", 4, n_keys=2.5)


def test_a_milestone_is_immutable():
    with pytest.raises(AttributeError):
        MILESTONES[0].year = 2000
    assert isinstance(MILESTONES[0], Milestone)
