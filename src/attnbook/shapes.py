"""Synthetic images for the attention-inside-CNNs experiments of §3.6.

Every generator draws from a ``torch.Generator`` only, so the same seed gives the same
images on every machine, whatever the global seed. Images are float32 batches
(B, C, H, W) as ``torch.nn.Conv2d`` expects; masks are boolean (B, H, W), True = the
target; pixel labels are int64 (B, H, W). Heights and widths need not be equal.

Three tasks, one per mechanism of §3.6:

* :func:`cue_task`: read the stripes of channel A or of channel B, as a far-away cue says
  (squeeze-and-excitation, channel attention);
* :func:`shapes_task`: segment the discs among squares of the same brightness, on noise
  (attention gates in a U-Net);
* :func:`marker_task`: colour the objects in one corner with the colour of a marker in
  the opposite corner (non-local blocks, any-to-any dependencies).
"""
import numbers

import torch

from . import _checks

SHAPES = ("disc", "square")


def _generator(generator):
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def _size(size, name="size", minimum=1):
    """(H, W) from an int or a pair of ints, each at least ``minimum``."""
    pair = (size, size) if isinstance(size, numbers.Integral) and not isinstance(size, bool) else size
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be an int or a pair (H, W), got {size!r}")
    for side in pair:
        _checks.positive(side, name, integer=True)
        if side < minimum:
            raise ValueError(f"{name} must be at least {minimum} on each side, got {tuple(pair)}")
    return int(pair[0]), int(pair[1])


def _uniform_int(low, high, generator):
    """One integer drawn uniformly from low..high (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def shape_mask(kind, size, center, radius):
    """The pixels of one shape on an H × W grid: (H, W) boolean.

    ``kind`` "disc": (i - cy)² + (j - cx)² ≤ r²; "square": max(|i - cy|, |j - cx|) ≤ r,
    for pixel (row i, column j), centre (cy, cx) and radius r (half the side of a square).
    Parts outside the grid are cut off. Cost O(H·W). Used in §3.6.
    """
    if kind not in SHAPES:
        raise ValueError(f"kind must be one of {SHAPES}, got {kind!r}")
    height, width = _size(size)
    _checks.positive(radius, "radius")
    if not isinstance(center, (tuple, list)) or len(center) != 2:
        raise TypeError(f"center must be a pair (row, column), got {center!r}")
    rows = torch.arange(height, dtype=torch.float32)[:, None] - float(center[0])
    cols = torch.arange(width, dtype=torch.float32)[None, :] - float(center[1])
    if kind == "disc":
        return rows ** 2 + cols ** 2 <= radius ** 2
    return torch.maximum(rows.abs(), cols.abs()) <= radius


def _nonnegative(value, name):
    """Return ``value`` if it is a finite number ≥ 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def _range(pair, name, minimum):
    """(low, high) integers with ``minimum`` ≤ low ≤ high."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be a pair of ints (low, high), got {pair!r}")
    low, high = int(pair[0]), int(pair[1])
    if not minimum <= low <= high:
        raise ValueError(f"{name} must be a range (low, high) with {minimum} <= low <= high, got {tuple(pair)}")
    return low, high


def cue_task(n, generator, *, size=(12, 16), period=4, noise=0.5, cue=1.0, return_parts=False):
    """Two striped channels and a far-away cue that says which one to read: images (n, 3, H, W), labels (n,).

    Channels 0 and 1 (A and B) each hold stripes cos(2π·t/``period`` + phase) of amplitude 1
    in the right half of the image (columns j ≥ W//2): horizontal (orientation 0, t = the
    row i) or vertical (orientation 1, t = the column j), each channel with its own random
    orientation and phase. Channel 2 holds the cue: with probability 1/2 its left quarter
    (columns j < W//4) is raised by ``cue``. The label is the orientation of B's stripes
    when the cue is on, of A's when it is off. Gaussian noise of standard deviation
    ``noise`` is added to every channel. Cue and stripes are at least W//2 − W//4 + 1
    columns apart (5 for W = 16), so for W ≥ 16 no 5 × 5 window sees both: a two-layer CNN
    must join them through a global summary, as squeeze-and-excitation does.
    ``return_parts`` also returns orientations (n, 2) (column k for channel A, B) and cues
    (n,) in {0, 1}, with labels = orientations[arange(n), cues].
    Cost O(n·H·W). Used in §3.6 (squeeze-and-excitation).
    """
    _checks.positive(n, "n", integer=True)
    _checks.positive(period, "period")
    _checks.positive(cue, "cue")
    _nonnegative(noise, "noise")
    height, width = _size(size)
    if width < 4:
        raise ValueError(f"size {(height, width)} is too narrow: the cue (left quarter) and the stripes "
                         f"(right half) need a width of at least 4")
    generator = _generator(generator)
    orientations = torch.randint(2, (n, 2), generator=generator)
    cues = torch.randint(2, (n,), generator=generator)
    phase = 2 * torch.pi * torch.rand(n, 2, 1, 1, generator=generator)
    images = noise * torch.randn(n, 3, height, width, generator=generator)
    i = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    j = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    t = torch.where(orientations[:, :, None, None] == 1, j, i)                   # (n, 2, H, W)
    stripes = torch.cos(2 * torch.pi * t / period + phase)
    images[:, :2, :, width // 2:] += stripes[..., width // 2:]
    images[:, 2, :, :width // 4] += cue * cues[:, None, None].float()
    labels = orientations[torch.arange(n), cues]
    return (images, labels, orientations, cues) if return_parts else (images, labels)


def shapes_task(n, generator, *, size=32, objects=(3, 5), radius=(2, 4), noise=0.35, target="disc",
                return_shapes=False):
    """Discs and squares of one brightness on noise; the mask marks the ``target`` kind only.

    Each image holds a random number of shapes in ``objects`` (low, high), each a disc or a
    square (each kind with probability 1/2, at least one of the ``target`` kind) of integer
    radius in ``radius`` (low, high), centred anywhere on the grid, drawn with value 1 on a
    background of 0; then Gaussian noise of standard deviation ``noise`` is added. Where
    shapes overlap, the later shape decides the mask. Returns images (n, 1, H, W), masks
    (n, H, W) and, with ``return_shapes``, a list per image of (kind, (cy, cx), r) in
    drawing order. A disc and a square of one radius differ only near their corners, so a
    pixel's 3 × 3 neighbourhood rarely tells them apart: the shape as a whole does.
    Cost O(n·objects·H·W). Used in §3.6 (attention gates).
    """
    _checks.positive(n, "n", integer=True)
    if target not in SHAPES:
        raise ValueError(f"target must be one of {SHAPES}, got {target!r}")
    low, high = _range(objects, "objects", 1)
    r_low, r_high = _range(radius, "radius", 1)
    _nonnegative(noise, "noise")
    height, width = _size(size)
    generator = _generator(generator)
    images = torch.zeros(n, 1, height, width)
    masks = torch.zeros(n, height, width, dtype=torch.bool)
    drawn = []
    for b in range(n):
        count = _uniform_int(low, high, generator)
        kinds = [SHAPES[_uniform_int(0, 1, generator)] for _ in range(count)]
        kinds[_uniform_int(0, count - 1, generator)] = target
        shapes = []
        for kind in kinds:
            r = _uniform_int(r_low, r_high, generator)
            center = (_uniform_int(0, height - 1, generator), _uniform_int(0, width - 1, generator))
            pixels = shape_mask(kind, (height, width), center, r)
            images[b, 0][pixels] = 1.0
            masks[b][pixels] = kind == target
            shapes.append((kind, center, r))
        drawn.append(shapes)
    images += noise * torch.randn(images.shape, generator=generator)
    return (images, masks, drawn) if return_shapes else (images, masks)


def marker_task(n, generator, *, size=16, colours=2, corner=3, marker=1, density=0.3, noise=0.1):
    """Pixels in one corner take the colour of a marker in the opposite corner.

    Input (n, 1 + colours, H, W). Channel 0 holds the objects: each pixel of the
    bottom-right quadrant (rows ≥ H/2, columns ≥ W/2, halves rounded down) is an object,
    value 1, with probability ``density``. A ``marker`` × ``marker`` square lies at a random
    place inside the top-left ``corner`` × ``corner`` square, with value 1 in channel 1 + k
    for its colour k (uniform in 0..colours-1). Labels (n, H, W), int64: 1 + k on the object
    pixels, 0 elsewhere. Gaussian noise of standard deviation ``noise`` is added to every
    channel. Every object pixel lies at least H//2 − ``corner`` + 1 rows below and
    W//2 − ``corner`` + 1 columns to the right of every marker pixel: a CNN whose receptive
    field is smaller (a 5 × 5 window needs 3 or more) cannot know its colour. Returns (images, labels). Cost O(n·C·H·W). Used in §3.6 (non-local blocks).
    """
    _checks.positive(n, "n", integer=True)
    _checks.positive(colours, "colours", integer=True)
    _checks.positive(corner, "corner", integer=True)
    _checks.positive(marker, "marker", integer=True)
    if not isinstance(density, numbers.Real) or isinstance(density, bool) or not 0 <= density <= 1:
        raise ValueError(f"density must be a probability in [0, 1], got {density!r}")
    _nonnegative(noise, "noise")
    height, width = _size(size, minimum=2)
    if corner > min(height, width) // 2:
        raise ValueError(f"corner={corner} must fit in the top-left quadrant of a {height} × {width} image "
                         f"(at most {min(height, width) // 2})")
    if marker > corner:
        raise ValueError(f"marker={marker} must fit inside the corner square, corner={corner}")
    generator = _generator(generator)
    colour = torch.randint(colours, (n,), generator=generator)
    where = torch.randint(corner - marker + 1, (n, 2), generator=generator)     # top-left pixel of the marker
    objects = torch.zeros(n, height, width, dtype=torch.bool)
    quadrant = (n, height - height // 2, width - width // 2)
    objects[:, height // 2:, width // 2:] = torch.rand(quadrant, generator=generator) < density
    images = torch.zeros(n, 1 + colours, height, width)
    images[:, 0] = objects.float()
    rows = torch.arange(height)[None, :, None] - where[:, 0, None, None]           # (n, H, 1)
    cols = torch.arange(width)[None, None, :] - where[:, 1, None, None]            # (n, 1, W)
    square = (rows >= 0) & (rows < marker) & (cols >= 0) & (cols < marker)        # (n, H, W)
    images[torch.arange(n), 1 + colour] = square.float()
    labels = torch.where(objects, 1 + colour[:, None, None], 0)
    images += noise * torch.randn(images.shape, generator=generator)
    return images, labels
