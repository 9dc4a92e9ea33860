"""The book's widgets: the same controls in every chapter, wired to :mod:`attnbook.viz`.

Controls: temperature, mask kind, number of heads, which head, query position, view
(weight heatmap, per-head grid, arcs between tokens). An :class:`Explorer` redraws one
reused matplotlib figure for the values of its controls, in one of two modes:

* ``live=True`` recomputes and redraws on every change (needs a running kernel);
* ``live=False`` (the default) renders one frame per combination of the controls up
  front and switches between them in the browser with ``jslink`` over nested ``Stack``
  widgets, so that the figure responds even in the static online book.
"""
import itertools

import ipywidgets as W
from matplotlib.figure import Figure

from . import _checks, viz
from .masks import KINDS, make_mask
from .multihead import split_heads
from .scores import scaled_dot_scores
from .softmax import masked_softmax

TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 4.0)
VIEWS = ("heatmap", "heads", "arcs")
CONTROLS = ("temperature", "mask", "heads", "head", "query", "view")
MAX_FRAMES = 64
STYLE = {"description_width": "initial"}
MARGINS = dict(left=0.16, right=0.97, bottom=0.14, top=0.86, wspace=0.35, hspace=0.5)


def temperature_control(value=1.0, options=TEMPERATURES):
    """A slider over softmax temperatures T (the logits are divided by T)."""
    return W.SelectionSlider(options=list(options), value=value, description="temperature",
                             style=STYLE)


def mask_control(value="none", options=KINDS):
    """A drop-down over mask kinds: none, causal, padding, sliding window."""
    return W.Dropdown(options=list(options), value=value, description="mask", style=STYLE)


def heads_control(value=1, options=(1, 2, 4)):
    """Buttons for the number of heads h that the width is split into."""
    return W.ToggleButtons(options=list(options), value=value, description="heads",
                           style={**STYLE, "button_width": "3em"})


def head_control(count, value=0):
    """A slider choosing which head to show (0 .. count-1)."""
    return W.IntSlider(min=0, max=count - 1, value=value, description="head", style=STYLE)


def query_control(count, value=0):
    """A slider choosing the query position whose weights are highlighted."""
    return W.IntSlider(min=0, max=count - 1, value=value, description="query", style=STYLE)


def view_control(value="heatmap", options=VIEWS):
    """Buttons for the view: weight heatmap, per-head grid, arcs between tokens."""
    return W.ToggleButtons(options=list(options), value=value, description="view",
                           style={**STYLE, "button_width": "6em"})


def options_of(control):
    """The values a control can take, in order (an IntSlider must start at 0)."""
    if hasattr(control, "options"):
        return list(control.options)
    if control.min != 0:
        raise ValueError(f"an IntSlider control must start at 0 to switch frames, got min={control.min}")
    return list(range(control.min, control.max + 1))


class Explorer:
    """A figure that follows its controls: ``draw(figure, **values)`` redraws it.

    ``controls`` maps a name (the keyword passed to ``draw``) to an ipywidgets control
    with discrete values: a selection widget (Dropdown, SelectionSlider, ToggleButtons)
    or an IntSlider from 0. ``fixed`` controls are passed to ``draw`` but not shown.
    Static mode (default) precomputes one PNG frame per combination of the shown
    controls, at most :data:`MAX_FRAMES`; live mode redraws on each change.
    """

    slow_controls = ()  # controls whose change rebuilds the figure rather than updating it

    def __init__(self, draw, controls, *, fixed=None, live=False, figsize=(4.4, 3.4), dpi=80):
        if not callable(draw):
            raise TypeError(f"draw must be callable, got {type(draw).__name__}")
        self._draw, self.controls, self.fixed = draw, dict(controls), dict(fixed or {})
        self.shown = [name for name in self.controls if name not in self.fixed]
        self.live, self.dpi = live, dpi
        self.figure = Figure(figsize=figsize)
        self.view = self._live_view() if live else self._static_view()
        self.widget = W.VBox([W.HBox([self.controls[n] for n in self.shown],
                                     layout=W.Layout(flex_flow="row wrap")), self.view])

    @property
    def state(self):
        """The value of every control (shown or fixed), as a dict."""
        return {**{n: c.value for n, c in self.controls.items()}, **self.fixed}

    def render(self, **values):
        """PNG bytes of the figure for ``values`` (missing controls keep their current value)."""
        self._draw(self.figure, **{**self.state, **values})
        return viz.png(self.figure, dpi=self.dpi)

    def update(self, change=None):
        """Live mode: redraw into the image for the current values of the controls."""
        self.view.value = self.render()

    def _live_view(self):
        self.view = W.Image(format="png")
        for name in self.shown:
            self.controls[name].observe(self.update, names="value")
        self.update()
        return self.view

    def _static_view(self):
        options = [options_of(self.controls[n]) for n in self.shown]
        count = 1
        for values in options:
            count *= len(values)
        if count > MAX_FRAMES:
            raise ValueError(f"controls {self.shown} need {count} frames; show fewer controls "
                             f"or fewer values (at most {MAX_FRAMES} frames)")
        # Render with the controls that rebuild the figure varying slowest (fewer rebuilds).
        order = sorted(self.shown, key=lambda n: n not in self.slow_controls)
        self.frames = {}
        for combo in itertools.product(*(options_of(self.controls[n]) for n in order)):
            values = dict(zip(order, combo))
            key = tuple(values[n] for n in self.shown)
            self.frames[key] = W.Image(value=self.render(**values), format="png")
        return self._nest(0, ())

    def _nest(self, depth, prefix):
        """Nested Stacks: the Stack at ``depth`` switches on control ``shown[depth]``."""
        if depth == len(self.shown):
            return self.frames[prefix]
        control = self.controls[self.shown[depth]]
        options = options_of(control)
        stack = W.Stack([self._nest(depth + 1, prefix + (v,)) for v in options],
                        selected_index=options.index(control.value))
        trait = "index" if hasattr(control, "index") else "value"
        W.jslink((control, trait), (stack, "selected_index"))  # in the browser, no kernel needed
        control.observe(lambda change, s=stack: setattr(s, "selected_index", change["new"]), names=trait)
        return stack

    def current_frame(self):
        """The image widget shown now: the live image, or the frame the Stacks select."""
        node = self.view
        while isinstance(node, W.Stack):
            node = node.children[node.selected_index]
        return node

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class AttentionExplorer(Explorer):
    """Explore a = softmax(mask(Q_h K_hᵀ / √d_h) / T) for fixed queries and keys.

    query (Lq, d) and key (Lk, d); the width d is split into 1, 2 or 4 heads (those that
    divide it). ``tokens`` label the queries (and the keys, unless ``key_tokens`` is
    given). ``controls`` names the controls shown, from :data:`CONTROLS`; ``values`` sets
    starting values. Weights are cached per (temperature, mask, heads), and the axes per
    (view, heads), so changing the view, head or query only redraws. Explained in §2.3.
    """

    slow_controls = ("view", "heads")

    def __init__(self, query, key, tokens=None, *, key_tokens=None, controls=("temperature", "mask"),
                 values=None, window=1, **kwargs):
        for name, t in (("query", query), ("key", key)):
            _checks.tensor(t, name, min_dim=2)
            if t.dim() != 2:
                raise ValueError(f"{name} must be 2-D (L, d), got shape {tuple(t.shape)}")
        if query.shape[1] != key.shape[1]:
            raise ValueError(f"query has width {query.shape[1]} but key has {key.shape[1]}")
        for arg, names in (("controls", controls), ("values", values or {})):
            unknown = set(names) - set(CONTROLS)
            if unknown:
                raise ValueError(f"{arg} must use names from {CONTROLS}, got {sorted(unknown)}")
        self.query, self.key, self.window = query.detach(), key.detach(), window
        lq, lk = query.shape[0], key.shape[0]
        self.tokens = viz._labels(tokens, lq, "tokens")
        self.key_tokens = viz._labels(key_tokens if key_tokens is not None else
                                      (tokens if lq == lk else None), lk, "key_tokens")
        head_counts = [h for h in (1, 2, 4) if query.shape[1] % h == 0]
        all_controls = {
            "temperature": temperature_control(),
            "mask": mask_control(),
            "heads": heads_control(options=head_counts),
            "head": head_control(max(head_counts)),
            "query": query_control(lq),
        }
        for name, value in (values or {}).items():
            if name != "view":
                all_controls[name].value = value
        # the per-head grid only differs from the heatmap when there can be several heads;
        # arcs need self-attention (as many keys as queries)
        views = [v for v in VIEWS if (v != "heads" or "heads" in controls or all_controls["heads"].value > 1)
                 and (v != "arcs" or lq == lk)]
        all_controls["view"] = view_control(options=views)
        if "view" in (values or {}):
            all_controls["view"].value = values["view"]
        self.highlight = "query" in controls
        self._cache, self._scene = {}, None
        fixed = {n: c.value for n, c in all_controls.items() if n not in controls}
        ordered = {n: all_controls[n] for n in controls}
        ordered.update({n: all_controls[n] for n in fixed})
        super().__init__(self.draw, ordered, fixed=fixed, **kwargs)

    def weights(self, temperature, mask, heads):
        """Per-head weights (h, Lq, Lk), computed once per (temperature, mask, heads)."""
        key = (temperature, mask, heads)
        if key not in self._cache:
            scores = scaled_dot_scores(split_heads(self.query, heads), split_heads(self.key, heads))
            m = make_mask(mask, self.query.shape[0], self.key.shape[0], window=self.window)
            self._cache[key] = masked_softmax(scores, m, temperature=temperature)
        return self._cache[key]

    def draw(self, fig, temperature, mask, heads, head, query, view):
        """Draw one state into ``fig``: build the axes once per (view, heads), then update them."""
        w = self.weights(temperature, mask, heads)
        head = min(head, heads - 1)
        label = f"T = {temperature:g}, mask: {mask}"
        if self._scene is None or self._scene[0] != (view, heads):
            fig.clear()
            if view == "heads":
                images = viz.head_grid(w, self.key_tokens, self.tokens, fig=fig, ncols=2)
            elif view == "heatmap":
                images = [viz.heatmap(w[head], self.key_tokens, self.tokens, ax=fig.add_subplot(),
                                      highlight_row=0 if self.highlight else None)]
            else:
                images = [fig.add_subplot()]
            fig.subplots_adjust(**MARGINS)
            self._scene = ((view, heads), images)
        images = self._scene[1]
        if view == "heads":
            vmax = max(float(w.max()), 1e-12)
            for i, image in enumerate(images):
                viz.set_heatmap(image, w[i], vmax=vmax)
            fig.suptitle(label, fontsize=9)
        elif view == "heatmap":
            viz.set_heatmap(images[0], w[head], highlight_row=query,
                            title=f"head {head} of {heads}; {label}" if heads > 1 else label)
        else:
            images[0].clear()
            viz.arcs(w[head], self.tokens, query=query, ax=images[0],
                     title=f"query {query} ({self.tokens[query]})" + (f", head {head}" if heads > 1 else "")
                     + f"; {label}")
