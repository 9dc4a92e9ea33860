"""Plots of attention weights: heatmaps, a grid of heads, arcs between tokens.

Kernels return tensors; these functions only draw them. Every function takes an ``ax``
(or a ``fig``) so that widgets can redraw into the same figure.
"""
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Arc

CMAP = "viridis"  # perceptually uniform and readable with colour-vision deficiencies


def _array(weights, name="weights", ndim=2):
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().numpy()
    weights = np.asarray(weights, dtype=float)
    if weights.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {weights.shape}")
    return weights


def _labels(labels, n, name):
    if labels is None:
        return [str(i) for i in range(n)]
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} labels but the weights have {n} positions")
    return labels


def heatmap(weights, x_labels=None, y_labels=None, *, ax=None, title=None, annotate=None,
            vmax=None, highlight_row=None, colorbar=False):
    """Draw an (Lq, Lk) weight matrix: rows are queries, columns keys; returns the image.

    ``annotate`` writes each weight (default: when the matrix has at most 36 cells);
    ``highlight_row`` frames one query's row. Explained in §2.1.
    """
    w = _array(weights)
    lq, lk = w.shape
    ax = ax if ax is not None else plt.gca()
    image = ax.imshow(w, cmap=CMAP, vmin=0.0, vmax=vmax if vmax is not None else max(w.max(), 1e-12),
                      aspect="auto")
    x_labels = _labels(x_labels, lk, "x_labels")
    crowded = sum(len(str(t)) + 1 for t in x_labels) > 4 * lk or lk > 8
    ax.set_xticks(range(lk), x_labels, rotation=90 if crowded else 0)
    ax.set_yticks(range(lq), _labels(y_labels, lq, "y_labels"))
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    if annotate is None:
        annotate = w.size <= 36
    if annotate:
        for (i, j), value in np.ndenumerate(w):
            ax.text(j, i, "", ha="center", va="center", fontsize=7)
    if highlight_row is not None:
        ax.add_patch(plt.Rectangle((-0.5, highlight_row - 0.5), lk, 1, fill=False,
                                   edgecolor="#ff7f0e", linewidth=2.5))
    set_heatmap(image, w, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="weight")
    return image


def set_heatmap(image, weights, *, vmax=None, highlight_row=None, title=None):
    """Update a :func:`heatmap` in place (data, annotations, highlighted row, title).

    Much cheaper than drawing a new heatmap: the axes, ticks and labels are kept.
    """
    w = _array(weights)
    if w.shape != image.get_array().shape:
        raise ValueError(f"weights have shape {w.shape} but the heatmap shows {image.get_array().shape}")
    image.set_data(w)
    top = vmax if vmax is not None else max(w.max(), 1e-12)
    image.set_clim(0.0, top)
    ax = image.axes
    for text, value in zip(ax.texts, w.ravel()):
        text.set_text(f"{value:.2f}".removeprefix("0"))
        text.set_color("black" if value > 0.6 * top else "white")
    if highlight_row is not None and ax.patches:
        ax.patches[0].set_y(highlight_row - 0.5)
    if title is not None:
        ax.set_title(title)
    return image


def head_grid(weights, x_labels=None, y_labels=None, *, fig=None, titles=None, ncols=4):
    """Draw per-head weights (h, Lq, Lk) side by side, one heatmap per head; returns the images.

    All heads share one colour scale, so their weights can be compared. Explained in §2.4.
    """
    w = _array(weights, ndim=3)
    h = w.shape[0]
    ncols = min(ncols, h)
    nrows = -(-h // ncols)
    fig = fig if fig is not None else plt.figure(figsize=(3 * ncols, 2.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    vmax = max(w.max(), 1e-12)
    images = []
    for i, ax in enumerate(axes):
        if i >= h:
            ax.axis("off")
            continue
        images.append(heatmap(w[i], x_labels, y_labels, ax=ax, vmax=vmax, annotate=False,
                              title=titles[i] if titles else f"head {i}"))
        if i % ncols:
            ax.set_ylabel("")
    return images


def _label_size(ax, tokens, *, largest=9.0, smallest=6.0):
    """The font size (points) at which ``tokens``, one per unit of the x axis, do not overlap:
    two neighbours of c₁ and c₂ characters need about (0.55·(c₁ + c₂)/2 + 0.8) font sizes
    (glyphs and their boxes) of the unit's width; clipped to [smallest, largest]."""
    fig = ax.get_figure()
    unit_points = ax.get_position().width * fig.get_figwidth() * 72 / max(len(tokens), 1)
    widest = max([(len(a) + len(b)) / 2 for a, b in zip(tokens, tokens[1:])] or [len(tokens[0])])
    return float(min(largest, max(smallest, unit_points / (0.55 * widest + 0.8))))


def arcs(weights, tokens, *, query=None, ax=None, title=None, threshold=0.02):
    """Draw self-attention (L, L) as arcs between tokens on a line, width ∝ weight.

    With ``query`` given, only that query's arcs are drawn, in a highlight colour.
    Arcs above the line go from a query to an earlier token, below to a later one.
    """
    w = _array(weights)
    if w.shape[0] != w.shape[1]:
        raise ValueError(f"arcs needs square self-attention weights, got shape {w.shape}")
    tokens = _labels(tokens, w.shape[0], "tokens")
    ax = ax if ax is not None else plt.gca()
    n = len(tokens)
    rows = range(n) if query is None else [query]
    colour = "#440154" if query is None else "#ff7f0e"
    for i in rows:
        for j in range(n):
            if i == j or w[i, j] < threshold:
                continue
            centre, width = (i + j) / 2, abs(i - j)
            upper = j < i
            ax.add_patch(Arc((centre, 0), width, width * 0.8, theta1=0 if upper else 180,
                             theta2=180 if upper else 360, color=colour,
                             alpha=float(min(1.0, 0.25 + w[i, j])), linewidth=0.5 + 6 * w[i, j]))
    size = _label_size(ax, tokens)
    for k, token in enumerate(tokens):
        ax.text(k, 0, token, ha="center", va="center", fontsize=size,
                bbox=dict(boxstyle="round,pad=0.2", fc="#fde725" if k == query else "white", ec="grey"))
    ax.set_xlim(-0.8, n - 0.2)
    ax.set_ylim(-n * 0.45, n * 0.45)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax


def png(fig, dpi=80, colors=128):
    """The figure rendered to PNG bytes (for ``ipywidgets.Image``), with a palette of
    at most ``colors`` colours: about a third of the size, so that a widget's
    precomputed frames keep notebooks and pages small."""
    import io

    from PIL import Image

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    rgb = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    buffer = io.BytesIO()
    rgb.quantize(colors, method=Image.Quantize.MEDIANCUT).save(buffer, format="png", optimize=False)
    return buffer.getvalue()
