"""Synthetic images and small helpers for attention over pixels (§3.4).

An image of coloured shapes to attend over (generated, nothing is downloaded); the boolean
masks under which full attention over the H·W pixels becomes a row pass or a column pass;
the (HW, HW) pixel-to-pixel matrix of one axial pass, so that two passes compose by a
matrix product; and the exact number of query-key scores each kind of attention computes.
Pixels are flattened in row-major order: pixel (r, c) is token r·W + c.
"""
import torch

from . import _checks

KINDS = ("full", "row", "column", "axial")
PALETTE = (  # distinct colours for the shapes, on a dark background
    (0.90, 0.25, 0.20), (0.20, 0.70, 0.30), (0.25, 0.45, 0.95),
    (0.95, 0.80, 0.20), (0.20, 0.80, 0.85), (0.80, 0.35, 0.80),
)
BACKGROUND = (0.12, 0.12, 0.16)


def _side(value, name):
    return _checks.positive(value, name, integer=True)


def shapes_image(height, width, *, shapes=4, generator=None, dtype=torch.float32):
    """An RGB image (H, W, 3) in [0, 1]: ``shapes`` discs and rectangles on a dark background.

    Kinds, centres, sizes and colours (from :data:`PALETTE`) are drawn from ``generator``
    (a torch.Generator; None: a fresh one seeded with 0), with lengths in units of the
    shorter side, so a seed gives the same scene at every resolution of one aspect ratio.
    Later shapes cover earlier ones. Cost O(shapes·H·W). Used in §3.4.
    """
    _side(height, "height"), _side(width, "width")
    _checks.positive(shapes, "shapes", integer=True)
    generator = _checks.generator(generator, default_seed=0)
    unit = min(height, width)   # lengths in units of the shorter side: discs stay round
    rows = ((torch.arange(height, dtype=torch.float64) + 0.5) / unit)[:, None]   # (H, 1)
    cols = ((torch.arange(width, dtype=torch.float64) + 0.5) / unit)[None, :]    # (1, W)
    extent = torch.tensor([height / unit, width / unit], dtype=torch.float64)
    image = torch.tensor(BACKGROUND, dtype=torch.float64).expand(height, width, 3).clone()
    colours = torch.randperm(len(PALETTE), generator=generator)
    for i in range(shapes):
        disc, centre, size = (torch.rand(1, generator=generator).item() < 0.5,
                              torch.rand(2, generator=generator, dtype=torch.float64),
                              torch.rand(2, generator=generator))
        centre = (0.15 + 0.7 * centre) * extent   # away from the border
        if disc:
            radius = 0.12 + 0.16 * size[0].item()
            inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2
        else:
            half_h, half_w = 0.08 + 0.17 * size[0].item(), 0.08 + 0.17 * size[1].item()
            inside = ((rows - centre[0]).abs() <= half_h) & ((cols - centre[1]).abs() <= half_w)
        image[inside] = torch.tensor(PALETTE[colours[i % len(PALETTE)]], dtype=torch.float64)
    return image.to(dtype)


def row_mask(height, width, *, device=None):
    """Boolean (HW, HW) mask m[(r, c), (r', c')] = (r = r'): a pixel may attend to its row.

    Full attention over the HW flattened pixels with this mask is row attention (§3.4).
    Memory O((HW)²): for small images and checks.
    """
    _side(height, "height"), _side(width, "width")
    r = torch.arange(height * width, device=device) // width
    return r[:, None] == r[None, :]


def column_mask(height, width, *, device=None):
    """Boolean (HW, HW) mask m[(r, c), (r', c')] = (c = c'): a pixel may attend to its column.

    Full attention over the HW flattened pixels with this mask is column attention (§3.4).
    Memory O((HW)²): for small images and checks.
    """
    _side(height, "height"), _side(width, "width")
    c = torch.arange(height * width, device=device) % width
    return c[:, None] == c[None, :]


def pixel_weights(weights, axis):
    """The (..., heads, HW, HW) matrix M of one axial pass over pixels: output = M · input.

    axis="row": ``weights`` (..., H, heads, W, W) of :func:`attnbook.axial.row_attention`,
    M[(r, c), (r, c')] = a_r[c, c'] and 0 outside the row.
    axis="column": ``weights`` (..., W, heads, H, H) of ``column_attention``,
    M[(r, c), (r', c)] = b_c[r, r'] and 0 outside the column.
    Two passes compose by a product: (M_column @ M_row)[(r, c), (r', c'')] = b_c[r, r']·a_r'[c, c''].
    Cost O((HW)²) time and memory: for small images and pictures. Explained in §3.4.
    """
    _checks.tensor(weights, "weights", min_dim=4)
    if axis not in ("row", "column"):
        raise ValueError(f"axis must be 'row' or 'column', got {axis!r}")
    n, length = weights.shape[-4], weights.shape[-1]   # lines of the pass, tokens per line
    if weights.shape[-2] != length:
        raise ValueError(f"weights must be (..., lines, heads, L, L), got shape {tuple(weights.shape)}")
    eye = torch.eye(n, dtype=weights.dtype, device=weights.device)
    if axis == "row":   # weights (..., H, h, W, W): block-diagonal in the row index
        full = torch.einsum("...rhab,rs->...hrasb", weights, eye)
    else:               # weights (..., W, h, H, H): the column index is kept, rows are mixed
        full = torch.einsum("...chab,cd->...hacbd", weights, eye)
    pixels = n * length
    return full.reshape(*full.shape[:-4], pixels, pixels)


def score_count(height, width, kind="axial"):
    """Number of query-key scores one layer computes on an H×W image (per head and batch item).

    full: (HW)²; row: H·W² (each of the HW pixels against its row); column: W·H²;
    axial (row then column): H·W·(H + W). For a square side n: n⁴ against 2n³. §3.4.
    """
    _side(height, "height"), _side(width, "width")
    counts = {"full": (height * width) ** 2, "row": height * width ** 2,
              "column": width * height ** 2}
    counts["axial"] = counts["row"] + counts["column"]
    if kind not in counts:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return counts[kind]
