"""Synthetic images of §3.6 against brute-force loops and against the properties the notebook relies on."""
import math

import pytest
import torch

from attnbook.shapes import SHAPES, cue_task, marker_task, shape_mask, shapes_task


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- shape_mask

@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("size, center, radius", [
    ((7, 11), (3, 5), 2), ((7, 11), (0, 10), 3), ((5, 4), (4, 0), 1.5), ((6, 9), (-1, 4), 2), ((1, 3), (0, 1), 1),
])
def test_shape_mask_matches_a_loop_over_pixels(kind, size, center, radius):
    H, W = size
    cy, cx = center
    if kind == "disc":
        inside = lambda i, j: (i - cy) ** 2 + (j - cx) ** 2 <= radius ** 2
    else:
        inside = lambda i, j: max(abs(i - cy), abs(j - cx)) <= radius
    want = torch.tensor([[inside(i, j) for j in range(W)] for i in range(H)])
    got = shape_mask(kind, size, center, radius)
    assert got.dtype == torch.bool and torch.equal(got, want)


def test_a_disc_fits_inside_the_square_of_the_same_radius():
    for r in (1, 2, 3, 4):
        disc, square = shape_mask("disc", (11, 13), (5, 6), r), shape_mask("square", (11, 13), (5, 6), r)
        assert (disc & ~square).sum() == 0 and square.sum() == (2 * r + 1) ** 2 > disc.sum()


@pytest.mark.parametrize("call, error, match", [
    (lambda: shape_mask("circle", 5, (2, 2), 1), ValueError, "kind must be one of"),
    (lambda: shape_mask("disc", 5, (2, 2), 0), ValueError, "radius"),
    (lambda: shape_mask("disc", 5, 2, 1), TypeError, "center must be a pair"),
    (lambda: shape_mask("disc", (5, 0), (2, 2), 1), ValueError, "size"),
    (lambda: shape_mask("disc", (5, 2, 3), (2, 2), 1), TypeError, "size must be an int or a pair"),
])
def test_shape_mask_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- cue_task (squeeze-and-excitation)

def test_cue_task_shapes_dtypes_and_labels():
    x, y, o, c = cue_task(64, gen(), size=(12, 16), return_parts=True)
    assert x.shape == (64, 3, 12, 16) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64 and o.shape == (64, 2) and c.shape == (64,)
    assert torch.equal(y, torch.where(c == 1, o[:, 1], o[:, 0]))
    assert set(y.tolist()) == {0, 1} and set(c.tolist()) == {0, 1}
    assert torch.equal(cue_task(64, gen())[0], x)                 # same seed, same images


def test_cue_task_depends_only_on_its_generator():
    torch.manual_seed(1)
    a = cue_task(8, gen(3))[0]
    torch.manual_seed(2)
    assert torch.equal(a, cue_task(8, gen(3))[0])
    assert not torch.equal(a, cue_task(8, gen(4))[0])


@pytest.mark.parametrize("size", [(12, 16), (9, 20), (6, 7)])
def test_cue_task_without_noise_is_exactly_its_definition(size):
    H, W = size
    x, y, o, c = cue_task(16, gen(1), size=size, noise=0.0, cue=1.5, period=4, return_parts=True)
    for b in range(16):
        assert torch.equal(x[b, 2, :, :W // 4], torch.full((H, W // 4), 1.5 * float(c[b])))
        assert x[b, 2, :, W // 4:].abs().max() == 0 and x[b, :2, :, :W // 2].abs().max() == 0
        for k in range(2):
            stripes = x[b, k, :, W // 2:]
            # horizontal stripes (0) are constant along each row, vertical ones (1) along each column
            along = stripes - stripes[:, :1] if o[b, k] == 0 else stripes - stripes[:1, :]
            assert along.abs().max() < 1e-6
            # a cosine of period 4: values four pixels apart are equal, two apart are opposite
            t = stripes[:, 0] if o[b, k] == 0 else stripes[0]
            assert torch.allclose(t[4:], t[:-4], atol=1e-5) and torch.allclose(t[2:], -t[:-2], atol=1e-5)
            assert t.abs().max() <= 1 + 1e-6


def test_cue_and_stripes_never_share_a_five_by_five_window():
    x = cue_task(32, gen(2), size=(12, 16), noise=0.0)[0]
    cue_cols = (x[:, 2].abs().sum((0, 1)) > 0).nonzero().flatten()
    stripe_cols = (x[:, :2].abs().sum((0, 1, 2)) > 0).nonzero().flatten()
    assert stripe_cols.min() - cue_cols.max() >= 5


def test_cue_task_noise_has_the_requested_spread():
    x = cue_task(256, gen(5), size=(12, 16), noise=0.5)[0]
    assert abs(x[:, :2, :, :8].std().item() - 0.5) < 0.02            # the left half of A, B: noise only


@pytest.mark.parametrize("call, error, match", [
    (lambda: cue_task(0, gen()), ValueError, "n must be"),
    (lambda: cue_task(4, 0), TypeError, "generator must be a torch.Generator"),
    (lambda: cue_task(4, gen(), size=(12, 3)), ValueError, "too narrow"),
    (lambda: cue_task(4, gen(), noise=-1.0), ValueError, "noise"),
    (lambda: cue_task(4, gen(), noise="a"), TypeError, "noise must be a number"),
    (lambda: cue_task(4, gen(), period=0), ValueError, "period"),
    (lambda: cue_task(4, gen(), cue=0), ValueError, "cue"),
])
def test_cue_task_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- shapes_task (attention gates)

@pytest.mark.parametrize("size", [(16, 24), (20, 12), 9])
@pytest.mark.parametrize("target", SHAPES)
def test_shapes_task_masks_follow_the_drawn_shapes(size, target):
    H, W = (size, size) if isinstance(size, int) else size
    x, m, drawn = shapes_task(12, gen(7), size=size, objects=(2, 4), radius=(1, 3), noise=0.0,
                              target=target, return_shapes=True)
    assert x.shape == (12, 1, H, W) and m.shape == (12, H, W) and m.dtype == torch.bool
    for b, shapes in enumerate(drawn):
        assert 2 <= len(shapes) <= 4 and any(kind == target for kind, _, _ in shapes)
        image, mask = torch.zeros(H, W), torch.zeros(H, W, dtype=torch.bool)
        for kind, (cy, cx), r in shapes:                        # repaint, later shapes on top
            assert kind in SHAPES and 1 <= r <= 3 and 0 <= cy < H and 0 <= cx < W
            for i in range(H):
                for j in range(W):
                    d = math.hypot(i - cy, j - cx) if kind == "disc" else max(abs(i - cy), abs(j - cx))
                    if d <= r:
                        image[i, j], mask[i, j] = 1.0, kind == target
        assert torch.equal(x[b, 0], image) and torch.equal(m[b], mask)


def test_shapes_task_noise_and_determinism():
    clean, _ = shapes_task(16, gen(0), size=(16, 24), noise=0.0)
    noisy, masks = shapes_task(16, gen(0), size=(16, 24), noise=0.3)
    assert abs((noisy - clean).std().item() - 0.3) < 0.02
    again, masks_again = shapes_task(16, gen(0), size=(16, 24), noise=0.3)
    assert torch.equal(noisy, again) and torch.equal(masks, masks_again)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(target="triangle"), ValueError, "target must be one of"),
    (dict(objects=(0, 2)), ValueError, "objects must be a range"),
    (dict(objects=(3, 2)), ValueError, "objects must be a range"),
    (dict(objects=3), TypeError, "objects must be a pair"),
    (dict(radius=(0, 2)), ValueError, "radius must be a range"),
    (dict(radius=(1.5, 2)), TypeError, "radius must be a pair of ints"),
    (dict(noise=-0.1), ValueError, "noise"),
    (dict(size=(0, 8)), ValueError, "size"),
])
def test_shapes_task_bad_input_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        shapes_task(2, gen(), **kwargs)


# ---------------------------------------------------------------- marker_task (non-local blocks)

@pytest.mark.parametrize("size, colours, corner, marker", [((10, 12), 2, 3, 2), ((16, 16), 3, 4, 1), ((9, 7), 2, 3, 3)])
def test_marker_task_without_noise_is_exactly_its_definition(size, colours, corner, marker):
    H, W = size
    x, y = marker_task(20, gen(3), size=size, colours=colours, corner=corner, marker=marker, noise=0.0)
    assert x.shape == (20, 1 + colours, H, W) and y.shape == (20, H, W) and y.dtype == torch.int64
    for b in range(20):
        objects = x[b, 0] == 1
        assert torch.equal(objects, y[b] > 0)
        assert not objects[:H // 2].any() and not objects[:, :W // 2].any()   # bottom-right quadrant only
        lit = [k for k in range(colours) if x[b, 1 + k].sum() > 0]
        assert len(lit) == 1                                      # one marker, one colour
        k = lit[0]
        rows, cols = (x[b, 1 + k] == 1).nonzero(as_tuple=True)
        assert len(rows) == marker ** 2 and rows.max() < corner and cols.max() < corner
        assert rows.max() - rows.min() == marker - 1 == cols.max() - cols.min()   # a square
        assert set(y[b][objects].tolist()) <= {1 + k}
        if objects.any():                                         # far from the marker
            i, j = objects.nonzero(as_tuple=True)
            assert i.min() - rows.max() >= H // 2 - corner + 1 and j.min() - cols.max() >= W // 2 - corner + 1


def test_marker_task_density_extremes_and_colour_balance():
    _, empty = marker_task(8, gen(), size=(10, 12), density=0.0)
    assert (empty == 0).all()
    x, full = marker_task(400, gen(), size=(10, 12), density=1.0, noise=0.0)
    assert (full[:, 5:, 6:] > 0).all() and (full[:, :5] == 0).all()
    colours = full[:, -1, -1]
    assert 0.4 < (colours == 1).float().mean().item() < 0.6     # both colours about equally often


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(corner=6), ValueError, "corner=6 must fit"),
    (dict(corner=2, marker=3), ValueError, "marker=3 must fit"),
    (dict(density=1.5), ValueError, "density"),
    (dict(colours=0), ValueError, "colours"),
    (dict(marker=1.5), TypeError, "marker"),
    (dict(noise=-1), ValueError, "noise"),
    (dict(size=1), ValueError, "size must be at least 2"),
])
def test_marker_task_bad_input_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        marker_task(2, gen(), **{"size": (10, 12), **kwargs})
