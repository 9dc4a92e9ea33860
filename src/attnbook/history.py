"""A timeline of attention as data: milestones, queries, the timeline figure (§1.3).

:data:`MILESTONES` is a curated table of papers that shaped attention, from the first
attention models of 2014 to the multimodal models of 2022 and 2023. Each
:class:`Milestone` holds its date, a short name, the paper's title, its first author, its
key in ``book/references.bib``, the field it belongs to (one of :data:`FIELDS`), the section
of this book that explains its mechanism (one of :data:`SECTIONS`), its arXiv identifier
when it has one, and its contribution in a few words.

**Dates.** ``year`` and ``month`` are those of the first public version: the year and
month encoded in the arXiv identifier (``1706.03762`` was registered in June 2017), or the
release of a report that has no preprint. The venue year in the bibliography is often
later (Bahdanau et al.: arXiv September 2014, ICLR 2015).

The table is a *selection* made for this book, not a census of the literature: counts
computed from it describe the selection.

Functions: :func:`milestones` filters the table by field, years and section;
:func:`count_by` counts it; :func:`by_section` maps the book's sections to their
milestones; :func:`plot_timeline` draws it (one lane per field, Okabe-Ito colours and one
marker shape per field, so that colour is never the only cue); :func:`timeline_panel` draws
one frame of the section's widget; :func:`score_weights` and :func:`mean_top_weight`
compare the score functions of 2014, 2015 and 2017 on one query.
"""
import dataclasses
import math
import numbers

import torch

from . import _checks
from .scores import additive_scores, dot_scores, general_scores, scaled_dot_scores

FIELDS = ("language", "speech", "vision", "multimodal", "efficiency", "general")
"""The lanes of the timeline, top to bottom. "speech" includes music; "general" holds
mechanisms that every field uses (memory addressing, positions, interpretability)."""

FIELD_LABELS = {
    "language": "language", "speech": "speech & music", "vision": "vision",
    "multimodal": "multimodal", "efficiency": "efficiency", "general": "general tools",
}

COLOURS = {  # Okabe & Ito's palette, distinguishable with the common colour-vision deficiencies
    "language": "#0072B2", "speech": "#E69F00", "vision": "#009E73",
    "multimodal": "#CC79A7", "efficiency": "#D55E00", "general": "#56B4E9",
}
MARKERS = {"language": "o", "speech": "s", "vision": "^", "multimodal": "D", "efficiency": "v", "general": "P"}
MUTED = "#BBBBBB"

SECTIONS = {
    "§1.1": "The idea of attention",
    "§1.2": "The bottleneck and Bahdanau attention",
    "§1.3": "A timeline",
    "§2.1": "Queries, keys and values",
    "§2.2": "Similarity scores",
    "§2.3": "Softmax, temperature and masking",
    "§2.4": "The weighted sum and the multi-head layer",
    "§3.1": "Soft, hard, local and hybrid attention",
    "§3.2": "Self- and cross-attention",
    "§3.3": "Multi-head attention",
    "§3.4": "Axial attention",
    "§3.5": "Sparse attention",
    "§3.6": "Attention inside CNNs",
    "§4.1": "The Transformer for translation",
    "§4.2": "BERT, GPT and LLaMA",
    "§4.3": "A pretrained Transformer",
    "§4.4": "Vision",
    "§4.5": "Speech and music",
    "§4.6": "Multimodal models",
    "§5.1": "Positional encodings",
    "§5.2": "Efficient attention",
    "§5.3": "Memory: checkpointing, FlashAttention, the KV cache",
    "§5.4": "Interpretability",
    "§6.1": "Long sequences",
    "§6.2": "Inductive bias",
    "§6.3": "Aligning modalities",
    "§6.4": "Directions",
    "§7.1": "Which attention when",
}
"""The book's sections, in order (the plan of CONTRIBUTING.md)."""

ERAS = {
    "all years": (2014, 2023),
    "2014–2016": (2014, 2016),
    "2017–2019": (2017, 2019),
    "2020–2023": (2020, 2023),
}
"""Year ranges (inclusive) used by the section's widget."""

SCORE_KINDS = ("additive", "dot", "general", "scaled dot")
"""Score functions in the order they appeared: additive (Bahdanau et al., 2014), dot and
general (Luong et al., 2015), scaled dot product (Vaswani et al., 2017)."""


@dataclasses.dataclass(frozen=True)
class Milestone:
    """One paper on the timeline. ``year``/``month``: first public version (see the module)."""

    year: int
    month: int
    name: str
    title: str
    author: str
    key: str
    field: str
    section: str
    arxiv: str | None
    idea: str

    @property
    def when(self):
        """The date as a fractional year, the middle of the month: 2017.5 - 1/24 for June 2017."""
        return self.year + (self.month - 0.5) / 12

    @property
    def date(self):
        """The date as text, e.g. '2017-06'."""
        return f"{self.year}-{self.month:02d}"


def _chronological(m):
    return m.year, m.month, m.arxiv or ""


def _m(arxiv, name, title, author, key, field, section, idea, *, year=None, month=None):
    if arxiv is not None:
        year, month = 2000 + int(arxiv[:2]), int(arxiv[2:4])
    return Milestone(year, month, name, title, author, key, field, section, arxiv, idea)


MILESTONES = tuple(sorted((
    # ---- 2014-2016: attention inside recurrent networks
    _m("1406.6247", "Glimpses (RAM)", "Recurrent Models of Visual Attention", "Mnih",
       "mnih2014recurrent", "vision", "§3.1", "hard attention: a glimpse sensor trained with REINFORCE"),
    _m("1409.0473", "Bahdanau attention", "Neural Machine Translation by Jointly Learning to Align and Translate",
       "Bahdanau", "bahdanau2015neural", "language", "§1.2",
       "additive attention over the encoder states of a translation model"),
    _m("1410.5401", "Neural Turing Machine", "Neural Turing Machines", "Graves", "graves2014neural", "general",
       "§2.2", "reads memory by cosine similarity and a softmax"),
    _m("1502.03044", "Show, Attend and Tell", "Show, Attend and Tell: Neural Image Caption Generation with "
       "Visual Attention", "Xu", "xu2015show", "multimodal", "§3.1",
       "soft and hard attention over image regions for captions"),
    _m("1503.08895", "Memory networks", "End-To-End Memory Networks", "Sukhbaatar", "sukhbaatar2015end",
       "general", "§2.1", "separate input and output memories: keys and values"),
    _m("1506.07503", "Attention for speech", "Attention-Based Models for Speech Recognition", "Chorowski",
       "chorowski2015attention", "speech", "§4.5", "location-aware attention aligns audio frames and phonemes"),
    _m("1508.01211", "Listen, Attend and Spell", "Listen, Attend and Spell: A Neural Network for Large "
       "Vocabulary Conversational Speech Recognition", "Chan", "chan2016listen", "speech", "§4.5",
       "an attention decoder spells characters from audio"),
    _m("1508.04025", "Luong attention", "Effective Approaches to Attention-based Neural Machine Translation",
       "Luong", "luong2015effective", "language", "§3.1", "global and local attention; dot and general scores"),
    _m("1606.01933", "Decomposable attention", "A Decomposable Attention Model for Natural Language Inference",
       "Parikh", "parikh2016decomposable", "language", "§3.2",
       "attention between two sentences without any recurrence"),
    # ---- 2017-2019: attention without recurrence
    _m("1706.03762", "Transformer", "Attention Is All You Need", "Vaswani", "vaswani2017attention",
       "language", "§4.1", "self-attention only: scaled dot product, heads, no recurrence"),
    _m("1707.07998", "Bottom-up, top-down", "Bottom-Up and Top-Down Attention for Image Captioning and "
       "Visual Question Answering", "Anderson", "anderson2018bottom", "multimodal", "§4.6",
       "words attend to detected object regions"),
    _m("1709.01507", "Squeeze-and-excitation", "Squeeze-and-Excitation Networks", "Hu", "hu2018squeeze",
       "vision", "§3.6", "channel attention: pool, small MLP, re-weight channels"),
    _m("1711.07971", "Non-local networks", "Non-local Neural Networks", "Wang", "wang2018nonlocal", "vision",
       "§3.6", "self-attention between all positions of a video CNN"),
    _m("1803.02155", "Relative positions", "Self-Attention with Relative Position Representations", "Shaw",
       "shaw2018self", "general", "§5.1", "scores that depend on the distance between tokens"),
    _m("1804.03999", "Attention U-Net", "Attention U-Net: Learning Where to Look for the Pancreas", "Oktay",
       "oktay2018attention", "vision", "§3.6", "attention gates for medical image segmentation"),
    _m(None, "GPT", "Improving Language Understanding by Generative Pre-Training", "Radford",
       "radford2018improving", "language", "§4.2", "a causal Transformer decoder pretrained on raw text",
       year=2018, month=6),
    _m("1807.06521", "CBAM", "CBAM: Convolutional Block Attention Module", "Woo", "woo2018cbam", "vision",
       "§4.4", "channel then spatial attention inside a CNN"),
    _m("1809.04281", "Music Transformer", "Music Transformer: Generating Music with Long-Term Structure",
       "Huang", "huang2019music", "speech", "§4.5", "relative self-attention over minutes of music"),
    _m("1810.04805", "BERT", "BERT: Pre-training of Deep Bidirectional Transformers for Language "
       "Understanding", "Devlin", "devlin2019bert", "language", "§4.2",
       "a bidirectional encoder pretrained by masked words"),
    _m("1902.10186", "Attention is not explanation", "Attention is not Explanation", "Jain",
       "jain2019attention", "general", "§5.4", "attention weights need not say why a model decided"),
    _m("1904.10509", "Sparse Transformer", "Generating Long Sequences with Sparse Transformers", "Child",
       "child2019generating", "efficiency", "§3.5", "strided and fixed sparse patterns"),
    _m("1908.02265", "ViLBERT", "ViLBERT: Pretraining Task-Agnostic Visiolinguistic Representations for "
       "Vision-and-Language Tasks", "Lu", "lu2019vilbert", "multimodal", "§4.6",
       "co-attention between image regions and words"),
    _m("1910.10683", "T5", "Exploring the Limits of Transfer Learning with a Unified Text-to-Text "
       "Transformer", "Raffel", "raffel2020exploring", "language", "§5.1",
       "every task as text to text; relative position biases"),
    _m("1911.02150", "Multi-query attention", "Fast Transformer Decoding: One Write-Head is All You Need",
       "Shazeer", "shazeer2019fast", "efficiency", "§5.3", "heads share one key and value: a smaller KV cache"),
    _m("1912.12180", "Axial attention", "Axial Attention in Multidimensional Transformers", "Ho",
       "ho2019axial", "vision", "§3.4", "attend along rows, then along columns"),
    # ---- 2020 onwards: one mechanism for every modality
    _m("2001.04451", "Reformer", "Reformer: The Efficient Transformer", "Kitaev", "kitaev2020reformer",
       "efficiency", "§3.5", "locality-sensitive hashing buckets"),
    _m("2004.05150", "Longformer", "Longformer: The Long-Document Transformer", "Beltagy",
       "beltagy2020longformer", "efficiency", "§3.5", "sliding windows plus a few global tokens"),
    _m("2005.08100", "Conformer", "Conformer: Convolution-augmented Transformer for Speech Recognition",
       "Gulati", "gulati2020conformer", "speech", "§4.5", "self-attention and convolution for speech"),
    _m("2005.12872", "DETR", "End-to-End Object Detection with Transformers", "Carion", "carion2020end",
       "vision", "§4.4", "object queries cross-attend to image features"),
    _m("2006.16236", "Linear attention", "Transformers are RNNs: Fast Autoregressive Transformers with "
       "Linear Attention", "Katharopoulos", "katharopoulos2020transformers", "efficiency", "§5.2",
       "kernel feature maps: O(n) time, a recurrent view"),
    _m("2009.14794", "Performer", "Rethinking Attention with Performers", "Choromanski",
       "choromanski2021rethinking", "efficiency", "§5.2", "random features approximate the softmax kernel"),
    _m("2010.11929", "ViT", "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
       "Dosovitskiy", "dosovitskiy2021image", "vision", "§4.4", "image patches as tokens of a Transformer"),
    _m("2102.03902", "Nyströmformer", "Nyströmformer: A Nyström-Based Algorithm for Approximating "
       "Self-Attention", "Xiong", "xiong2021nystromformer", "efficiency", "§5.2",
       "a low-rank approximation through landmarks"),
    _m("2103.00020", "CLIP", "Learning Transferable Visual Models From Natural Language Supervision",
       "Radford", "radford2021learning", "multimodal", "§4.6",
       "image and text encoders trained to agree on captions"),
    _m("2103.03206", "Perceiver", "Perceiver: General Perception with Iterative Attention", "Jaegle",
       "jaegle2021perceiver", "multimodal", "§6.3", "a small latent array cross-attends to any input"),
    _m("2104.09864", "RoPE", "RoFormer: Enhanced Transformer with Rotary Position Embedding", "Su",
       "su2021roformer", "general", "§5.1", "rotary position embeddings"),
    _m("2108.12409", "ALiBi", "Train Short, Test Long: Attention with Linear Biases Enables Input Length "
       "Extrapolation", "Press", "press2022train", "general", "§5.1", "a linear distance penalty on the scores"),
    _m("2112.10752", "Latent diffusion", "High-Resolution Image Synthesis with Latent Diffusion Models",
       "Rombach", "rombach2022high", "multimodal", "§4.4", "image features cross-attend to text"),
    _m("2204.14198", "Flamingo", "Flamingo: a Visual Language Model for Few-Shot Learning", "Alayrac",
       "alayrac2022flamingo", "multimodal", "§4.6", "a language model cross-attends to images"),
    _m("2205.14135", "FlashAttention", "FlashAttention: Fast and Memory-Efficient Exact Attention with "
       "IO-Awareness", "Dao", "dao2022flashattention", "efficiency", "§5.3",
       "exact attention in tiles with an online softmax"),
    _m("2212.04356", "Whisper", "Robust Speech Recognition via Large-Scale Weak Supervision", "Radford",
       "radford2023robust", "speech", "§4.5", "an encoder-decoder Transformer trained on 680,000 hours"),
    _m("2302.13971", "LLaMA", "LLaMA: Open and Efficient Foundation Language Models", "Touvron",
       "touvron2023llama", "language", "§4.2", "open decoder-only models with RoPE"),
), key=_chronological))
"""The milestones, in chronological order (ties: by arXiv identifier)."""


# ---------------------------------------------------------------- checking arguments

def _table(table):
    """The table as a tuple of Milestones (MILESTONES when None), or a TypeError."""
    if table is None:
        return MILESTONES
    if isinstance(table, (str, bytes)) or not hasattr(table, "__iter__"):
        raise TypeError(f"table must be an iterable of Milestone, got {type(table).__name__}")
    table = tuple(table)
    for i, m in enumerate(table):
        if not isinstance(m, Milestone):
            raise TypeError(f"table must hold Milestone objects, but entry {i} is {type(m).__name__}")
    return table


def _field(field, name="field"):
    if not isinstance(field, str):
        raise TypeError(f"{name} must be a string, one of {FIELDS}, got {type(field).__name__}")
    if field not in FIELDS:
        raise ValueError(f"{name} must be one of {FIELDS}, got {field!r}")
    return field


def _year(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer year, got {type(value).__name__}")
    return int(value)


def year_range(years):
    """``years`` as an inclusive (first, last) pair: None -> None, 2017 -> (2017, 2017).

    A pair (first, last) of integers needs first <= last; a TypeError or ValueError says
    what was wrong. Used by :func:`milestones` and :func:`plot_timeline`. §1.3.
    """
    if years is None:
        return None
    if isinstance(years, numbers.Integral) and not isinstance(years, bool):
        return int(years), int(years)
    if not isinstance(years, (tuple, list)) or len(years) != 2:
        raise TypeError(f"years must be None, a year or a (first, last) pair, got {years!r}")
    first, last = _year(years[0], "years[0]"), _year(years[1], "years[1]")
    if first > last:
        raise ValueError(f"years must be (first, last) with first <= last, got ({first}, {last})")
    return first, last


def _section(section):
    """'§4.3', '4.3' (one section) or '§4', '4' (a whole part) -> the prefix to match."""
    if not isinstance(section, str):
        raise TypeError(f"section must be a string such as '§4.3' or '§4', got {type(section).__name__}")
    s = section.strip()
    s = s if s.startswith("§") else "§" + s
    parts = {k.split(".")[0] for k in SECTIONS}
    if s not in SECTIONS and s not in parts:
        raise ValueError(f"section must be one of the book's sections {tuple(SECTIONS)} or parts "
                         f"{tuple(sorted(parts))}, got {section!r}")
    return s


# ---------------------------------------------------------------- queries

def milestones(field=None, years=None, section=None, *, table=None):
    """The milestones of one ``field``, in ``years`` (inclusive), explained in ``section``.

    field: None (all) or one of :data:`FIELDS`; years: None, a year, or (first, last);
    section: None, a section ('§4.3' or '4.3') or a part ('§4'). Every filter given must
    hold. ``table`` defaults to :data:`MILESTONES`. Returns a list sorted by date, ties by
    arXiv identifier, as :data:`MILESTONES`. Cost O(len(table) log len(table)). Explained in §1.3.
    """
    table = _table(table)
    field = None if field is None else _field(field)
    years = year_range(years)
    section = None if section is None else _section(section)
    chosen = [m for m in table
              if (field is None or m.field == field)
              and (years is None or years[0] <= m.year <= years[1])
              and (section is None or m.section == section or m.section.split(".")[0] == section)]
    return sorted(chosen, key=_chronological)


def find(name, *, table=None):
    """The milestone whose short name is ``name`` (case-insensitive), or a ValueError. §1.3."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    table = _table(table)
    for m in table:
        if m.name.lower() == name.lower():
            return m
    raise ValueError(f"no milestone is called {name!r}; names: {[m.name for m in table]}")


def count_by(attribute, *, table=None):
    """How many milestones share each value of ``attribute``: 'field', 'year', 'section' or 'part'.

    Returns a dict in the natural order, with zeros: every field of :data:`FIELDS`; every
    year from the first to the last of the table; every section of :data:`SECTIONS`; every
    part ('§1' to '§7'). Cost O(len(table)). Explained in §1.3.
    """
    table = _table(table)
    if attribute == "field":
        keys, value = FIELDS, (lambda m: m.field)
    elif attribute == "year":
        years = [m.year for m in table]
        keys = tuple(range(min(years), max(years) + 1)) if years else ()
        value = lambda m: m.year  # noqa: E731
    elif attribute == "section":
        keys, value = tuple(SECTIONS), (lambda m: m.section)
    elif attribute == "part":
        keys = tuple(dict.fromkeys(k.split(".")[0] for k in SECTIONS))
        value = lambda m: m.section.split(".")[0]  # noqa: E731
    else:
        raise ValueError(f"attribute must be 'field', 'year', 'section' or 'part', got {attribute!r}")
    counts = dict.fromkeys(keys, 0)
    for m in table:
        counts[value(m)] += 1
    return counts


def by_section(*, table=None):
    """{section: [milestones]} for the sections that explain at least one milestone, in book order.

    Within a section the milestones are in chronological order. Cost O(len(table)). §1.3.
    """
    table = _table(table)
    return {s: chosen for s in SECTIONS if (chosen := milestones(section=s, table=table))}


def format_table(table=None, *, columns=("date", "name", "author", "field", "section")):
    """The milestones as a fixed-width text table, one line per milestone (for printing). §1.3.

    ``columns`` are attribute names of :class:`Milestone` (including 'date' and 'when').
    """
    table = _table(table)
    fields = {f.name for f in dataclasses.fields(Milestone)} | {"date", "when"}
    for c in columns:
        if c not in fields:
            raise ValueError(f"columns must be attributes of Milestone {sorted(fields)}, got {c!r}")
    rows = [[str(getattr(m, c)) for c in columns] for m in table]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- the figure

def stagger(starts, ends, gap=0.0):
    """Levels for labels occupying [start, end) on one line so that no two on a level overlap.

    Greedy interval partitioning in order of ``starts``: each label takes the lowest level
    whose last label ends at least ``gap`` before it starts. For intervals sorted by start,
    greedy uses the fewest levels possible. Returns a list of ints (0 = lowest), aligned
    with the input. Cost O(n·levels). Used by :func:`plot_timeline`. §1.3.
    """
    starts, ends = list(starts), list(ends)
    if len(starts) != len(ends):
        raise ValueError(f"starts and ends must have the same length, got {len(starts)} and {len(ends)}")
    for s, e in zip(starts, ends):
        if not (math.isfinite(s) and math.isfinite(e)) or e < s:
            raise ValueError(f"each interval needs finite start <= end, got [{s}, {e})")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    levels, right = [0] * len(starts), []           # right[k]: where level k is free again
    for i in sorted(range(len(starts)), key=lambda i: starts[i]):
        for k, r in enumerate(right):
            if r + gap <= starts[i]:
                break
        else:
            k = len(right)
            right.append(-math.inf)
        levels[i], right[k] = k, ends[i]
    return levels


def _lanes(ax, table, fields, highlight, years, fontsize, labels):
    """Draw the lanes into ``ax``; return the y of each lane's axis line."""
    import matplotlib.pyplot as plt

    if labels:                                                    # label widths need a renderer
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig = ax.figure
        canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)
        renderer = canvas.get_renderer()
        x0, x1 = ax.get_xlim()
        axis_width = ax.get_window_extent(renderer).width       # pixels
    lane_y, y = {}, 0.0
    for field in reversed(fields):                                # bottom lane first
        chosen = [m for m in table if m.field == field]
        on = [(highlight in (None, field)) and (years is None or years[0] <= m.year <= years[1])
              for m in chosen]
        colour = COLOURS[field]
        if labels:
            texts = [ax.text(0, 0, m.name, fontsize=fontsize,   # a white box hides the stems behind it
                             bbox=dict(facecolor="white", edgecolor="none", pad=0.4)) for m in chosen]
            widths = [t.get_window_extent(renderer).width / axis_width * (x1 - x0) for t in texts]
            levels = stagger([m.when for m in chosen], [m.when + w for m, w in zip(chosen, widths)], gap=0.04)
        else:
            texts, levels = [], [0] * len(chosen)
        top = max(levels, default=0) + 1
        lane_y[field] = y
        lane_on = highlight in (None, field)
        ax.axhline(y, color=colour if lane_on else MUTED, lw=0.8, zorder=1)
        for i, m in enumerate(chosen):
            c = colour if on[i] else MUTED
            ax.plot(m.when, y, MARKERS[field], color=c, ms=5.5, mec="white", mew=0.5, zorder=3)
            if labels:
                ty = y + 0.32 + 0.3 * levels[i]
                ax.plot([m.when, m.when], [y, ty], color=c, lw=0.5, zorder=2)
                texts[i].set_position((m.when, ty))
                texts[i].set(color="black" if on[i] else MUTED, va="bottom", ha="left", zorder=4,
                             fontweight="bold" if on[i] and highlight is not None else "normal")
        y += 0.55 + 0.3 * top
    ax.set_ylim(-0.5, y - 0.1)
    ax.set_yticks([lane_y[f] for f in fields], [FIELD_LABELS[f] for f in fields])
    for tick, f in zip(ax.get_yticklabels(), fields):
        tick.set_color(COLOURS[f] if highlight in (None, f) else "0.55")
    plt.setp(ax.get_yticklabels(), fontsize=fontsize + 1)
    return lane_y


def plot_timeline(table=None, *, highlight=None, years=None, ax=None, fontsize=7.0, labels=True,
                  span=(2014, 2024), transformer_line=True):
    """Draw the milestones as a timeline: one lane per field, a labelled marker per paper.

    ``highlight``: None or a field of :data:`FIELDS`, drawn in colour while the others are
    grey; ``years``: None, a year or (first, last): milestones outside are grey and the
    years outside are shaded. Labels are staggered with :func:`stagger` so that none
    overlap on the axes as they are: fix the layout (``subplots_adjust``) before calling,
    since a later ``tight_layout`` changes the axes' width. ``span``: the x range in years. Colours: Okabe-Ito, plus a marker shape per
    field. Returns the axes. Cost O(len(table)·levels) plus drawing. Explained in §1.3.
    """
    import matplotlib.pyplot as plt

    table = _table(table)
    highlight = None if highlight is None else _field(highlight, "highlight")
    years = year_range(years)
    if not (isinstance(span, (tuple, list)) and len(span) == 2 and span[0] < span[1]):
        raise ValueError(f"span must be (start, end) with start < end, got {span!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 5.2))
    ax.set_xlim(*span)
    _lanes(ax, table, FIELDS, highlight, years, fontsize, labels)
    if years is not None:
        for a, b in ((span[0], years[0]), (years[1] + 1, span[1])):
            if b > a:
                ax.axvspan(a, b, color="0.93", zorder=0, lw=0)
    if transformer_line:
        ax.axvline(2017 + 5.5 / 12, color="0.35", ls="--", lw=0.8, zorder=0)
    ax.set_xticks(range(int(math.ceil(span[0])), int(span[1]) + 1))
    ax.tick_params(axis="x", labelsize=fontsize + 1)
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", color="0.9", lw=0.6, zorder=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    return ax


def timeline_panel(fig, field, era):
    """One frame of §1.3's widget: the timeline with ``field`` and the years of ``era`` highlighted
    (left), and the list of those milestones with the sections that explain them (right).

    ``era`` is a key of :data:`ERAS`. Clears and redraws ``fig``. Explained in §1.3.
    """
    _field(field)
    if era not in ERAS:
        raise ValueError(f"era must be one of {tuple(ERAS)}, got {era!r}")
    years = ERAS[era]
    fig.clear()
    left = fig.add_axes((0.155, 0.1, 0.5, 0.86))
    right = fig.add_axes((0.68, 0.02, 0.31, 0.94))
    plot_timeline(highlight=field, years=None if era == "all years" else years, ax=left,
                  labels=False, span=(2014, 2024))
    left.tick_params(axis="x", labelsize=7)
    chosen = milestones(field, years)
    right.axis("off")
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.text(0, 1, f"{FIELD_LABELS[field]}, {era}: {len(chosen)}", fontsize=8, fontweight="bold",
               va="top", color=COLOURS[field])
    for i, m in enumerate(chosen[:14]):
        right.text(0, 0.9 - 0.064 * i, f"{m.year}  {m.name}  → {m.section}", fontsize=7, va="top")
    if not chosen:
        right.text(0, 0.9, "(none in this selection)", fontsize=7, va="top", color="0.4")
    return fig


# ---------------------------------------------------------------- the scores of 2014, 2015, 2017

def _generator(generator):
    _checks.generator(generator)
    return generator


def score_weights(kind, query, key, *, hidden=None, generator=None):
    """Attention weights softmax_j(s(q, k_j)) with the score ``kind`` of :data:`SCORE_KINDS`.

    'additive' (2014): vᵀ tanh(W q + U k), W, U (h, d) with N(0, 1/d) entries and v (h,) with
    N(0, 1/h) entries, so that W q, U k and the score have unit-order variance; 'dot' (2015):
    qᵀ k; 'general' (2015): qᵀ W k, W (d, d) with N(0, 1/d) entries; 'scaled dot' (2017):
    qᵀ k / √d. The parameters are untrained, drawn from ``generator``: what the kinds differ
    in here is how the size of the scores grows with the width d, not what they prefer.
    query (..., Lq, d), key (..., Lk, d) -> weights (..., Lq, Lk). hidden h defaults to d.
    Cost O(Lq·Lk·d) (O(Lq·Lk·h) memory for 'additive'). Explained in §1.3 and §2.2.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind must be one of {SCORE_KINDS}, got {kind!r}")
    _checks.tensor(query, "query", min_dim=2)
    _checks.tensor(key, "key", min_dim=2)
    _generator(generator)
    d = query.shape[-1]
    h = d if hidden is None else _checks.positive(hidden, "hidden", integer=True)
    opts = dict(generator=generator, dtype=query.dtype)
    if kind == "additive":
        w, u = (torch.randn(h, n, **opts) / math.sqrt(n) for n in (d, key.shape[-1]))
        scores = additive_scores(query, key, w, u, torch.randn(h, **opts) / math.sqrt(h))
    elif kind == "general":
        scores = general_scores(query, key, torch.randn(d, key.shape[-1], **opts) / math.sqrt(d))
    elif kind == "dot":
        scores = dot_scores(query, key)
    else:
        scores = scaled_dot_scores(query, key)
    return torch.softmax(scores, dim=-1)


def mean_top_weight(kind, d, *, n_keys=16, n_samples=200, generator=None):
    """The average largest weight max_j a_j of one query over ``n_keys`` random keys, width ``d``.

    Queries and keys are N(0, I_d), fresh for each of the ``n_samples`` samples (one set of
    parameters for 'additive' and 'general' per call). 1/n_keys means uniform weights; near
    1 means a saturated, almost one-hot softmax. Returns a float. Cost
    O(n_samples·n_keys·d) (times h for 'additive'). Explained in §1.3 and §2.2.
    """
    for value, name in ((d, "d"), (n_keys, "n_keys"), (n_samples, "n_samples")):
        _checks.positive(value, name, integer=True)
    _generator(generator)
    q = torch.randn(n_samples, 1, d, generator=generator, dtype=torch.float64)
    k = torch.randn(n_samples, n_keys, d, generator=generator, dtype=torch.float64)
    weights = score_weights(kind, q, k, generator=generator)          # (n_samples, 1, n_keys)
    return weights.amax(-1).mean().item()
