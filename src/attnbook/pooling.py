"""Attention pooling: a learned, input-dependent weighted average of a set of features (§1.1).

A set of N feature vectors x_1 … x_N (the patches of an image, the words of a sentence)
becomes one vector by a weighted average. Three ways to choose the weights, all with the
same call ``pool(x, mask=None) -> (pooled, weights)``, x (B, N, d) -> pooled (B, d),
weights (B, N) summing to 1 over the allowed positions:

* :class:`MeanPooling`: a_i = 1/N, the same for every input and every position;
* :class:`FixedPooling`: a = softmax(θ), learned once per position, the same for every input;
* :class:`AttentionPooling`: a_i = softmax_i(score(x_i)), computed from the input itself.

:class:`PatchClassifier` puts one of them between a small convolutional patch encoder and a
linear classifier, as in the attention-based multiple-instance learning of Ilse et al. (2018).
Masks are boolean, True = may attend (PyTorch's convention); a fully masked row gets zero
weights and a zero output, never NaN.
"""
import torch
from torch import nn

from . import _checks
from .softmax import masked_softmax

POOLINGS = ("mean", "fixed", "attention")


def _set_and_mask(x, mask, name="x"):
    """Check x (B, N, d) and a mask (B, N) or (N,); return the mask or None."""
    _checks.tensor(x, name, min_dim=3)
    if x.dim() != 3:
        raise ValueError(f"{name} must be (B, N, d), got shape {tuple(x.shape)}")
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        what = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a boolean tensor (True = may attend), got {what}")
    return _checks.mask_for(mask, x.shape[:2])


def weighted_average(x, weights):
    """pooled_b = Σ_i a_bi x_bi: x (B, N, d), weights (B, N) -> (B, d).

    Cost O(B·N·d) time. Explained in §1.1.
    """
    _checks.tensor(x, "x", min_dim=3)
    _checks.tensor(weights, "weights", min_dim=2)
    if x.dim() != 3 or weights.shape != x.shape[:2]:
        raise ValueError(f"weights must be (B, N) = {tuple(x.shape[:2])} for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weights.shape)}")
    return (weights.unsqueeze(-1) * x).sum(dim=1)


def attention_pool(x, scores, mask=None, *, temperature=1.0):
    """a = softmax(s / T) over the allowed positions, pooled = Σ_i a_i x_i.

    x (B, N, d), scores (B, N), mask (B, N) or (N,) boolean (True = may attend)
    -> pooled (B, d), weights (B, N). Cost O(B·N·d) time. Explained in §1.1.
    """
    mask = _set_and_mask(x, mask)
    _checks.tensor(scores, "scores", min_dim=2)
    if scores.shape != x.shape[:2]:
        raise ValueError(f"scores must be (B, N) = {tuple(x.shape[:2])} for x of shape "
                         f"{tuple(x.shape)}, got {tuple(scores.shape)}")
    weights = masked_softmax(scores, mask, temperature=temperature)
    return weighted_average(x, weights), weights


class AttentionPooling(nn.Module):
    """score(x_i) = wᵀ tanh(W x_i + b), a = softmax_i(score / T), pooled = Σ_i a_i x_i.

    x (B, N, dim), mask (B, N) or (N,) boolean (True = may attend) -> pooled (B, dim),
    weights (B, N). W is (hidden × dim), w (hidden); the weights depend on the input.
    In the words of §2.1, w is a learned query, tanh(W x_i + b) the keys, x_i the values.
    Cost O(B·N·dim·hidden) time, O(B·N·hidden) memory. Explained in §1.1.
    """

    def __init__(self, dim, hidden=16):
        super().__init__()
        _checks.positive(dim, "dim", integer=True)
        _checks.positive(hidden, "hidden", integer=True)
        self.dim = dim
        self.key = nn.Linear(dim, hidden)
        self.query = nn.Linear(hidden, 1, bias=False)

    def scores(self, x):
        """s_i = wᵀ tanh(W x_i + b): x (B, N, dim) -> (B, N)."""
        _set_and_mask(x, None)
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has width {x.shape[-1]} (shape {tuple(x.shape)}) but dim={self.dim}")
        return self.query(torch.tanh(self.key(x))).squeeze(-1)

    def forward(self, x, mask=None, *, temperature=1.0):
        return attention_pool(x, self.scores(x), mask, temperature=temperature)


class MeanPooling(nn.Module):
    """a_i = 1/N over the allowed positions, pooled = Σ_i a_i x_i: the plain average.

    x (B, N, d), mask (B, N) or (N,) -> pooled (B, d), weights (B, N). No parameters.
    Cost O(B·N·d). Explained in §1.1.
    """

    def forward(self, x, mask=None, *, temperature=1.0):
        mask = _set_and_mask(x, mask)
        return attention_pool(x, x.new_zeros(x.shape[:2]), mask)


class FixedPooling(nn.Module):
    """a = softmax(θ / T) with one learned logit θ_i per position, pooled = Σ_i a_i x_i.

    Learned, but the same weights for every input: a fixed spatial filter. x (B, N, d)
    with N = ``positions`` -> pooled (B, d), weights (B, N). Cost O(B·N·d). Explained in §1.1.
    """

    def __init__(self, positions):
        super().__init__()
        _checks.positive(positions, "positions", integer=True)
        self.logits = nn.Parameter(torch.zeros(positions))

    def forward(self, x, mask=None, *, temperature=1.0):
        _set_and_mask(x, None)
        if x.shape[1] != self.logits.shape[0]:
            raise ValueError(f"x has N={x.shape[1]} positions (shape {tuple(x.shape)}) "
                             f"but this pooling learned {self.logits.shape[0]}")
        return attention_pool(x, self.logits.expand(x.shape[:2]), mask, temperature=temperature)


class PatchClassifier(nn.Module):
    """Classify an image from pooled patch features: logits = V pool(f(patches)) + c.

    images (B, channels, S, S) -> logits (B, classes), weights (B, S/P, S/P). The encoder f
    standardises each channel of each image (instance norm), applies a 3×3 convolution with ReLU, then a P×P convolution of stride P (one ``dim``-wide
    vector per P×P patch); ``pooling`` is "mean", "fixed" or "attention".
    Cost O(B·S²·dim·(channels·9 + dim)) time. Explained in §1.1.
    """

    def __init__(self, pooling="attention", *, channels=3, image_size=32, patch_size=4, dim=32,
                 hidden=16, classes=2):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        for name, value in (("channels", channels), ("image_size", image_size), ("patch_size", patch_size),
                            ("dim", dim), ("classes", classes)):
            _checks.positive(value, name, integer=True)
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} does not divide image_size={image_size}")
        self.channels, self.image_size, self.grid = channels, image_size, image_size // patch_size
        self.encoder = nn.Sequential(
            nn.InstanceNorm2d(channels),
            nn.Conv2d(channels, dim // 2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(dim // 2, dim, patch_size, stride=patch_size))
        self.pooling = {"mean": lambda: MeanPooling(), "fixed": lambda: FixedPooling(self.grid ** 2),
                        "attention": lambda: AttentionPooling(dim, hidden)}[pooling]()
        self.head = nn.Linear(dim, classes)

    def features(self, images):
        """One feature per patch: images (B, C, S, S) -> (B, (S/P)², dim), patches in row-major order."""
        _checks.tensor(images, "images", min_dim=4)
        expected = (self.channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be (B, {', '.join(map(str, expected))}), "
                             f"got shape {tuple(images.shape)}")
        return self.encoder(images).flatten(2).transpose(1, 2)

    def forward(self, images, *, temperature=1.0):
        pooled, weights = self.pooling(self.features(images), temperature=temperature)
        return self.head(pooled), weights.view(-1, self.grid, self.grid)
