"""Synthetic scenes for §1.1: a small animal in a cluttered meadow, whose class only its head shows.

Each scene is an RGB image (3, S, S) with values in [0, 1]: a noisy green background, an
animal (an elliptical body and a round head with two eyes) and clutter. The class is decided
by the ears alone: a *cat* (class 0) has two pointed ears standing up from the top of its
head, a *dog* (class 1) two floppy ears hanging down beside it. The clutter holds loose
pointed triangles and hanging lobes drawn in the same fur colours, and stones, so that
counting ear-like shapes over the whole image says little: a model has to look at the head.

Every random draw goes through one ``torch.Generator``, so the same seed gives the same
scenes. Alongside the images come pixel masks of the head (head, eyes and ears) and of the
ears, for measuring where a model looks.
"""
from typing import NamedTuple

import torch

from . import _checks

CLASSES = ("cat", "dog")  # 0: pointed ears up, 1: floppy ears hanging down
GRASS = (0.33, 0.52, 0.27)
FURS = ((0.62, 0.42, 0.22), (0.80, 0.58, 0.30), (0.55, 0.52, 0.50), (0.40, 0.30, 0.22))
STONE = (0.58, 0.58, 0.60)
EARS = ((0.95, 0.55, 0.68), (0.30, 0.18, 0.10))  # a cat's pink pointed ears, a dog's dark floppy ones
EYE = (0.05, 0.05, 0.05)


class Scenes(NamedTuple):
    """A batch of scenes: images (N, 3, S, S), labels (N,), head and ears masks (N, S, S)."""

    images: torch.Tensor
    labels: torch.Tensor
    head: torch.Tensor
    ears: torch.Tensor


def _uniform(low, high, n, generator):
    """n draws from U(low, high), shaped (n, 1, 1) to broadcast over the pixels."""
    return (low + (high - low) * torch.rand(n, generator=generator)).view(n, 1, 1)


def _ellipse(ys, xs, cy, cx, ry, rx):
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0


def _triangle_up(ys, xs, tip_y, cx, height, half_base):
    """A triangle with its tip at (tip_y, cx) and its base ``height`` rows lower."""
    depth = ys - tip_y
    return (depth >= 0) & (depth <= height) & ((xs - cx).abs() <= half_base * depth / height + 0.5)


def _paint(images, where, colour):
    """images (N, 3, S, S) take ``colour`` (N, 3, 1, 1) where ``where`` (N, S, S) is True."""
    where = where.unsqueeze(1)
    return torch.where(where, colour, images)


def _colours(palette, n, generator):
    """n colours (n, 3, 1, 1) drawn from ``palette``."""
    table = torch.tensor(palette)
    return table[torch.randint(len(palette), (n,), generator=generator)].view(n, 3, 1, 1)


def _ears(ys, xs, labels, hy, hx, r, g):
    """Pointed ears above the head for cats (label 0), floppy ears beside it for dogs (1)."""
    n = labels.shape[0]
    height, half, spread = _uniform(2.2, 3.2, n, g), _uniform(1.0, 1.6, n, g), _uniform(0.45, 0.65, n, g) * r
    tip = hy - r - height + 1.0
    cat = _triangle_up(ys, xs, tip, hx - spread, height, half) | _triangle_up(ys, xs, tip, hx + spread, height, half)
    length, width = _uniform(2.0, 2.8, n, g), _uniform(0.9, 1.3, n, g)
    dog = (_ellipse(ys, xs, hy + 0.8, hx - r - 0.2, length, width)
           | _ellipse(ys, xs, hy + 0.8, hx + r + 0.2, length, width))
    return torch.where(labels.view(n, 1, 1) == 0, cat, dog)


def _clutter_shapes(ys, xs, n, size, g):
    """One candidate clutter shape per scene: masks (n, S, S), centres (n, 1, 1) x2, kinds (n,)."""
    kind = torch.randint(3, (n,), generator=g).view(n, 1, 1)
    y, x = _uniform(2, size - 3, n, g), _uniform(2, size - 3, n, g)
    triangle = _triangle_up(ys, xs, y - 1.5, x, _uniform(2.2, 3.2, n, g), _uniform(1.0, 1.6, n, g))
    lobe = _ellipse(ys, xs, y, x, _uniform(2.0, 2.8, n, g), _uniform(0.9, 1.3, n, g))
    stone = _ellipse(ys, xs, y, x, _uniform(1.2, 2.2, n, g), _uniform(1.5, 2.5, n, g))
    shape = torch.where(kind == 0, triangle, torch.where(kind == 1, lobe, stone))
    return shape, y, x, kind


def _draw(labels, size, clutter, g, attempts=4):
    """Draw the scenes of ``labels`` (N,): images (N, 3, S, S), head (N, S, S), ears (N, S, S)."""
    n = labels.shape[0]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    images = torch.tensor(GRASS).view(1, 3, 1, 1) * _uniform(0.85, 1.15, n, g).unsqueeze(1)
    images = images + 0.06 * torch.randn(n, 3, size, size, generator=g)
    fur = _colours(FURS, n, g)
    # the animal: a head of radius r anywhere in the frame, its body (ry, rx) to the left or
    # right and below (the body may leave the frame; the head and ears never do)
    ry, rx, r = _uniform(2.2, 3.2, n, g), _uniform(4.0, 5.5, n, g), _uniform(2.6, 3.2, n, g)
    side = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).view(n, 1, 1)
    hx = r + 2.5 + (size - 6 - 2 * r) * torch.rand(n, 1, 1, generator=g)
    hy = r + 4.5 + (size - 8 - 2 * r) * torch.rand(n, 1, 1, generator=g)
    cx, cy = hx - side * (rx + 0.6 * r), hy + ry + 0.3 * r
    body, head = _ellipse(ys, xs, cy, cx, ry, rx), _ellipse(ys, xs, hy, hx, r, r)
    ears = _ears(ys, xs, labels, hy, hx, r, g) & ~head
    eyes = head & ((ys - (hy - 0.4)).abs() <= 0.5) & ((xs - (hx - 1.1)).abs().minimum((xs - (hx + 1.1)).abs()) <= 0.5)
    # clutter: loose ears of both kinds and stones, each kept 5 pixels clear of what is drawn
    taken = body | head | ears
    for _ in range(clutter):
        placed = torch.zeros(n, dtype=torch.bool)
        for _attempt in range(attempts):
            shape, y, x, kind = _clutter_shapes(ys, xs, n, size, g)
            free = ~(_ellipse(ys, xs, y, x, 5.0, 5.0) & taken).flatten(1).any(1) & ~placed
            palette = torch.tensor((*EARS, STONE))                      # by kind: 0, 1, 2
            colour = palette[kind.view(n)].view(n, 3, 1, 1) * _uniform(0.85, 1.1, n, g).unsqueeze(1)
            draw = shape & free.view(n, 1, 1)
            images = _paint(images, draw, colour)
            taken, placed = taken | draw, placed | free
    images = _paint(images, body, fur)
    images = _paint(images, ears, torch.tensor(EARS)[labels].view(n, 3, 1, 1))
    images = _paint(images, head, fur * 1.08)
    images = _paint(images, eyes, torch.tensor(EYE).view(1, 3, 1, 1))
    return images.clamp(0.0, 1.0), head | ears, ears


def make_scenes(count, *, size=32, clutter=5, labels=None, generator=None):
    """``count`` scenes of ``size`` × ``size`` pixels, half cats (0) and half dogs (1) on average.

    labels (count,) fixes the classes (0 or 1); otherwise each is a fair coin. ``clutter``
    loose shapes (ear-like triangles and lobes, stones) are scattered around the animal.
    Returns :class:`Scenes`: images (count, 3, size, size) in [0, 1], labels (count,) int64,
    head and ears masks (count, size, size) bool. Deterministic given ``generator``.
    Cost O(count · clutter · size²). Explained in §1.1.
    """
    _checks.positive(count, "count", integer=True)
    _checks.positive(size, "size", integer=True)
    if size < 24:
        raise ValueError(f"size must be at least 24 pixels to hold the animal, got {size}")
    if isinstance(clutter, bool) or not isinstance(clutter, int) or clutter < 0:
        raise ValueError(f"clutter must be an int >= 0, got {clutter!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if not isinstance(g, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if labels is None:
        labels = torch.randint(2, (count,), generator=g)
    else:
        if not isinstance(labels, torch.Tensor) or labels.shape != (count,):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels must be a tensor of shape ({count},), got {shape}")
        if ((labels != 0) & (labels != 1)).any():
            raise ValueError(f"labels must be 0 (cat) or 1 (dog), got values {labels.unique().tolist()}")
        labels = labels.long()
    images, head, ears = _draw(labels, size, clutter, g)
    return Scenes(images, labels, head, ears)


def patch_coverage(mask, patch_size):
    """Fraction of each patch covered by a pixel mask: mask (N, H, W) -> (N, H/P, W/P).

    c_{n,i,j} = mean of mask[n, iP:(i+1)P, jP:(j+1)P]. P must divide H and W. Used to
    measure how much attention falls on the head. Cost O(N·H·W). Explained in §1.1.
    """
    _checks.tensor(mask, "mask", min_dim=3, floating=False)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor, got dtype {mask.dtype}")
    if mask.dim() != 3:
        raise ValueError(f"mask must be (N, H, W), got shape {tuple(mask.shape)}")
    _checks.positive(patch_size, "patch_size", integer=True)
    n, h, w = mask.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide the mask's (H, W) = ({h}, {w})")
    p = patch_size
    return mask.float().view(n, h // p, p, w // p, p).mean(dim=(2, 4))
