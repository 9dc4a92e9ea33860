"""Biologically inspired attention: bottom-up saliency against a top-down, cue-driven query (§6.4).

In visual search a target defined by a feature (find the *orange* object) is found faster
when attention is biased towards that feature: the goal reweights the competition between the
objects in view (Desimone & Duncan, 1995; Wolfe's Guided Search, 1994). Without a goal,
attention follows *saliency*, how much a location differs from its surround (Itti, Koch &
Niebur, 1998). In a network the two differ only in where the query comes from: from the
task's cue (top-down, as in Anderson et al., 2018) or from nothing but the image.

:func:`search_scenes` draws small images of coloured glyphs on a grid, one of them brighter
than the rest, with a cue colour and the shape of the cued object as the answer.
:func:`saliency_map` is a fixed centre-surround saliency in the spirit of Itti et al.;
:class:`CuedSearchModel` attends over the grid cells with a query from the cue ("top-down")
or a learned query that ignores it ("bottom-up").

References (book/references.bib): ``itti1998model``, ``itti2001computational``,
``desimone1995neural``, ``wolfe1994guided``, ``anderson2018bottom``.
"""
import math
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks

# Okabe & Ito's palette: distinguishable with the common colour-vision deficiencies.
COLOURS = ("orange", "sky blue", "bluish green", "reddish purple")
PALETTE = torch.tensor([[0.902, 0.624, 0.000], [0.337, 0.706, 0.914],
                        [0.000, 0.620, 0.451], [0.800, 0.475, 0.655]])
SHAPES = ("square", "plus", "ring")
MODES = ("top-down", "bottom-up")

SearchScenes = namedtuple("SearchScenes", "images cells colours shapes bright cue target target_cell")
SearchScenes.__doc__ = """A batch of :func:`search_scenes`: images (N, 3, G·c, G·c) in [0, 1]; per object
(N, n): its grid cell, colour (index into COLOURS) and shape (index into SHAPES); bright (N,)
the cell of the object drawn at full intensity; cue (N,) the cued colour, target (N,) the shape of the
object of that colour and target_cell (N,) its cell."""


def glyphs(cell=5):
    """The three shapes as (3, c, c) 0/1 masks: a filled square, a plus and a ring. §6.4."""
    cell = _checks.at_least(cell, "cell", 5)
    g = torch.zeros(len(SHAPES), cell, cell)
    mid, lo, hi = cell // 2, 1, cell - 1
    g[0, lo:hi, lo:hi] = 1                                  # square, one pixel of margin
    g[1, mid, :] = 1
    g[1, :, mid] = 1                                        # plus, through the centre
    g[2, :, :] = 1
    g[2, lo:hi, lo:hi] = 0                                  # ring: the border of the cell
    return g


def search_scenes(count, *, grid=5, cell=5, objects=4, dim=0.4, noise=0.05, generator=None):
    """A batch of visual-search scenes: ``objects`` glyphs of distinct colours on a grid x grid board.

    Each object occupies its own cell (cells, colours without repeats, shapes uniform), drawn
    at intensity ``dim`` except one, drawn at 1: the salient distractor (or, by chance, the
    target). Uniform noise in [0, ``noise``) is added to every pixel. The cue is the colour of
    one of the objects, chosen uniformly; the answer is its shape.
    -> :class:`SearchScenes`. Cost O(N·G²·c²). Explained in §6.4.
    """
    count = _checks.at_least(count, "count", 1)
    grid, cell = _checks.at_least(grid, "grid", 2), _checks.at_least(cell, "cell", 5)
    objects = _checks.at_least(objects, "objects", 1)
    if objects > len(COLOURS) or objects > grid * grid:
        raise ValueError(f"objects={objects} must be at most {len(COLOURS)} (one per colour) "
                         f"and grid² = {grid * grid}")
    for name, value in (("dim", dim), ("noise", noise)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    _checks.generator(generator)
    rows = torch.arange(count)
    cells = torch.rand(count, grid * grid, generator=generator).argsort(-1)[:, :objects]
    colours = torch.rand(count, len(COLOURS), generator=generator).argsort(-1)[:, :objects]
    shapes = torch.randint(len(SHAPES), (count, objects), generator=generator)
    bright = torch.randint(objects, (count,), generator=generator)
    cued = torch.randint(objects, (count,), generator=generator)
    intensity = torch.full((count, objects), float(dim))
    intensity[rows, bright] = 1.0
    # every object as a (3, c, c) patch, placed into its cell of the (G², 3, c, c) board
    patches = glyphs(cell)[shapes][:, :, None] * PALETTE[colours][..., None, None] * intensity[..., None, None, None]
    board = torch.zeros(count, grid * grid, 3, cell, cell)
    board.scatter_(1, cells[..., None, None, None].expand_as(patches), patches)
    images = board.view(count, grid, grid, 3, cell, cell).permute(0, 3, 1, 4, 2, 5)
    images = images.reshape(count, 3, grid * cell, grid * cell)
    images = (images + noise * torch.rand(images.shape, generator=generator)).clamp(0.0, 1.0)
    return SearchScenes(images, cells, colours, shapes, cells[rows, bright], colours[rows, cued],
                        shapes[rows, cued], cells[rows, cued])


def cell_patches(images, cell):
    """Cut images (N, 3, G·c, G·c) into the G² cells, row by row: (N, G², 3·c·c). §6.4."""
    _checks.tensor(images, "images", min_dim=4)
    cell = _checks.at_least(cell, "cell", 1)
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or images.shape[2] % cell:
        raise ValueError(f"images must be (N, 3, S, S) with S a multiple of cell={cell}, got {tuple(images.shape)}")
    n, _, side, _ = images.shape
    g = side // cell
    return images.view(n, 3, g, cell, g, cell).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, 3 * cell * cell)


def saliency_map(images, cell):
    """Bottom-up saliency of each cell: Σ_f N(|f(cell) − mean of f over its neighbour cells|).

    Features f per cell (means over its pixels): intensity (r + g + b)/3 and two colour
    opponencies, r − g and b − (r + g)/2, as in Itti, Koch & Niebur (1998), on a single scale.
    The centre-surround contrast compares a cell with the mean of its (up to 8) neighbours;
    N divides each feature's map by its maximum over the image (a map of zeros stays zero).
    images (N, 3, G·c, G·c) -> (N, G²) in [0, 3], row by row. No learning and no goal: the
    same image always gives the same map. Cost O(N·G²·c²). Explained in §6.4.
    """
    patches = cell_patches(images, cell)
    n, cells, _ = patches.shape
    g = math.isqrt(cells)
    rgb = patches.view(n, cells, 3, -1).mean(-1)                                  # (N, G², 3)
    r, gr, b = rgb.unbind(-1)
    features = torch.stack([(r + gr + b) / 3, r - gr, b - (r + gr) / 2], 1).view(n, 3, g, g)
    ones = torch.ones(1, 1, 3, 3, dtype=features.dtype)
    ones[0, 0, 1, 1] = 0
    flat = features.reshape(n * 3, 1, g, g)
    total = F.conv2d(flat, ones, padding=1)
    neighbours = F.conv2d(torch.ones_like(flat[:1]), ones, padding=1)
    contrast = (flat - total / neighbours).abs().view(n, 3, cells)
    top = contrast.amax(-1, keepdim=True)
    return (contrast / torch.where(top > 0, top, torch.ones_like(top))).sum(1)


class CuedSearchModel(nn.Module):
    """Attention over the cells of a search image, with a top-down or a bottom-up query.

    For the cell patches p_j (3·c·c pixels): keys k_j = W_k p_j, values v_j = MLP(p_j). The
    query is q = W_q E_cue[cue] ("top-down": the goal sets the query) or a learned vector q_0
    that ignores the cue ("bottom-up": the same query for every goal). a = softmax_j(q·k_j/√D),
    r = Σ_j a_j v_j, and the shape is read out by an MLP from [r, E_cue[cue]], so both models
    know the cue; only the top-down one can use it to decide where to look.
    images (N, 3, G·c, G·c), cue (N,) -> logits (N, 3) and weights (N, G²).
    Cost O(N·G²·(c²·D)). Explained in §6.4.
    """

    def __init__(self, mode="top-down", *, cell=5, embed_dim=32, hidden=64):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.cell = mode, _checks.at_least(cell, "cell", 5)
        pixels = 3 * cell * cell
        self.key = nn.Linear(pixels, embed_dim)
        self.value = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))
        self.cue = nn.Embedding(len(COLOURS), embed_dim)
        if mode == "top-down":
            self.query = nn.Linear(embed_dim, embed_dim)
        else:
            self.query = nn.Parameter(0.1 * torch.randn(embed_dim))
        self.readout = nn.Sequential(nn.Linear(2 * embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, len(SHAPES)))

    def forward(self, images, cue):
        """(logits (N, 3), weights (N, G²))."""
        _checks.tensor(cue, "cue", floating=False)
        patches = cell_patches(images, self.cell)
        if cue.shape != (patches.shape[0],):
            raise ValueError(f"cue must be (N,) = ({patches.shape[0]},), got {tuple(cue.shape)}")
        if cue.numel() and (cue.min() < 0 or cue.max() >= len(COLOURS)):
            raise ValueError(f"cue must lie in 0..{len(COLOURS) - 1}")
        c = self.cue(cue)                                                     # (N, D)
        q = self.query(c) if self.mode == "top-down" else self.query.expand_as(c)
        scores = (self.key(patches) @ q[:, :, None]).squeeze(-1) / math.sqrt(q.shape[-1])
        weights = torch.softmax(scores, dim=-1)                               # (N, G²)
        read = (weights[:, :, None] * self.value(patches)).sum(1)
        return self.readout(torch.cat([read, c], -1)), weights


def search_loss(model, scenes):
    """Cross-entropy of the predicted shape; the ``loss_fn`` for :func:`attnbook.train.fit`. §6.4."""
    if not isinstance(scenes, SearchScenes):
        raise TypeError(f"scenes must be SearchScenes, got {type(scenes).__name__}")
    logits, _ = model(scenes.images, scenes.cue)
    return F.cross_entropy(logits, scenes.target)


SearchReport = namedtuple("SearchReport", "accuracy on_target on_distractor")
SearchReport.__doc__ = """accuracy of the shape; on_target, the mean attention weight on the cued object's
cell; on_distractor, the mean weight on the bright object's cell over the scenes where the bright
object is not the cued one (NaN if there is none); floats."""


@torch.no_grad()
def search_report(model, scenes):
    """Accuracy and where the attention goes: a :class:`SearchReport`. Cost one forward pass. §6.4."""
    if not isinstance(scenes, SearchScenes):
        raise TypeError(f"scenes must be SearchScenes, got {type(scenes).__name__}")
    logits, weights = model(scenes.images, scenes.cue)
    rows = torch.arange(len(scenes.cue))
    distracted = scenes.bright != scenes.target_cell
    on_distractor = weights[rows, scenes.bright][distracted].mean().item() if distracted.any() else float("nan")
    return SearchReport((logits.argmax(-1) == scenes.target).float().mean().item(),
                        weights[rows, scenes.target_cell].mean().item(), on_distractor)


def saliency_accuracy(scenes, saliency):
    """How often the shape in the most salient cell is the cued object's shape: the accuracy of a
    searcher that looks where saliency points and answers with what it finds there (an empty
    cell counts as wrong). saliency (N, G²). §6.4."""
    if not isinstance(scenes, SearchScenes):
        raise TypeError(f"scenes must be SearchScenes, got {type(scenes).__name__}")
    _checks.tensor(saliency, "saliency", min_dim=2)
    if saliency.shape[0] != len(scenes.cue):
        raise ValueError(f"saliency has {saliency.shape[0]} rows but there are {len(scenes.cue)} scenes")
    peak = saliency.argmax(-1)                                                    # (N,)
    found = scenes.cells == peak[:, None]                                         # (N, n)
    shape = torch.where(found, scenes.shapes, torch.full_like(scenes.shapes, -1)).amax(-1)
    return (shape == scenes.target).float().mean().item()


def search_explorer(scenes, saliency, models, *, pick=(0, 3), cell=5, figsize=(5.2, 2.6)):
    """A precomputed explorer: a search scene beside the attention map of one searcher.

    scenes from :func:`search_scenes`, saliency (N, G²) from :func:`saliency_map`, models a dict
    {"bottom-up": model, "top-down": model} of :class:`CuedSearchModel`; ``pick`` the scenes
    shown. Controls: scene, cue colour, searcher ("saliency", "bottom-up", "top-down"); the
    dashed square marks the object of the cued colour. Cost: len(pick)·len(COLOURS) forward
    passes, then one frame per combination of the controls. Explained in §6.4.
    """
    import ipywidgets as W
    from matplotlib.patches import Rectangle

    from .widgets import Explorer

    unknown = set(models) - {"bottom-up", "top-down"}
    if unknown:
        raise ValueError(f"models must be keyed 'bottom-up' and 'top-down', got {sorted(unknown)}")
    grid = scenes.images.shape[-1] // cell
    maps = {}
    with torch.no_grad():
        for c in range(len(COLOURS)):
            cues = torch.full((len(pick),), c)
            for mode, model in models.items():
                weights = model(scenes.images[list(pick)], cues)[1]
                for k, n in enumerate(pick):
                    maps[n, c, mode] = weights[k].view(grid, grid).numpy()
            for n in pick:
                maps[n, c, "saliency"] = (saliency[n] / saliency[n].max()).view(grid, grid).numpy()

    def draw(fig, scene, cue, method):
        n, c = pick[scene - 1], COLOURS.index(cue)
        target = scenes.cells[n][scenes.colours[n] == c].item()
        if not fig.axes:  # build the two panels once, then update them
            left, right = fig.subplots(1, 2)
            left.imshow(scenes.images[n].permute(1, 2, 0).numpy())
            left.add_patch(Rectangle((0, 0), cell, cell, fill=False, ec="white", lw=1.2, ls="--"))
            right.imshow(maps[n, c, method], cmap="viridis", vmin=0, vmax=1)  # one scale for all frames
            for ax in (left, right):
                ax.set(xticks=[], yticks=[])
            fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03, top=0.86, wspace=0.08)
        left, right = fig.axes
        left.images[0].set_data(scenes.images[n].permute(1, 2, 0).numpy())
        row, col = divmod(target, grid)
        left.patches[0].set_xy((cell * col - 0.5, cell * row - 0.5))
        shown = maps[n, c, method]
        right.images[0].set_data(shown)
        left.set_title(f"scene {scene}, cue: {cue}", fontsize=9)
        right.set_title(method + (" (scaled to max 1)" if method == "saliency" else
                                  f": {shown.flatten()[target]:.2f} on target"), fontsize=9)

    return Explorer(draw, {
        "scene": W.ToggleButtons(options=list(range(1, len(pick) + 1)), value=1, description="scene"),
        "cue": W.ToggleButtons(options=list(COLOURS), value=COLOURS[0], description="cue",
                               style={"button_width": "8.5em"}),
        "method": W.ToggleButtons(options=["saliency", *models], value="top-down", description="searcher"),
    }, figsize=figsize)
