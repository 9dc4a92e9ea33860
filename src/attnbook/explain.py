"""Explaining a tiny ViT whose evidence is known: maps, scores and attention edits (§5.4).

The scenes of §1.1 (:mod:`attnbook.scenes`) decide their class by the ears alone, and their
``ears`` mask says where that evidence lies. A tiny Vision Transformer trained on them can be
explained by every method of :mod:`attnbook.interpret`, and each explanation *scored* against
the ears: the share of its mass on them, and whether its peak lands on them (the pointing game).
All maps are compared on the patch grid of the ViT, (B, rows, cols), patch (r, c) being token
1 + r·cols + c after the class token.

The last part asks whether attention weights are an explanation at all: it recomputes the ViT
with edited attention (:func:`forward_with_attention`), searches for a different class-token
attention with the same output (:func:`alternative_attention`, after Jain and Wallace, 2019)
and weighs each attended token by the norm of what it sends (:func:`value_norms`, after
Kobayashi et al., 2020).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .multihead import merge_heads, split_heads
from .vision import ViT

CMAP = "viridis"


# --- the model --------------------------------------------------------------------------------

class SceneViT(nn.Module):
    """logits = ViT((x − μ) / σ): the ViT of §4.4 behind a fixed per-channel standardisation.

    ``images`` (N, C, H, W), the training images, fix μ and σ (C,) and the image size; the ViT
    cuts H × W into ``patch_size``² patches (``grid`` = (H/P, W/P)), has ``depth`` blocks of
    ``heads`` heads of width ``embed_dim`` and a class token. Standardising the inputs lets the
    tiny model train in a few hundred steps. forward: images (B, C, H, W) -> logits (B, classes);
    :meth:`attention` gives the weights of every layer. Cost: that of the ViT. Explained in §5.4.
    """

    def __init__(self, images, *, patch_size=4, embed_dim=32, depth=2, heads=4, mlp_ratio=2.0, classes=2):
        super().__init__()
        _checks.tensor(images, "images", min_dim=4)
        if images.dim() != 4 or images.shape[0] < 2:
            raise ValueError(f"images must be a batch (N, C, H, W) with N >= 2 to measure the mean and "
                             f"spread of each channel, got shape {tuple(images.shape)}")
        channels, height, width = images.shape[1:]
        std = images.std(dim=(0, 2, 3))
        if not (std > 0).all():
            raise ValueError(f"every channel of images must vary to be standardised; the spreads are "
                             f"{[round(s, 4) for s in std.tolist()]}")
        self.register_buffer("mean", images.mean(dim=(0, 2, 3)).view(1, channels, 1, 1).clone())
        self.register_buffer("std", std.view(1, channels, 1, 1).clone())
        self.vit = ViT((height, width), patch_size, channels, classes, embed_dim, depth, heads,
                       mlp_ratio=mlp_ratio)
        self.grid = (height // patch_size, width // patch_size)
        self.patch_size, self.heads = patch_size, heads

    def standardise(self, images):
        """(x − μ) / σ per channel: images (B, C, H, W) -> (B, C, H, W)."""
        _checks.tensor(images, "images", min_dim=4)
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.mean.shape[1], *self.vit.embed.image_size):
            raise ValueError(f"images must be (B, {self.mean.shape[1]}, {self.vit.embed.image_size[0]}, "
                             f"{self.vit.embed.image_size[1]}), got shape {tuple(images.shape)}")
        return (images - self.mean) / self.std

    def forward(self, images):
        """Logits (B, classes)."""
        return self.vit(self.standardise(images))[0]

    def attention(self, images):
        """The attention weights of every layer, first layer first: a list of (B, heads, N+1, N+1)."""
        with torch.no_grad():
            return self.vit(self.standardise(images))[1]


def log_odds(logits):
    """s_c = log p_c / (1 − p_c) = l_c − log Σ_{j≠c} exp(l_j), with p = softmax(l).

    logits (B, C) -> (B, C), C ≥ 2; for two classes s_c = l_c − l_other. Unlike a single logit,
    s_c does not change when the same number is added to every logit, so an attribution of s_c
    keeps only what separates class c from the others. Cost O(B·C²). Explained in §5.4.
    """
    _checks.tensor(logits, "logits", min_dim=2)
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (B, C) with C >= 2 classes, got shape {tuple(logits.shape)}")
    classes = logits.shape[1]
    others = ~torch.eye(classes, dtype=torch.bool, device=logits.device)            # (C, C): j ≠ c
    spread = logits[:, None, :].expand(-1, classes, -1).masked_fill(~others, float("-inf"))
    return logits - torch.logsumexp(spread, dim=-1)


class LogOdds(nn.Module):
    """images -> log_odds(model(images)): the scores that §5.4 explains, as a module (for hooks).

    ``model`` maps images (B, C, H, W) to logits (B, classes). Explained in §5.4.
    """

    def __init__(self, model):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model

    def forward(self, images):
        return log_odds(self.model(images))


# --- maps on the patch grid -------------------------------------------------------------------

def pixel_relevance(attributions):
    """r[b, i, j] = |Σ_c a[b, c, i, j]|: the size of a pixel's attribution, channels summed first.

    attributions (B, C, H, W) -> (B, H, W). Summing before the absolute value lets the colour
    channels of one pixel cancel, as they do in the model's score. Cost O(B·C·H·W). §5.4.
    """
    _checks.tensor(attributions, "attributions", min_dim=4)
    if attributions.dim() != 4:
        raise ValueError(f"attributions must be (B, C, H, W), got shape {tuple(attributions.shape)}")
    return attributions.sum(dim=1).abs()


def to_patches(maps, patch_size):
    """m[b, r, c] = mean of maps[b] over patch (r, c): (B, H, W) -> (B, H/P, W/P).

    Puts pixel maps (gradients, occlusion, Grad-CAM) on the ViT's patch grid, where attention
    lives. P must divide H and W. Cost O(B·H·W). Explained in §5.4.
    """
    _checks.tensor(maps, "maps", min_dim=3)
    _checks.positive(patch_size, "patch_size", integer=True)
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {tuple(maps.shape)}")
    b, h, w = maps.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide the maps' (H, W) = ({h}, {w})")
    p = patch_size
    return maps.reshape(b, h // p, p, w // p, p).mean(dim=(2, 4))


def cls_attention(weights, grid):
    """a[b, k, r, c] = weights[b, k, 0, 1 + r·cols + c]: where the class token looks, per head.

    weights (B, heads, N+1, N+1) of one layer, token 0 the class token; grid (rows, cols) with
    rows·cols = N -> (B, heads, rows, cols). The weight the class token keeps for itself is
    left out, so a map sums to 1 − a[0, 0]. Cost O(B·heads·N). Explained in §5.4.
    """
    _checks.tensor(weights, "weights", min_dim=4)
    rows, cols = _grid(grid)
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2] or weights.shape[-1] != rows * cols + 1:
        raise ValueError(f"weights must be (B, heads, N+1, N+1) with N = {rows}·{cols} = {rows * cols} "
                         f"patches, got shape {tuple(weights.shape)}")
    return weights[:, :, 0, 1:].unflatten(-1, (rows, cols))


def _grid(grid):
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2):
        raise TypeError(f"grid must be a pair (rows, cols), got {grid!r}")
    for g in grid:
        _checks.positive(g, "grid", integer=True)
    return int(grid[0]), int(grid[1])


def _patch_maps(maps, name="maps"):
    _checks.tensor(maps, name, min_dim=3)
    if maps.dim() != 3:
        raise ValueError(f"{name} must be patch maps (B, rows, cols), got shape {tuple(maps.shape)}")
    if not torch.isfinite(maps).all() or (maps < 0).any():
        raise ValueError(f"{name} must be finite and non-negative (take the absolute value or the "
                         "positive part of a signed attribution first)")


def _evidence(evidence, shape):
    if not isinstance(evidence, torch.Tensor) or evidence.dtype != torch.bool:
        what = evidence.dtype if isinstance(evidence, torch.Tensor) else type(evidence).__name__
        raise TypeError(f"evidence must be a boolean tensor (True = evidence), got {what}")
    if tuple(evidence.shape) != tuple(shape):
        raise ValueError(f"evidence has shape {tuple(evidence.shape)} but the maps are {tuple(shape)}")


def evidence_scores(maps, evidence):
    """mass_b = Σ_{p ∈ E_b} m_b[p] / Σ_p m_b[p] and hit_b = [argmax_p m_b[p] ∈ E_b].

    maps (B, rows, cols), non-negative; evidence (B, rows, cols) boolean, the patches E_b that
    hold the evidence -> (mass (B,) in [0, 1], hit (B,) boolean): the share of the map on the
    evidence and the pointing game (Zhang et al.'s "does the peak land on the object?"). An
    all-zero map points nowhere: mass 0, hit False. A map spread evenly scores mass = |E|/N,
    the chance level. Ties at the peak count the first patch in row-major order.
    Cost O(B·rows·cols). Explained in §5.4.
    """
    _patch_maps(maps)
    _evidence(evidence, maps.shape)
    flat, inside = maps.flatten(1), evidence.flatten(1)
    total = flat.sum(dim=1)
    mass = (flat * inside).sum(dim=1) / torch.where(total > 0, total, torch.ones_like(total))
    hit = inside.gather(1, flat.argmax(dim=1, keepdim=True)).squeeze(1) & (total > 0)
    return mass, hit


def delete_top_patches(images, maps, k, baseline, patch_size):
    """The images with the k patches that each map ranks highest replaced by the baseline.

    images (B, C, H, W); maps (B, rows, cols) with rows·P = H, cols·P = W; baseline a number or
    a tensor broadcastable to the images -> (B, C, H, W). Used to ask whether the patches a
    map points at are the ones the model needs (a deletion test, Samek et al., 2017).
    Cost O(B·C·H·W). Explained in §5.4.
    """
    _checks.tensor(images, "images", min_dim=4)
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    _patch_maps(maps)
    _checks.positive(k, "k", integer=True)
    _checks.positive(patch_size, "patch_size", integer=True)
    b, _, h, w = images.shape
    if maps.shape != (b, h // patch_size, w // patch_size) or h % patch_size or w % patch_size:
        raise ValueError(f"maps must be (B, H/P, W/P) = ({b}, {h // patch_size}, {w // patch_size}) for images "
                         f"{tuple(images.shape)} and patch_size={patch_size}, got {tuple(maps.shape)}")
    if k > maps[0].numel():
        raise ValueError(f"k={k} is more than the {maps[0].numel()} patches of a map")
    top = maps.flatten(1).topk(k, dim=1).indices
    chosen = torch.zeros_like(maps.flatten(1), dtype=torch.bool).scatter(1, top, True).view_as(maps)
    pixels = chosen.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)[:, None]
    fill = baseline if isinstance(baseline, torch.Tensor) else torch.tensor(float(baseline), dtype=images.dtype)
    return torch.where(pixels, fill.to(images.dtype).expand_as(images), images)


# --- attention that is edited, searched for and weighed ---------------------------------------

def _scene_vit(model):
    if not isinstance(model, SceneViT):
        raise TypeError(f"model must be a SceneViT, got {type(model).__name__}")
    return model.vit


def _heads(block, normed):
    """Queries, keys and values of one block, split into heads: three (B, h, N, d_h)."""
    attn = block.attn
    return tuple(split_heads(proj(normed), attn.num_heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))


def forward_with_attention(model, images, edit=None):
    """The ViT's logits with each layer's attention weights A_l replaced by edit(l, A_l).

    x ← x + W_O·merge(edit(l, softmax(Q_l K_lᵀ / √d_h)) V_l), then x ← x + MLP(LN(x)), for
    l = 0, 1, …; logits = head(LN(x[class])). ``edit`` receives the layer index and the weights
    (B, h, N+1, N+1) and returns weights of the same shape (None: no edit, the model's own
    logits). model: a :class:`SceneViT`; images (B, C, H, W) -> logits (B, classes).
    Cost: one forward pass. Explained in §5.4.
    """
    vit = _scene_vit(model)
    if edit is not None and not callable(edit):
        raise TypeError(f"edit must be callable (layer, weights) -> weights, got {type(edit).__name__}")
    x = vit.embed(model.standardise(images))
    for layer, block in enumerate(vit.blocks):
        q, k, v = _heads(block, block.norm1(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        if edit is not None:
            edited = edit(layer, weights)
            if not isinstance(edited, torch.Tensor) or edited.shape != weights.shape:
                got = tuple(edited.shape) if isinstance(edited, torch.Tensor) else type(edited).__name__
                raise ValueError(f"edit must return weights of shape {tuple(weights.shape)} for layer "
                                 f"{layer}, got {got}")
            weights = edited
        x = x + block.attn.out_proj(merge_heads(weights @ v))
        x = x + block.mlp(block.norm2(x))
    return vit.head(vit.norm(x[:, 0]))


def _last_layer(model, images):
    """What the class token's last attention reads: its state (B, E), values (B, h, N+1, d_h),
    its weights (B, h, N+1)."""
    vit = _scene_vit(model)
    x = vit.embed(model.standardise(images))
    for block in vit.blocks[:-1]:
        x, _ = block(x)
    last = vit.blocks[-1]
    q, k, v = _heads(last, last.norm1(x))
    weights = torch.softmax(q[:, :, :1] @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)[:, :, 0]
    return x[:, 0], v, weights


def _readout(model, state, values, weights):
    """Logits (B, classes) when the class token of the last layer attends with weights (B, h, N+1)."""
    vit, last = model.vit, model.vit.blocks[-1]
    mixed = (weights.unsqueeze(-1) * values).sum(dim=2)                   # (B, h, d_h)
    x = state + last.attn.out_proj(mixed.flatten(1))
    x = x + last.mlp(last.norm2(x))
    return vit.head(vit.norm(x))


def alternative_attention(model, images, target, avoid, *, steps=150, lr=0.2, penalty=10.0):
    """Search another class-token attention of the last layer with the same output, off ``avoid``.

    Jain and Wallace (2019) asked whether a very different attention can give the same
    prediction. Here the weights a'_h = softmax(z_h) of the class token's row in the last layer
    (every other weight, and everything before, fixed) minimise
    mean_h Σ_{j ∈ avoid} a'_hj + penalty · (s'_t − s_t)², s_t the log-odds of class ``target``,
    by Adam on z from the model's own log-weights. The class token's row is all the last layer
    passes to the classifier, so this is the complete freedom left once the earlier layers are
    fixed. model: a :class:`SceneViT`; images (B, C, H, W); target an int or (B,) tensor; avoid
    (B, N) boolean over the patch tokens (the class token is never avoided).
    Returns a dict of tensors: ``weights`` (B, h, N+1) the model's, ``found`` (B, h, N+1) the
    alternative, ``scores`` and ``found_scores`` (B,) the log-odds of the target with each.
    Cost: ``steps`` passes through the last layer's class-token row. Explained in §5.4.
    """
    vit = _scene_vit(model)
    _checks.positive(steps, "steps", integer=True)
    _checks.positive(lr, "lr")
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty >= 0:
        raise ValueError(f"penalty must be a number >= 0, got {penalty!r}")
    with torch.no_grad():
        state, values, weights = _last_layer(model, images)
    batch, tokens = weights.shape[0], weights.shape[-1]
    if not isinstance(avoid, torch.Tensor) or avoid.dtype != torch.bool:
        raise TypeError("avoid must be a boolean tensor (B, N) over the patch tokens")
    if tuple(avoid.shape) != (batch, tokens - 1):
        raise ValueError(f"avoid must be (B, N) = ({batch}, {tokens - 1}), got {tuple(avoid.shape)}")
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.full((batch,), target, dtype=torch.long)
    if not isinstance(target, torch.Tensor) or target.shape != (batch,) or target.is_floating_point():
        raise ValueError(f"target must be an int or a ({batch},) tensor of class indices, got {target!r}")
    classes = vit.head.out_features
    if (target < 0).any() or (target >= classes).any():
        raise ValueError(f"target must be class indices in [0, {classes}), got {target.tolist()}")
    pick = target.long()[:, None]
    off = F.pad(avoid, (1, 0)).to(weights.dtype)[:, None, :]                # (B, 1, N+1)
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            scores = log_odds(_readout(model, state, values, weights)).gather(1, pick)[:, 0]
        z = weights.clamp_min(1e-12).log().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            found = torch.softmax(z, dim=-1)
            found_scores = log_odds(_readout(model, state, values, found)).gather(1, pick)[:, 0]
            loss = (found * off).sum(-1).mean(-1) + penalty * (found_scores - scores) ** 2
            optimiser.zero_grad()
            loss.sum().backward()
            optimiser.step()
        with torch.no_grad():
            found = torch.softmax(z, dim=-1)
            found_scores = log_odds(_readout(model, state, values, found)).gather(1, pick)[:, 0]
    finally:
        for p, flag in zip(model.parameters(), frozen):
            p.requires_grad_(flag)
    return {"weights": weights, "found": found.detach(), "scores": scores, "found_scores": found_scores}


def value_norms(model, images, layer=-1):
    """‖a_hj f_h(x_j)‖: the size of what token j sends to the class token through head h.

    Kobayashi et al. (2020): the class token's attention output is Σ_h Σ_j a_hj f_h(x_j) with
    f_h(x_j) = W_O^h (W_V^h LN(x_j) + b_V^h), the value of token j in head h mapped to the model
    width by head h's slice W_O^h of the output projection. A large weight a_hj on a token with
    a small f_h(x_j) sends little. model: a :class:`SceneViT`; images (B, C, H, W); ``layer``
    an index into the blocks -> (weights (B, h, N+1), norms (B, h, N+1), sent (B, N+1)), sent_j
    = ‖Σ_h a_hj f_h(x_j)‖ the heads together. Cost: one forward pass. Explained in §5.4.
    """
    vit = _scene_vit(model)
    depth = len(vit.blocks)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth:
        raise ValueError(f"layer must be an int in [{-depth}, {depth}), got {layer!r}")
    layer %= depth
    with torch.no_grad():
        x = vit.embed(model.standardise(images))
        for block in vit.blocks[:layer]:
            x, _ = block(x)
        block = vit.blocks[layer]
        q, k, v = _heads(block, block.norm1(x))
        weights = torch.softmax(q[:, :, :1] @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)[:, :, 0]
        heads, width = v.shape[1], v.shape[-1]
        w_out = block.attn.out_proj.weight.view(-1, heads, width)            # (E, h, d_h): W_O^h
        sent = torch.einsum("bhn,bhnd,ehd->bhne", weights, v, w_out)         # a_hj f_h(x_j): (B, h, N+1, E)
    return weights, sent.norm(dim=-1), sent.sum(dim=1).norm(dim=-1)


# --- a picture --------------------------------------------------------------------------------

def overlay(ax, image, patch_map, *, outline=None, title=None, vmax=None):
    """Draw patch_map (rows, cols) over a grey copy of image (3, H, W); outline (H, W) in white.

    The map is stretched to the image by nearest neighbours and drawn with a colour-blind-safe
    colour map; ``vmax`` fixes its top (default: the map's maximum). Returns the map's image.
    Used in §5.4.
    """
    import numpy as np

    picture = image.detach().float().mean(0).cpu().numpy()
    h, w = picture.shape
    m = patch_map.detach().float().cpu().numpy()
    top = float(m.max()) if vmax is None else float(vmax)
    ax.imshow(picture, cmap="gray", vmin=0, vmax=1)
    shown = ax.imshow(np.kron(m, np.ones((h // m.shape[0], w // m.shape[1]))), cmap=CMAP, alpha=0.7,
                      vmin=0, vmax=top if top > 0 else 1.0)
    if outline is not None:
        ax.contour(outline.detach().cpu().numpy(), levels=[0.5], colors="white", linewidths=0.9)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=8)
    return shown
