"""attnbook.top_down (§6.4): search scenes, patches, centre-surround saliency, the cued search model."""
import pytest
import torch

from attnbook.top_down import (COLOURS, PALETTE, SHAPES, CuedSearchModel, SearchScenes, cell_patches, glyphs,
                               saliency_accuracy, saliency_map, search_loss, search_report, search_scenes)


def _scenes(count=6, seed=0, **kwargs):
    return search_scenes(count, generator=torch.Generator().manual_seed(seed), **kwargs)


# ---------------------------------------------------------------- scenes

def test_glyphs_are_three_distinct_shapes():
    g = glyphs(5)
    assert g.shape == (3, 5, 5) and set(g.unique().tolist()) == {0.0, 1.0}
    assert len({tuple(x.flatten().tolist()) for x in g}) == 3
    assert g[1, 2].all() and g[1, :, 2].all() and g[1].sum() == 9          # the plus
    assert g[2, 0].all() and g[2, 2, 2] == 0                                 # the ring is hollow


@pytest.mark.parametrize("grid, cell, objects", [(5, 5, 4), (3, 6, 2), (4, 5, 3)])
def test_scenes_draw_every_object_in_its_cell_by_brute_force(grid, cell, objects):
    s = _scenes(5, grid=grid, cell=cell, objects=objects, noise=0.0, dim=0.5)
    assert s.images.shape == (5, 3, grid * cell, grid * cell)
    shapes = glyphs(cell)
    for n in range(5):
        assert len(set(s.cells[n].tolist())) == objects and len(set(s.colours[n].tolist())) == objects
        drawn = torch.zeros(3, grid * cell, grid * cell)
        for o in range(objects):
            r, c = divmod(s.cells[n, o].item(), grid)
            level = 1.0 if s.cells[n, o] == s.bright[n] else 0.5
            patch = shapes[s.shapes[n, o]] * PALETTE[s.colours[n, o]][:, None, None] * level
            drawn[:, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = patch
        torch.testing.assert_close(s.images[n], drawn)
        o = (s.colours[n] == s.cue[n]).nonzero().item()
        assert s.target[n] == s.shapes[n, o] and s.target_cell[n] == s.cells[n, o]


def test_scenes_are_reproducible_noisy_and_use_every_colour_and_shape():
    a, b = _scenes(300, seed=1), _scenes(300, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert set(a.cue.tolist()) == set(range(len(COLOURS))) and set(a.target.tolist()) == set(range(len(SHAPES)))
    # the cued object is the bright one about a quarter of the time
    assert 0.15 < (a.target_cell == a.bright).float().mean() < 0.35


@pytest.mark.parametrize("kwargs, message", [
    (dict(objects=5), "objects=5"),
    (dict(dim=1.5), "dim"),
    (dict(cell=4), "cell"),
])
def test_scenes_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        search_scenes(2, **kwargs)


def test_cell_patches_match_a_loop():
    images = torch.rand(2, 3, 15, 15, generator=torch.Generator().manual_seed(2))
    p = cell_patches(images, 5)
    assert p.shape == (2, 9, 75)
    for n in range(2):
        for j in range(9):
            r, c = divmod(j, 3)
            torch.testing.assert_close(p[n, j], images[n, :, r * 5:(r + 1) * 5, c * 5:(c + 1) * 5].flatten())
    with pytest.raises(ValueError, match="multiple of cell=4"):
        cell_patches(images, 4)


# ---------------------------------------------------------------- saliency

def _saliency_loop(images, cell):
    """Centre-surround contrast, one cell at a time."""
    n, _, side, _ = images.shape
    g = side // cell
    out = torch.zeros(n, g * g)
    for b in range(n):
        mean = images[b].view(3, g, cell, g, cell).mean((2, 4))                    # (3, G, G)
        r, gr, bl = mean
        feats = torch.stack([(r + gr + bl) / 3, r - gr, bl - (r + gr) / 2])
        maps = torch.zeros(3, g, g)
        for y in range(g):
            for x in range(g):
                around = [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                          if (dy or dx) and 0 <= y + dy < g and 0 <= x + dx < g]
                for f in range(3):
                    maps[f, y, x] = (feats[f, y, x] - sum(feats[f, py, px] for py, px in around) / len(around)).abs()
        for f in range(3):
            top = maps[f].max()
            out[b] += (maps[f] / top if top > 0 else maps[f]).flatten()
    return out


def test_saliency_matches_a_loop():
    s = _scenes(3, seed=3)
    torch.testing.assert_close(saliency_map(s.images, 5), _saliency_loop(s.images, 5), atol=1e-5, rtol=1e-4)


def test_a_lone_object_is_the_most_salient_cell_and_a_blank_image_has_no_saliency():
    images = torch.zeros(1, 3, 25, 25)
    images[0, :, 10:15, 5:10] = PALETTE[1][:, None, None]                      # cell (2, 1) = 11
    assert saliency_map(images, 5).argmax().item() == 11
    assert (saliency_map(torch.zeros(1, 3, 25, 25), 5) == 0).all()


def test_saliency_is_drawn_to_the_bright_object_and_ignores_the_cue():
    s = _scenes(400, seed=4, dim=0.3)
    sal = saliency_map(s.images, 5)
    assert (sal.argmax(-1) == s.bright).float().mean() > 0.9
    # a searcher led by saliency finds the cued object's shape when the bright object is the cued one
    # (probability 1/4) or happens to share its shape (3/4 · 1/3): about 1/2
    assert abs(saliency_accuracy(s, sal) - 0.5) < 0.1


def test_saliency_accuracy_by_hand():
    s = _scenes(5, seed=5)
    sal = torch.zeros(5, 25)
    sal[torch.arange(5), s.target_cell] = 1.0                                   # always on the target
    assert saliency_accuracy(s, sal) == 1.0
    empty = [c for c in range(25) if c not in s.cells.flatten().tolist()][0]
    sal = torch.zeros(5, 25)
    sal[:, empty] = 1.0                                                         # an empty cell: never right
    if not (s.cells == empty).any():
        assert saliency_accuracy(s, sal) == 0.0
    with pytest.raises(ValueError, match="rows"):
        saliency_accuracy(s, torch.zeros(4, 25))


# ---------------------------------------------------------------- the model

@pytest.mark.parametrize("mode", ["top-down", "bottom-up"])
def test_model_shapes_and_weights(mode):
    s = _scenes(4, seed=6)
    model = CuedSearchModel(mode, embed_dim=16, hidden=32)
    logits, w = model(s.images, s.cue)
    assert logits.shape == (4, 3) and w.shape == (4, 25)
    torch.testing.assert_close(w.sum(-1), torch.ones(4))


def test_only_the_top_down_query_moves_with_the_cue():
    s = _scenes(4, seed=7)
    other = (s.cue + 1) % len(COLOURS)
    bottom_up = CuedSearchModel("bottom-up", embed_dim=16)
    torch.testing.assert_close(bottom_up(s.images, s.cue)[1], bottom_up(s.images, other)[1])
    assert not torch.equal(bottom_up(s.images, s.cue)[0], bottom_up(s.images, other)[0]), "the readout sees the cue"
    top_down = CuedSearchModel("top-down", embed_dim=16)
    assert (top_down(s.images, s.cue)[1] - top_down(s.images, other)[1]).abs().max() > 1e-4


def test_report_and_loss_by_hand():
    s = _scenes(8, seed=8)
    model = CuedSearchModel("top-down", embed_dim=16)
    logits, w = model(s.images, s.cue)
    r = search_report(model, s)
    assert r.accuracy == pytest.approx((logits.argmax(-1) == s.target).float().mean().item())
    assert r.on_target == pytest.approx(w[torch.arange(8), s.target_cell].mean().item())
    other = s.bright != s.target_cell
    assert 0 < other.sum() < 8
    assert r.on_distractor == pytest.approx(w[torch.arange(8), s.bright][other].mean().item())
    loss = search_loss(model, s)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, s.target).item())


def test_model_rejects_bad_input():
    with pytest.raises(ValueError, match="mode"):
        CuedSearchModel("sideways")
    s = _scenes(3)
    model = CuedSearchModel()
    with pytest.raises(ValueError, match="cue must be"):
        model(s.images, s.cue[:2])
    with pytest.raises(ValueError, match="0..3"):
        model(s.images, torch.tensor([0, 1, 4]))
    with pytest.raises(TypeError, match="SearchScenes"):
        search_loss(model, (s.images, s.cue))
    assert isinstance(s, SearchScenes)


def test_search_explorer_draws_one_frame_per_choice_and_switches_in_the_browser():
    from attnbook.top_down import search_explorer

    s = _scenes(4, seed=8)
    models = {"bottom-up": CuedSearchModel("bottom-up", embed_dim=16),
              "top-down": CuedSearchModel("top-down", embed_dim=16)}
    explorer = search_explorer(s, saliency_map(s.images, 5), models, pick=(0, 2))
    assert len(explorer.frames) == 2 * len(COLOURS) * 3
    first = explorer.current_frame().value
    explorer.controls["method"].value = "saliency"
    assert explorer.current_frame().value != first
    with pytest.raises(ValueError, match="models"):
        search_explorer(s, saliency_map(s.images, 5), {"sideways": models["top-down"]})
