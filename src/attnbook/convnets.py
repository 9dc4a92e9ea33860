"""Tiny CNNs with and without attention, and the overlap scores of segmentation (§3.6).

The models are small enough to train in a few seconds on a CPU on the synthetic images of
:mod:`attnbook.shapes`; each can be built with or without its attention block, so that a
notebook compares the two on the same data. The blocks themselves live in
:mod:`attnbook.vision` (:class:`~attnbook.vision.SqueezeExcitation`,
:class:`~attnbook.vision.NonLocalBlock`, :class:`~attnbook.vision.AttentionGate`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .train import fit
from .vision import AttentionGate, NonLocalBlock, SqueezeExcitation

BLOCKS = (None, "se", "non_local")


def _images(x, name, channels, like, multiple=1):
    """Check that ``x`` is (B, channels, H, W), floating, of ``like``'s dtype, H and W multiples of ``multiple``."""
    _checks.tensor(x, name)
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be (B, {channels}, H, W), got shape {tuple(x.shape)}")
    if x.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the model's parameters are {like.dtype}")
    if x.shape[-2] % multiple or x.shape[-1] % multiple:
        raise ValueError(f"{name} has size (H, W) = {tuple(x.shape[-2:])}; both must be multiples of "
                         f"{multiple} (the model halves them {multiple.bit_length() - 1} times)")
    return x


class TinyCNN(nn.Module):
    """conv3×3 → ReLU → [block] → conv3×3 → ReLU → head: a CNN with a 5 × 5 receptive field.

    ``block``: None, "se" (:class:`~attnbook.vision.SqueezeExcitation` with ``reduction``,
    channel attention) or "non_local" (:class:`~attnbook.vision.NonLocalBlock`, embedded
    Gaussian, attention over all positions; ``zero_init`` as in that block: True starts it
    as the identity), inserted between the two convolutions.
    ``pixelwise=False``: head = global average pooling + linear, images (B, C, H, W) ->
    logits (B, K); ``pixelwise=True``: head = 1×1 convolution, -> logits (B, K, H, W).
    Without a non-local block an output pixel sees only the 5 × 5 input pixels around it.
    Cost O(B·H·W·w·(C + w)·9) time, plus O(B·(H·W)²·w) for a non-local block. §3.6.
    """

    def __init__(self, in_channels, num_classes, width=8, *, block=None, pixelwise=False, reduction=2,
                 zero_init=True):
        super().__init__()
        for value, name in ((in_channels, "in_channels"), (num_classes, "num_classes"), (width, "width")):
            _checks.positive(value, name, integer=True)
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        self.in_channels, self.pixelwise = in_channels, pixelwise
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.block = {None: nn.Identity, "se": lambda w: SqueezeExcitation(w, reduction),
                      "non_local": lambda w: NonLocalBlock(w, zero_init=zero_init)}[block](width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Conv2d(width, num_classes, 1) if pixelwise else nn.Linear(width, num_classes)

    def forward(self, x):
        """Logits (B, K) or, when ``pixelwise``, (B, K, H, W)."""
        _images(x, "x", self.in_channels, self.conv1.weight)
        h = torch.relu(self.conv2(self.block(torch.relu(self.conv1(x)))))
        return self.head(h) if self.pixelwise else self.head(h.mean(dim=(-2, -1)))


def _double_conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class TinyUNet(nn.Module):
    """A two-level U-Net (Ronneberger et al., 2015) with optional attention gates (Oktay et al., 2018).

    Encoder: e₁ = DC(x) at H × W (w channels), e₂ = DC(pool(e₁)) at H/2 (2w), bottom
    b = DC(pool(e₂)) at H/4 (4w); decoder: d₂ = DC([up(b); s₂]) at H/2, d₁ = DC([up(d₂); s₁])
    at H, logits = conv1×1(d₁), where DC = two conv3×3 + ReLU, pool = 2×2 max pooling,
    up = 2× nearest upsampling followed by a 1×1 convolution. Without gates the skips are
    s_l = e_l; with ``gates=True``, s_l = e_l · α_l, α_l = :class:`~attnbook.vision.AttentionGate`
    (e_l, gating signal = the coarser decoder state), and the maps α_l (B, 1, H_l, W_l) are
    kept (detached) in ``last_gates`` (finest first).
    images (B, C, H, W), H and W multiples of 4 -> logits (B, K, H, W).
    Cost O(B·H·W·w²) time and O(B·H·W·w) memory. Explained in §3.6.
    """

    def __init__(self, in_channels, num_classes=1, width=8, *, gates=False):
        super().__init__()
        for value, name in ((in_channels, "in_channels"), (num_classes, "num_classes"), (width, "width")):
            _checks.positive(value, name, integer=True)
        w = width
        self.in_channels, self.gated = in_channels, gates
        self.enc1, self.enc2, self.bottom = _double_conv(in_channels, w), _double_conv(w, 2 * w), \
            _double_conv(2 * w, 4 * w)
        self.up2, self.up1 = nn.Conv2d(4 * w, 2 * w, 1), nn.Conv2d(2 * w, w, 1)
        self.dec2, self.dec1 = _double_conv(4 * w, 2 * w), _double_conv(2 * w, w)
        self.gate2 = AttentionGate(2 * w, 4 * w, w) if gates else None
        self.gate1 = AttentionGate(w, 2 * w, max(w // 2, 1)) if gates else None
        self.head = nn.Conv2d(w, num_classes, 1)
        self.last_gates = None

    def _skip(self, gate, x, g):
        if gate is None:
            return x, None
        gated, alpha = gate(x, g)
        return gated, alpha.detach()

    def forward(self, x):
        """Logits (B, K, H, W); the gates' maps go to ``last_gates`` when ``gates=True``."""
        _images(x, "x", self.in_channels, self.head.weight, multiple=4)
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        s2, a2 = self._skip(self.gate2, e2, b)
        d2 = self.dec2(torch.cat([self.up2(F.interpolate(b, scale_factor=2.0)), s2], dim=1))
        s1, a1 = self._skip(self.gate1, e1, d2)
        d1 = self.dec1(torch.cat([self.up1(F.interpolate(d2, scale_factor=2.0)), s1], dim=1))
        self.last_gates = (a1, a2) if self.gated else None
        return self.head(d1)


def _masks(prediction, target):
    """Check two boolean masks of one shape (B, ...) and flatten them to (B, N)."""
    for t, name in ((prediction, "prediction"), (target, "target")):
        _checks.tensor(t, name, floating=False)
        if t.dtype != torch.bool:
            raise TypeError(f"{name} must be a boolean mask (True = target), got dtype {t.dtype}; "
                            f"threshold scores first, e.g. logits > 0")
        if t.dim() < 2:
            raise ValueError(f"{name} must be (B, ...) with at least one pixel axis, got shape {tuple(t.shape)}")
    if prediction.shape != target.shape:
        raise ValueError(f"prediction has shape {tuple(prediction.shape)} but target has {tuple(target.shape)}")
    return prediction.flatten(1), target.flatten(1)


def dice(prediction, target):
    """Dice = 2|P ∩ T| / (|P| + |T|) per image: (B, ...) boolean masks -> (B,) floats in [0, 1].

    An image where both masks are empty scores 1 (nothing to find, nothing found).
    Cost O(B·N) for N pixels per image. Explained in §3.6.
    """
    p, t = _masks(prediction, target)
    both, total = (p & t).sum(1).float(), (p.sum(1) + t.sum(1)).float()
    return torch.where(total > 0, 2 * both / total.clamp_min(1), torch.ones_like(total))


def iou(prediction, target):
    """IoU (Jaccard) = |P ∩ T| / |P ∪ T| per image: (B, ...) boolean masks -> (B,) floats in [0, 1].

    Empty ∪ empty scores 1. Dice and IoU rank predictions alike: Dice = 2·IoU / (1 + IoU).
    Cost O(B·N) for N pixels per image. Explained in §3.6.
    """
    p, t = _masks(prediction, target)
    both, union = (p & t).sum(1).float(), (p | t).sum(1).float()
    return torch.where(union > 0, both / union.clamp_min(1), torch.ones_like(union))


def train_on(model, inputs, targets, loss_fn, *, steps, batch_size=32, lr=3e-3, seed=0):
    """Train ``model`` on minibatches drawn from fixed tensors; returns the list of losses.

    Each of the ``steps`` steps draws ``batch_size`` indices uniformly (with replacement
    across steps) from a ``torch.Generator`` seeded with ``seed`` and minimises
    ``loss_fn(model(inputs[i]), targets[i])`` with :func:`attnbook.train.fit` (AdamW,
    cosine decay to lr/10, gradient clipping at 1). Seed the model's initial weights
    yourself (:func:`attnbook.train.seed_everything`) before building it.
    inputs (N, ...) and targets (N, ...) share their first dimension.
    Cost: ``steps`` forward and backward passes on ``batch_size`` examples. Used in §3.6.
    """
    _checks.tensor(inputs, "inputs", floating=False)
    _checks.tensor(targets, "targets", floating=False)
    if len(inputs) != len(targets):
        raise ValueError(f"inputs has {len(inputs)} examples (shape {tuple(inputs.shape)}) but targets has "
                         f"{len(targets)} (shape {tuple(targets.shape)})")
    _checks.positive(batch_size, "batch_size", integer=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    draws = torch.Generator().manual_seed(seed)

    def batch(step):
        i = torch.randint(len(inputs), (batch_size,), generator=draws)
        return inputs[i], targets[i]

    return fit(model, batch, lambda m, b: loss_fn(m(b[0]), b[1]), steps=steps, lr=lr)
