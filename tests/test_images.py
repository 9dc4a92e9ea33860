"""Synthetic images and pixel helpers (§3.4) against brute-force loops and masked full attention."""
import pytest
import torch
from support import randn

from attnbook import attention
from attnbook.axial import axial_attention, column_attention, row_attention
from attnbook.images import (BACKGROUND, KINDS, PALETTE, column_mask, pixel_weights, row_mask,
                             score_count, shapes_image)

SHAPES = [(1, 1), (3, 5), (4, 2), (6, 7)]


def brute_mask(H, W, rule):
    """m[(r, c), (r', c')] = rule(r, c, r', c') over pixels in row-major order, by a loop."""
    pixels = [(r, c) for r in range(H) for c in range(W)]
    return torch.tensor([[rule(*p, *q) for q in pixels] for p in pixels], dtype=torch.bool)


@pytest.mark.parametrize("H, W", SHAPES)
def test_row_and_column_masks_equal_their_definition(H, W):
    assert torch.equal(row_mask(H, W), brute_mask(H, W, lambda r, c, r2, c2: r == r2))
    assert torch.equal(column_mask(H, W), brute_mask(H, W, lambda r, c, r2, c2: c == c2))


@pytest.mark.parametrize("H, W", SHAPES)
def test_score_count_equals_the_allowed_entries_of_the_masks(H, W):
    allowed = {"full": H * W * H * W, "row": row_mask(H, W).sum().item(),
               "column": column_mask(H, W).sum().item()}
    allowed["axial"] = allowed["row"] + allowed["column"]
    assert {kind: score_count(H, W, kind) for kind in KINDS} == allowed


@pytest.mark.parametrize("H, W, heads", [(3, 5, 1), (4, 2, 2), (5, 6, 2)])
def test_pixel_weights_reproduce_each_pass_and_their_product_the_axial_output(H, W, heads):
    x = randn(2, H, W, 4)
    tokens = x.flatten(-3, -2).unflatten(-1, (heads, -1)).transpose(-3, -2)   # (2, h, HW, 4/h)
    rows, row_w = row_attention(x, heads=heads)
    out, (_, col_w) = axial_attention(x, heads=heads)
    M_row, M_col = pixel_weights(row_w, "row"), pixel_weights(col_w, "column")
    assert M_row.shape == M_col.shape == (2, heads, H * W, H * W)
    # the row pass is full attention under the row mask: same weights as a (HW, HW) matrix
    torch.testing.assert_close(M_row, attention(tokens, tokens, tokens, row_mask(H, W))[1])
    _, col_only = column_attention(rows, heads=heads)
    torch.testing.assert_close(M_col, pixel_weights(col_only, "column"))
    if heads == 1:   # one head: output = M_column @ M_row @ pixels
        composed = (M_col @ M_row)[:, 0] @ x.flatten(-3, -2)
        torch.testing.assert_close(composed.unflatten(-2, (H, W)), out)


def test_pixel_weights_entries_equal_a_loop():
    H, W = 3, 4
    _, (row_w, col_w) = axial_attention(randn(H, W, 2))
    M_row, M_col = pixel_weights(row_w, "row")[0], pixel_weights(col_w, "column")[0]
    for r in range(H):
        for c in range(W):
            for r2 in range(H):
                for c2 in range(W):
                    p, q = r * W + c, r2 * W + c2
                    assert M_row[p, q] == (row_w[r, 0, c, c2] if r == r2 else 0)
                    assert M_col[p, q] == (col_w[c, 0, r, r2] if c == c2 else 0)


def test_shapes_image_is_deterministic_non_square_and_in_range():
    image = shapes_image(10, 17, generator=torch.Generator().manual_seed(3))
    assert image.shape == (10, 17, 3) and image.dtype == torch.float32
    assert torch.equal(image, shapes_image(10, 17, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(image, shapes_image(10, 17, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(shapes_image(6, 9), shapes_image(6, 9, generator=torch.Generator().manual_seed(0)))
    assert image.min() >= 0 and image.max() <= 1


def test_shapes_image_uses_the_palette_and_draws_shapes():
    image = shapes_image(32, 48, shapes=3, dtype=torch.float64)
    colours = {tuple(round(v, 6) for v in p) for p in image.reshape(-1, 3).tolist()}
    allowed = {tuple(round(v, 6) for v in p) for p in (BACKGROUND, *PALETTE)}
    assert colours <= allowed
    assert 2 <= len(colours) <= 4   # the background and at most one colour per shape
    background = (image == torch.tensor(BACKGROUND, dtype=torch.float64)).all(-1)
    assert 0 < background.float().mean() < 1


@pytest.mark.parametrize("call, error", [
    (lambda: shapes_image(0, 5), ValueError),
    (lambda: shapes_image(4, 2.5), TypeError),
    (lambda: shapes_image(4, 5, shapes=0), ValueError),
    (lambda: shapes_image(4, 5, generator=0), TypeError),
    (lambda: row_mask(-1, 3), ValueError),
    (lambda: column_mask(3, 0), ValueError),
    (lambda: score_count(3, 4, "diagonal"), ValueError),
    (lambda: score_count(3, 0), ValueError),
    (lambda: pixel_weights(torch.rand(3, 1, 4, 4), "diagonal"), ValueError),
    (lambda: pixel_weights(torch.rand(3, 1, 4, 5), "row"), ValueError),
    (lambda: pixel_weights(torch.rand(4, 4), "row"), ValueError),
    (lambda: pixel_weights([[1.0]], "row"), TypeError),
])
def test_bad_input_raises(call, error):
    with pytest.raises(error):
        call()


def test_check_column_attention_accepts_the_reference_and_names_the_usual_mistakes(capsys):
    from attnbook.exercises import check_column_attention

    assert check_column_attention(column_attention)   # returns (output, weights): accepted
    assert not check_column_attention(lambda x: row_attention(x)[0])
    assert "rows" in capsys.readouterr().out
    assert not check_column_attention(lambda x: column_attention(x, scale=1.0)[0])
    assert "scale" in capsys.readouterr().out
    assert not check_column_attention(lambda x: column_attention(x)[0].transpose(-3, -2))
    assert "transpose" in capsys.readouterr().out
    assert not check_column_attention(lambda x: x)
    assert "differ" in capsys.readouterr().out
