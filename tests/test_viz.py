"""attnbook.viz: the plotted data equals the weights, labels are the tokens, bad input raises."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.image import AxesImage
from matplotlib.patches import Arc

from attnbook import viz

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def weights(lq=3, lk=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(lq, lk, generator=g), dim=-1)


def tick_texts(labels):
    return [t.get_text() for t in labels]


def test_heatmap_returns_an_image_of_the_weights_with_token_ticks():
    w = weights(3, 5)
    keys, queries = ["a", "b", "c", "d", "e"], ["x", "y", "z"]
    fig, ax = plt.subplots()
    image = viz.heatmap(w, keys, queries, ax=ax, title="T")
    assert isinstance(image, AxesImage) and image.axes is ax
    np.testing.assert_allclose(np.asarray(image.get_array()), w.numpy(), rtol=1e-6)
    assert tick_texts(ax.get_xticklabels()) == keys
    assert tick_texts(ax.get_yticklabels()) == queries
    assert ax.get_title() == "T" and ax.get_xlabel() == "key" and ax.get_ylabel() == "query"
    assert image.get_cmap().name == viz.CMAP == "viridis"
    assert image.get_clim() == (0.0, pytest.approx(float(w.max())))


def test_heatmap_annotations_show_each_weight():
    w = weights(3, 4)
    fig, ax = plt.subplots()
    viz.heatmap(w, ax=ax)  # 12 cells: annotated by default
    texts = ax.texts
    assert len(texts) == 12
    for text, value in zip(texts, w.flatten().tolist()):
        assert float(text.get_text()) == pytest.approx(value, abs=0.005)
    assert [(t.get_position()) for t in texts][:2] == [(0, 0), (1, 0)]


def test_heatmap_annotation_default_and_override():
    fig, (a, b, c) = plt.subplots(1, 3)
    viz.heatmap(weights(6, 7), ax=a)                  # 42 cells > 36: no annotation
    viz.heatmap(weights(6, 7), ax=b, annotate=True)
    viz.heatmap(weights(2, 2), ax=c, annotate=False)
    assert len(a.texts) == 0 and len(b.texts) == 42 and len(c.texts) == 0


def test_heatmap_default_labels_highlight_vmax_and_colorbar():
    w = weights(4, 6).double()
    fig, ax = plt.subplots()
    image = viz.heatmap(w.numpy(), ax=ax, vmax=1.0, highlight_row=2, colorbar=True)
    assert tick_texts(ax.get_xticklabels()) == [str(i) for i in range(6)]
    assert tick_texts(ax.get_yticklabels()) == [str(i) for i in range(4)]
    assert image.get_clim() == (0.0, 1.0)
    assert len(ax.patches) == 1 and ax.patches[0].get_y() == pytest.approx(1.5)
    assert len(fig.axes) == 2  # the colour bar


def test_heatmap_accepts_requires_grad_tensors_and_lists():
    w = weights(2, 3).requires_grad_(True)
    fig, ax = plt.subplots()
    image = viz.heatmap(w * 1, ax=ax)
    np.testing.assert_allclose(image.get_array(), w.detach().numpy(), rtol=1e-6)
    image = viz.heatmap([[0.5, 0.5], [1.0, 0.0]], ax=ax)
    np.testing.assert_allclose(image.get_array(), [[0.5, 0.5], [1.0, 0.0]])


def test_set_heatmap_updates_data_annotations_row_and_title():
    fig, ax = plt.subplots()
    image = viz.heatmap(weights(3, 4, seed=0), ax=ax, highlight_row=0)
    new = weights(3, 4, seed=1)
    same = viz.set_heatmap(image, new, highlight_row=2, title="new")
    assert same is image
    np.testing.assert_allclose(image.get_array(), new.numpy(), rtol=1e-6)
    for text, value in zip(ax.texts, new.flatten().tolist()):
        assert float(text.get_text()) == pytest.approx(value, abs=0.005)
    assert ax.patches[0].get_y() == pytest.approx(1.5)
    assert ax.get_title() == "new"
    assert image.get_clim()[1] == pytest.approx(float(new.max()))
    viz.set_heatmap(image, new, vmax=1.0)
    assert image.get_clim() == (0.0, 1.0)


def test_set_heatmap_rejects_another_shape():
    fig, ax = plt.subplots()
    image = viz.heatmap(weights(3, 4), ax=ax)
    with pytest.raises(ValueError, match="shape"):
        viz.set_heatmap(image, weights(4, 3))
    with pytest.raises(ValueError, match="weights"):
        viz.set_heatmap(image, torch.rand(2, 3, 4))


@pytest.mark.parametrize("h, ncols, grid", [(4, 2, (2, 2)), (3, 4, (1, 3)), (5, 2, (3, 2)), (1, 4, (1, 1))])
def test_head_grid_draws_one_image_per_head_on_a_shared_scale(h, ncols, grid):
    w = torch.softmax(torch.randn(h, 3, 5), dim=-1)
    fig = plt.figure()
    images = viz.head_grid(w, list("abcde"), list("xyz"), fig=fig, ncols=ncols)
    assert len(images) == h and all(isinstance(i, AxesImage) for i in images)
    assert len(fig.axes) == grid[0] * grid[1]
    for i, image in enumerate(images):
        np.testing.assert_allclose(image.get_array(), w[i].numpy(), rtol=1e-6)
        assert image.get_clim() == (0.0, pytest.approx(float(w.max())))
        assert image.axes.get_title() == f"head {i}"
        assert tick_texts(image.axes.get_xticklabels()) == list("abcde")
    hidden = [ax for ax in fig.axes if not ax.axison]
    assert len(hidden) == grid[0] * grid[1] - h


def test_head_grid_titles_and_own_figure():
    images = viz.head_grid(torch.rand(2, 2, 3), titles=["first", "second"])
    assert [i.axes.get_title() for i in images] == ["first", "second"]


def test_head_grid_rejects_wrong_rank():
    with pytest.raises(ValueError, match="weights"):
        viz.head_grid(weights(3, 4))


def _arc_count(ax):
    return sum(isinstance(p, Arc) for p in ax.patches)


def test_arcs_draw_one_arc_per_weight_above_threshold():
    w = weights(5, 5)
    tokens = list("abcde")
    fig, ax = plt.subplots()
    assert viz.arcs(w, tokens, ax=ax, title="arcs") is ax
    want = sum(1 for i in range(5) for j in range(5) if i != j and w[i, j] >= 0.02)
    assert _arc_count(ax) == want > 0
    assert [t.get_text() for t in ax.texts] == tokens
    assert ax.get_title() == "arcs"
    fig, ax = plt.subplots()
    viz.arcs(w, tokens, ax=ax, query=2, threshold=0.0)
    assert _arc_count(ax) == 4
    widths = sorted(p.get_linewidth() for p in ax.patches)
    assert widths == pytest.approx(sorted(0.5 + 6 * w[2, j].item() for j in range(5) if j != 2))


def test_arcs_direction_follows_the_order_of_tokens():
    w = torch.zeros(3, 3)
    w[2, 0] = 1.0   # query 2 -> earlier token 0: above the line
    w[0, 1] = 1.0   # query 0 -> later token 1: below the line
    fig, ax = plt.subplots()
    viz.arcs(w, list("abc"), ax=ax)
    arcs = {(p.center[0], p.width): (p.theta1, p.theta2) for p in ax.patches}
    assert arcs == {(1.0, 2): (0, 180), (0.5, 1): (180, 360)}


@pytest.mark.parametrize("call, name", [
    (lambda ax: viz.heatmap(weights(3, 5), list("abcd"), None, ax=ax), "x_labels"),
    (lambda ax: viz.heatmap(weights(3, 5), None, list("ab"), ax=ax), "y_labels"),
    (lambda ax: viz.heatmap(torch.rand(2, 3, 5), ax=ax), "weights"),
    (lambda ax: viz.heatmap(torch.rand(5), ax=ax), "weights"),
    (lambda ax: viz.head_grid(torch.rand(2, 3, 5), list("abc"), list("xyz"), fig=ax.figure), "x_labels"),
    (lambda ax: viz.arcs(weights(4, 4), list("abc"), ax=ax), "tokens"),
    (lambda ax: viz.arcs(weights(3, 4), list("abc"), ax=ax), "square"),
])
def test_wrong_label_counts_and_shapes_raise_value_error(call, name):
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=name):
        call(ax)


def test_png_returns_png_bytes_of_the_figure():
    fig, ax = plt.subplots(figsize=(2, 1.5))
    viz.heatmap(weights(), ax=ax)
    data = viz.png(fig, dpi=50)
    assert isinstance(data, bytes) and data.startswith(PNG_SIGNATURE)
    from io import BytesIO

    from PIL import Image

    image = Image.open(BytesIO(data))
    assert image.size == (100, 75)
    assert len(image.getcolors(256)) <= 128
    viz.set_heatmap(fig.axes[0].images[0], weights(seed=3))
    assert viz.png(fig, dpi=50) != data


def test_png_renders_a_figure_without_a_pyplot_canvas():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    viz.heatmap(weights(), ax=fig.add_subplot())
    assert viz.png(fig).startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("tokens, width", [
    ("[CLS] the animal didn ' t cross the street because it was too tired . [SEP]".split(), 8.5),
    ("[CLS] her three noisy dogs chased the tiny frightened rabbit . [SEP]".split(), 7.5),
])
def test_arc_labels_shrink_until_neighbours_do_not_overlap(tokens, width):
    fig, ax = plt.subplots(figsize=(width, 2))
    viz.arcs(torch.full((len(tokens), len(tokens)), 1 / len(tokens)), tokens, ax=ax)
    fig.canvas.draw()
    boxes = [t.get_bbox_patch().get_window_extent() for t in ax.texts]
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), "neighbouring labels overlap"
    assert 6 < min(t.get_fontsize() for t in ax.texts) < 9             # shrunk, above the floor
    plt.close(fig)


def test_arc_labels_keep_their_size_when_there_is_room():
    fig, ax = plt.subplots(figsize=(8, 2))
    viz.arcs(torch.eye(4), ["the", "cat", "sat", "."], ax=ax)
    assert {t.get_fontsize() for t in ax.texts} == {9.0}
    plt.close(fig)
