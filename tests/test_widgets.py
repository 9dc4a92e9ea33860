"""attnbook.widgets driven from Python: frames, controls, jslinks, live redraws and the cache."""
import itertools
import math

import ipywidgets as W
import pytest
import torch
from ipywidgets.widgets.widget_link import Link

import attnbook.widgets as widgets
from attnbook.widgets import (MAX_FRAMES, AttentionExplorer, Explorer, head_control, heads_control,
                              mask_control, options_of, query_control, temperature_control, view_control)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOKENS = ["the", "cat", "sat", "down"]
SMALL = dict(figsize=(2.2, 1.7), dpi=40)  # fast frames: the tests compare bytes, not looks


def png(image):
    """The PNG bytes of an ipywidgets.Image (its value trait may hold a memoryview)."""
    return bytes(image.value)


def all_widgets():
    try:
        from ipywidgets.widgets.widget import _instances
    except ImportError:  # pragma: no cover - older ipywidgets
        _instances = W.Widget.widgets
    return list(_instances.values())


def qk(lq=4, lk=4, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(lq, d, generator=g), torch.randn(lk, d, generator=g)


def reference_weights(q, k, temperature, keep=None, heads=1):
    """softmax(Q_h K_hᵀ / √d_h / T) with masked keys removed, per head, by hand."""
    d = q.shape[1] // heads
    out = []
    for h in range(heads):
        s = q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / math.sqrt(d) / temperature
        if keep is not None:
            s = s.masked_fill(~keep, -math.inf)
        out.append(torch.softmax(s, dim=-1))
    return torch.stack(out)


def stacks(node):
    if isinstance(node, W.Stack):
        yield node
        for child in node.children:
            yield from stacks(child)


# ---------------------------------------------------------------- static AttentionExplorer

@pytest.fixture(scope="module")
def static():
    q, k = qk()
    # heads first: the axes are rebuilt once per number of heads, not once per frame
    return AttentionExplorer(q, k, TOKENS, controls=("heads", "mask"), **SMALL)


def test_static_has_one_distinct_png_frame_per_combination(static):
    shown = [static.controls[n] for n in static.shown]
    assert static.shown == ["heads", "mask"]
    count = math.prod(len(options_of(c)) for c in shown)
    assert count == 3 * 4 and len(static.frames) == count
    assert set(static.frames) == set(itertools.product(*(options_of(c) for c in shown)))
    values = [png(f) for f in static.frames.values()]
    assert all(isinstance(v, bytes) and v.startswith(PNG_SIGNATURE) for v in values)
    assert len(set(values)) == count


def test_static_controls_switch_the_current_frame(static):
    mask, heads = static.controls["mask"], static.controls["heads"]
    mask.value, heads.value = "none", 1
    first = static.current_frame()
    assert first is static.frames[(1, "none")]
    mask.value = "causal"
    assert static.current_frame() is static.frames[(1, "causal")]
    assert png(static.current_frame()) != png(first)
    heads.value = 4
    assert static.current_frame() is static.frames[(4, "causal")]
    mask.value = "sliding window"
    assert static.current_frame() is static.frames[(4, "sliding window")]
    mask.value, heads.value = "none", 1
    assert static.current_frame() is first


def test_static_frames_are_jslinked_to_the_controls(static):
    tree = list(stacks(static.view))
    assert len(tree) == 1 + 3  # one Stack for the heads, one per number of heads for the mask
    links = [w for w in all_widgets() if isinstance(w, Link) and w.target[0] in tree]
    assert len(links) == len(tree)
    for link in links:
        control, trait = link.source
        assert link.target[1] == "selected_index"
        assert control in (static.controls["mask"], static.controls["heads"])
        assert trait == "index"
    assert sum(link.source[0] is static.controls["mask"] for link in links) == 3
    assert static.widget.children[1] is static.view
    assert list(static.widget.children[0].children) == [static.controls["heads"], static.controls["mask"]]


def test_static_frames_equal_a_fresh_rendering_of_their_state(static):
    assert static.render(mask="causal", heads=2) == png(static.frames[(2, "causal")])
    assert static.render(mask="none", heads=1) == png(static.frames[(1, "none")])


def test_fixed_controls_use_values_and_are_not_shown():
    q, k = qk()
    ex = AttentionExplorer(q, k, TOKENS, controls=("mask",), values={"temperature": 4.0, "heads": 2}, **SMALL)
    assert ex.shown == ["mask"] and len(ex.frames) == 4
    assert ex.fixed["temperature"] == 4.0 and ex.state["heads"] == 2
    assert set(ex._cache) == {(4.0, m, 2) for m in ("none", "causal", "padding", "sliding window")}
    torch.testing.assert_close(ex._cache[(4.0, "causal", 2)],
                               reference_weights(q, k, 4.0, torch.ones(4, 4, dtype=torch.bool).tril(), 2))


def test_non_square_explorer_offers_no_arcs_and_uses_key_tokens():
    q, k = qk(3, 5)
    ex = AttentionExplorer(q, k, ["a", "b", "c"], key_tokens=list("vwxyz"), controls=("view",),
                           values={"heads": 2}, **SMALL)
    assert options_of(ex.controls["view"]) == ["heatmap", "heads"]
    assert len(ex.frames) == 2 and png(ex.frames[("heatmap",)]) != png(ex.frames[("heads",)])
    assert ex.key_tokens == list("vwxyz") and ex.tokens == ["a", "b", "c"]
    torch.testing.assert_close(ex.weights(1.0, "none", 1), reference_weights(q, k, 1.0))


def test_too_many_frames_raise_value_error():
    q, k = qk()
    with pytest.raises(ValueError, match="frames"):
        AttentionExplorer(q, k, TOKENS, controls=("temperature", "mask", "heads", "query"), **SMALL)
    assert 5 * 4 * 3 * 4 > MAX_FRAMES


@pytest.mark.parametrize("args, kwargs, error, name", [
    ((torch.randn(4, 4).long(), torch.randn(4, 4)), {}, TypeError, "query"),
    ((torch.randn(4, 4), [[0.0] * 4] * 4), {}, TypeError, "key"),
    ((torch.randn(1, 4, 4), torch.randn(4, 4)), {}, ValueError, "query"),
    ((torch.randn(4, 4), torch.randn(4)), {}, ValueError, "key"),
    ((torch.randn(4, 4), torch.randn(4, 3)), {}, ValueError, "width"),
    ((torch.randn(4, 4), torch.randn(4, 4), TOKENS[:3]), {}, ValueError, "tokens"),
    ((torch.randn(3, 4), torch.randn(5, 4), TOKENS[:3]), {"key_tokens": list("abcd")}, ValueError, "key_tokens"),
    ((torch.randn(4, 4), torch.randn(4, 4), TOKENS), {"controls": ("temperature", "colour")}, ValueError,
     "controls"),
])
def test_attention_explorer_rejects_bad_input(args, kwargs, error, name):
    with pytest.raises(error, match=name):
        AttentionExplorer(*args, **kwargs)


def test_attention_explorer_rejects_unknown_values():
    q, k = qk()
    with pytest.raises(ValueError, match="values"):
        AttentionExplorer(q, k, TOKENS, controls=("mask",), values={"temp": 2.0})


# ---------------------------------------------------------------- live AttentionExplorer

@pytest.fixture
def live():
    q, k = qk()
    return AttentionExplorer(q, k, TOKENS, controls=("temperature", "mask", "heads", "head", "query", "view"),
                             live=True, **SMALL)


def test_live_temperature_changes_the_png_and_caches_the_right_weights(live):
    assert isinstance(live.view, W.Image) and live.current_frame() is live.view
    before = png(live.view)
    assert before.startswith(PNG_SIGNATURE)
    live.controls["temperature"].value = 4.0
    assert png(live.view) != before and png(live.view).startswith(PNG_SIGNATURE)
    torch.testing.assert_close(live._cache[(4.0, "none", 1)], reference_weights(live.query, live.key, 4.0))
    live.controls["mask"].value = "causal"
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    torch.testing.assert_close(live._cache[(4.0, "causal", 1)],
                               reference_weights(live.query, live.key, 4.0, causal))
    live.controls["heads"].value = 2
    torch.testing.assert_close(live._cache[(4.0, "causal", 2)],
                               reference_weights(live.query, live.key, 4.0, causal, heads=2))


def test_live_every_control_redraws(live):
    seen = {png(live.view)}
    for name, value in [("view", "heads"), ("heads", 4), ("view", "heatmap"), ("head", 3), ("query", 2),
                        ("view", "arcs"), ("mask", "sliding window")]:
        live.controls[name].value = value
        assert png(live.view) not in seen, name
        seen.add(png(live.view))


def test_live_weights_are_computed_once_per_temperature_mask_heads(live, monkeypatch):
    calls = []
    real = widgets.masked_softmax

    def counting(*args, **kwargs):
        calls.append(kwargs.get("temperature"))
        return real(*args, **kwargs)

    monkeypatch.setattr(widgets, "masked_softmax", counting)
    c = live.controls
    c["temperature"].value = 2.0
    assert len(calls) == 1
    for name, value in [("view", "heads"), ("query", 3), ("head", 2), ("view", "arcs"), ("view", "heatmap")]:
        c[name].value = value
    assert len(calls) == 1  # view, head and query only redraw
    c["temperature"].value = 1.0   # computed before the patch, at construction
    c["temperature"].value = 2.0
    assert len(calls) == 1
    c["mask"].value = "padding"
    c["temperature"].value = 1.0
    assert calls == [2.0, 2.0, 1.0]
    assert live.weights(1.0, "padding", 1) is live.weights(1.0, "padding", 1)
    assert len(calls) == 3


def test_live_padding_and_window_masks_match_their_definitions():
    q, k = qk(4, 6)
    ex = AttentionExplorer(q, k, TOKENS, key_tokens=list("abcdef"), controls=("mask",), live=True, window=2,
                           **SMALL)
    pad = torch.arange(6) < 4   # default: the last third of the keys are padding
    torch.testing.assert_close(ex.weights(1.0, "padding", 1), reference_weights(q, k, 1.0, pad))
    window = (torch.arange(4)[:, None] - torch.arange(6)).abs() <= 2
    torch.testing.assert_close(ex.weights(0.5, "sliding window", 1), reference_weights(q, k, 0.5, window))


# ---------------------------------------------------------------- generic Explorer and controls

def _recording_draw(log):
    def draw(fig, letter, n):
        log.append((letter, n))
        fig.clear()
        fig.text(0.1, 0.5, f"{letter} {n}")
    return draw


def test_explorer_renders_every_combination_once_and_follows_its_controls():
    log = []
    controls = {"letter": W.Dropdown(options=["x", "y", "z"], value="y"), "n": W.IntSlider(min=0, max=3)}
    ex = Explorer(_recording_draw(log), controls, figsize=(1, 0.5))
    assert sorted(log) == sorted(itertools.product(["x", "y", "z"], range(4)))
    assert len(ex.frames) == 12 and len({png(f) for f in ex.frames.values()}) == 12
    assert ex.current_frame() is ex.frames[("y", 0)]
    controls["n"].value = 3
    controls["letter"].value = "z"
    assert ex.current_frame() is ex.frames[("z", 3)]
    links = [w for w in all_widgets() if isinstance(w, Link) and w.source[0] is controls["n"]]
    assert len(links) == 3 and all(link.source[1] == "value" for link in links)
    assert ex.state == {"letter": "z", "n": 3}


def test_explorer_fixed_and_live():
    log = []
    controls = {"letter": W.Dropdown(options=["x", "y"]), "n": W.IntSlider(min=0, max=2)}
    ex = Explorer(_recording_draw(log), controls, fixed={"letter": "y"}, figsize=(1, 0.5))
    assert ex.shown == ["n"] and sorted(log) == [("y", 0), ("y", 1), ("y", 2)]
    log.clear()
    controls = {"letter": W.Dropdown(options=["x", "y"]), "n": W.IntSlider(min=0, max=2)}
    ex = Explorer(_recording_draw(log), controls, live=True, figsize=(1, 0.5))
    before = png(ex.view)
    controls["n"].value = 2
    assert log == [("x", 0), ("x", 2)] and png(ex.view) != before


def test_explorer_rejects_bad_input():
    with pytest.raises(TypeError, match="draw"):
        Explorer("not callable", {})
    with pytest.raises(ValueError, match="min"):
        Explorer(lambda fig, n: None, {"n": W.IntSlider(min=1, max=3)})
    with pytest.raises(ValueError, match="frames"):
        Explorer(lambda fig, a, b: None, {"a": W.IntSlider(min=0, max=9), "b": W.IntSlider(min=0, max=9)})


def test_control_factories():
    t = temperature_control()
    assert isinstance(t, W.SelectionSlider) and t.value == 1.0 and list(t.options) == [0.25, 0.5, 1.0, 2.0, 4.0]
    m = mask_control()
    assert m.value == "none" and list(m.options) == ["none", "causal", "padding", "sliding window"]
    assert list(heads_control().options) == [1, 2, 4]
    assert options_of(head_control(3)) == [0, 1, 2] and options_of(query_control(5)) == [0, 1, 2, 3, 4]
    assert options_of(view_control()) == ["heatmap", "heads", "arcs"]
    assert [c.description for c in (t, m, heads_control(), head_control(2), query_control(2), view_control())] \
        == ["temperature", "mask", "heads", "head", "query", "view"]
