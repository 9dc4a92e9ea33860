"""Real images, offline: the 8×8 digits, a tiny ViT and a tiny CNN that learn them (§6.2).

scikit-learn ships 1,797 handwritten digits of 8 × 8 pixels inside its wheel (the test part of
the UCI optical digits of Alpaydin and Kaynak, 1998), so a notebook can train on real images
without downloading anything. This module loads them as tensors, splits them reproducibly
(stratified by class), draws growing training subsets, and defines two models of about the same
size: :class:`DigitViT`, a Vision Transformer built from :mod:`attnbook.vision`'s patch
embedding and blocks, and :class:`DigitCNN`, a LeNet-style convolutional network. Both map
images (B, 1, 8, 8) with values in [0, 1] to logits (B, 10) and have a ``features`` method that
returns the representation their linear head reads. :func:`train_classifier` trains either with
:func:`attnbook.train.fit`; :func:`shift` translates images by whole pixels, for augmentation
and for testing what each model takes for granted.
"""
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .train import fit
from .vision import PatchEmbedding, ViTBlock

NUM_CLASSES = 10
IMAGE_SIZE = 8
LEVELS = 16          # the digits' pixels count "on" cells of a 4×4 block of a 32×32 bitmap: 0 .. 16


# ---------------------------------------------------------------- the data

def load_digits_tensors(dtype=torch.float32):
    """The 1,797 digits of ``sklearn.datasets.load_digits`` as (images, labels).

    images (1797, 1, 8, 8) of ``dtype`` with values v/16 in [0, 1] (0 = background),
    labels (1797,) int64 in 0 .. 9. Nothing is downloaded: the data ship with scikit-learn.
    Cost: reading a 180 kB file. Explained in §6.2.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - scikit-learn is pinned in requirements.txt
        raise ImportError("the digits ship with scikit-learn: pip install scikit-learn") from error
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float64).div(LEVELS).unsqueeze(1).to(dtype)
    return images, torch.as_tensor(digits.target, dtype=torch.int64)


def _labels(labels, name="labels"):
    _checks.tensor(labels, name, floating=False)
    if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{name} must be a 1-D integer tensor of class indices, got shape "
                         f"{tuple(labels.shape)} and dtype {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise ValueError(f"{name} must be class indices >= 0, got {labels.min().item()}")
    return labels.long()


def _generator(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(int(seed))


def _stratified_order(labels, generator):
    """Indices of ``labels`` in an order whose every prefix holds each class in proportion.

    Within class k (n_k examples) the examples are shuffled and the j-th gets the key
    (j + 1/2) / n_k; sorting all keys (ties in a random class order) interleaves the classes
    so that a prefix of length n holds n·n_k/N examples of class k, within one.
    """
    labels = _labels(labels)
    keys = torch.empty(len(labels), dtype=torch.float64)
    classes = labels.unique()
    tiebreak = torch.randperm(len(classes), generator=generator).double() / (len(classes) + 1)
    for k, c in enumerate(classes.tolist()):
        members = (labels == c).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        ranks = torch.arange(len(members), dtype=torch.float64)
        # the tiebreak (< 1) decides which class comes first among equal keys
        keys[members] = (ranks + 0.5) / len(members) + tiebreak[k] * 1e-9
    return torch.argsort(keys, stable=True)


def split(labels, test_size=0.22, *, seed=0):
    """A stratified train/test split: (train indices, test indices), each sorted.

    Class k with n_k examples puts round(test_size · n_k) of them, drawn at random with a
    generator seeded by ``seed``, into the test set and the rest into the training set, so both
    keep the class proportions of ``labels``. ``test_size`` is a fraction in (0, 1).
    labels (N,) integer -> two int64 index tensors that partition range(N). With the digits and
    the default 0.22: 1,402 training and 395 test images. Cost O(N log N). Explained in §6.2.
    """
    labels = _labels(labels)
    _checks.positive(test_size, "test_size")
    if not test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
    g = _generator(seed)
    test = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=g)]
        test.append(members[:round(test_size * len(members))])
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[torch.cat(test)] = True
    return (~is_test).nonzero().squeeze(1), is_test.nonzero().squeeze(1)


def subsets(labels, sizes, *, seed=0):
    """Growing, nested, stratified subsets: one index tensor (into ``labels``) per size.

    Every subset holds each class in the proportion of ``labels`` (within one example), and
    each contains the smaller ones, so that a learning curve adds data without replacing it.
    ``sizes`` must increase and not exceed N = len(labels). labels (N,) -> list of int64
    tensors of lengths ``sizes``. Cost O(N log N). Explained in §6.2.
    """
    labels = _labels(labels)
    sizes = list(sizes)
    if not sizes:
        raise ValueError("sizes must name at least one subset size")
    for n in sizes:
        _checks.positive(n, "sizes", integer=True)
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"sizes must increase, got {sizes}")
    if sizes[-1] > len(labels):
        raise ValueError(f"sizes asks for {sizes[-1]} examples but labels has only {len(labels)}")
    order = _stratified_order(labels, _generator(seed))
    return [order[:n].clone() for n in sizes]


def shift(images, dy, dx):
    """Translate images by (dy, dx) whole pixels, filling with zeros (the background).

    out[..., i, j] = images[..., i − dy, j − dx] where that pixel exists, else 0; dy > 0 moves
    the content down, dx > 0 to the right. Unlike ``torch.roll`` nothing wraps around.
    images (..., H, W) -> (..., H, W). Cost O(H·W) per image. Explained in §6.2.
    """
    _checks.tensor(images, "images", min_dim=2, floating=False)
    for value, name in ((dy, "dy"), (dx, "dx")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int (whole pixels), got {type(value).__name__}")
    h, w = images.shape[-2:]
    out = torch.zeros_like(images)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def random_shifts(images, max_shift, generator=None):
    """Each image translated by its own random (dy, dx), drawn uniformly from {−s, …, s}².

    The data augmentation of §6.2: a way to teach a model from data the invariance that a
    convolutional network has built in. images (B, C, H, W), s = ``max_shift`` >= 0 ->
    (B, C, H, W), zero filled as in :func:`shift`. Cost O(B·C·H·W). Explained in §6.2.
    """
    _checks.tensor(images, "images", min_dim=4)
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, numbers.Integral) or max_shift < 0:
        raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}")
    if max_shift == 0:
        return images
    s, (h, w) = int(max_shift), images.shape[-2:]
    offsets = torch.randint(-s, s + 1, (len(images), 2), generator=generator)
    padded = F.pad(images, (s, s, s, s))
    # the crop that starts at (s − dy, s − dx) of the padded image is the image moved by (dy, dx)
    rows = (s - offsets[:, :1] + torch.arange(h))[:, None, :, None]        # (B, 1, H, 1)
    cols = (s - offsets[:, 1:] + torch.arange(w))[:, None, None, :]        # (B, 1, 1, W)
    batch = torch.arange(len(images))[:, None, None, None]
    channels = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, channels, rows, cols]


# ---------------------------------------------------------------- the models

def _images(images, like, image_size):
    _checks.tensor(images, "images")
    if images.dim() != 4 or images.shape[1] != 1 or tuple(images.shape[-2:]) != image_size:
        raise ValueError(f"images must be (B, 1, {image_size[0]}, {image_size[1]}), got shape "
                         f"{tuple(images.shape)}")
    if images.dtype != like.dtype:
        raise TypeError(f"images has dtype {images.dtype} but the model's parameters are {like.dtype}")
    return images


class DigitViT(nn.Module):
    """logits = head(LN(z_L[class])), z_l = Block(z_{l−1}), z₀ = PatchEmbedding(x): a ViT for digits.

    The architecture of Dosovitskiy et al. (2021), shrunk: an 8 × 8 image is cut into
    (8/P)² patches of P × P pixels (``patch_size`` P = 2: a 4 × 4 grid of 16 tokens), each
    mapped linearly to ``embed_dim`` E features, a class token and learned position embeddings
    are added (:class:`attnbook.vision.PatchEmbedding`), then ``depth`` pre-norm blocks of
    ``heads`` heads (:class:`attnbook.vision.ViTBlock`) and a linear head on the class token.
    Nothing in it says that nearby pixels belong together beyond the P × P patch; with
    ``positions=False`` it does not even know where a patch lies, and shuffling the patches
    leaves its output unchanged. images (B, 1, 8, 8) -> logits (B, ``classes``). The defaults
    have 2,794 parameters.
    Cost O(depth·B·(N²·E + N·E²·r)) time for N = (8/P)² + 1 tokens. Explained in §6.2.
    """

    def __init__(self, *, patch_size=2, embed_dim=16, depth=1, heads=2, mlp_ratio=2.0,
                 classes=NUM_CLASSES, image_size=IMAGE_SIZE, positions=True):
        super().__init__()
        _checks.positive(depth, "depth", integer=True)
        _checks.positive(classes, "classes", integer=True)
        self.embed = PatchEmbedding(image_size, patch_size, 1, embed_dim, positions=positions)
        self.blocks = nn.ModuleList(ViTBlock(embed_dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, classes)
        self.image_size, self.patch_size = self.embed.image_size, patch_size
        self.grid = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)

    def _run(self, images):
        x = self.embed(_images(images, self.head.weight, self.image_size))
        weights = []
        for block in self.blocks:
            x, w = block(x)
            weights.append(w)
        return self.norm(x[:, 0]), weights

    def features(self, images):
        """The class token after the last block and norm, (B, E): what the head reads."""
        return self._run(images)[0]

    def forward(self, images):
        """Logits (B, classes)."""
        return self.head(self.features(images))

    def attention(self, images):
        """The weights of every block, first first: a list of (B, heads, N + 1, N + 1), no grad."""
        with torch.no_grad():
            return self._run(images)[1]


class DigitCNN(nn.Module):
    """logits = W·GAP(h₂) + b, h₂ = pool(ReLU(conv(h₁))), h₁ = pool(ReLU(conv(x))): a LeNet for digits.

    Two 3 × 3 convolutions (zero padding 1) with ``channels`` = (c₁, c₂) output channels,
    each followed by ReLU and 2 × 2 max pooling (8 × 8 -> 4 × 4 -> 2 × 2), then global average
    pooling and a linear head: the recipe of LeCun et al. (1998) at the scale of the digits.
    A convolution looks only at a 3 × 3 neighbourhood (locality) with the same weights at every
    position (weight sharing), so shifting its input shifts its output (translation
    equivariance). images (B, 1, 8, 8) -> logits (B, ``classes``). The defaults have 2,986
    parameters. Cost O(B·H·W·(9·c₁ + 9·c₁·c₂/4)) time. Explained in §6.2.
    """

    def __init__(self, *, channels=(12, 24), classes=NUM_CLASSES, image_size=IMAGE_SIZE):
        super().__init__()
        if not (isinstance(channels, (tuple, list)) and len(channels) == 2):
            raise TypeError(f"channels must be a pair (c1, c2), got {channels!r}")
        for c in channels:
            _checks.positive(c, "channels", integer=True)
        _checks.positive(classes, "classes", integer=True)
        self.image_size = (image_size, image_size) if isinstance(image_size, numbers.Integral) else tuple(image_size)
        for side in self.image_size:
            _checks.positive(side, "image_size", integer=True)
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.head = nn.Linear(c2, classes)

    def feature_maps(self, images):
        """The maps h₂ (B, c₂, H/4, W/4) before global pooling."""
        x = _images(images, self.head.weight, self.image_size)
        h1 = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        return F.max_pool2d(torch.relu(self.conv2(h1)), 2)

    def features(self, images):
        """GAP(h₂), (B, c₂): what the head reads."""
        return self.feature_maps(images).mean(dim=(-2, -1))

    def forward(self, images):
        """Logits (B, classes)."""
        return self.head(self.features(images))


def count_parameters(model, *, trainable_only=True):
    """Σ numel(θ) over the model's parameters (those with requires_grad unless told otherwise).

    model: an ``nn.Module`` -> int. Cost O(number of tensors). Explained in §6.2.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------- training and evaluation

def _dataset(images, labels):
    _checks.tensor(images, "images", min_dim=4)
    labels = _labels(labels)
    if images.dim() != 4 or len(images) != len(labels):
        raise ValueError(f"images must be (N, C, H, W) with one label each, got images "
                         f"{tuple(images.shape)} and labels {tuple(labels.shape)}")
    if len(labels) == 0:
        raise ValueError("images and labels are empty")
    return images, labels


def train_classifier(model, images, labels, *, steps=300, batch_size=64, lr=1e-2, max_shift=0,
                     weight_decay=0.0, seed=0):
    """Minimise the cross-entropy of ``model`` on (images, labels); returns the list of losses.

    Each of the ``steps`` steps takes ``batch_size`` examples drawn uniformly with
    replacement by a generator seeded with ``seed`` (all N examples, in order, when
    N <= ``batch_size``: full-batch training), shifts each by a random (dy, dx) in
    {−s, …, s}² when ``max_shift`` s > 0 (:func:`random_shifts`), and takes one step of
    :func:`attnbook.train.fit` (AdamW, cosine decay to lr/10, gradient norm clipped at 1).
    Every run sees the same number of examples whatever N, so small sets are revisited more.
    Seed the model's initialisation yourself (:func:`attnbook.train.seed_everything`).
    images (N, C, H, W), labels (N,) int. Cost: ``steps`` forward and backward passes on
    min(N, batch_size) examples. Explained in §6.2.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    images, labels = _dataset(images, labels)
    _checks.positive(batch_size, "batch_size", integer=True)
    draws = _generator(seed)
    full = len(images) <= batch_size

    def batch(step):
        if full:
            x, y = images, labels
        else:
            i = torch.randint(len(images), (batch_size,), generator=draws)
            x, y = images[i], labels[i]
        return random_shifts(x, max_shift, draws), y

    return fit(model, batch, lambda m, b: F.cross_entropy(m(b[0]), b[1]), steps=steps, lr=lr,
               weight_decay=weight_decay)


def predict(model, images, *, batch_size=1024):
    """argmax_k logits: the predicted class of each image, (N,) int64, in eval mode, no grad.

    Cost: N / ``batch_size`` forward passes. Explained in §6.2.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _checks.tensor(images, "images", min_dim=4)
    _checks.positive(batch_size, "batch_size", integer=True)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(images[i:i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return out


def accuracy(model, images, labels):
    """(1/N) Σ_i [predict(model, images)_i = labels_i], a float in [0, 1]. Explained in §6.2."""
    images, labels = _dataset(images, labels)
    return (predict(model, images) == labels).double().mean().item()


def confusion_matrix(predicted, labels, classes=NUM_CLASSES):
    """M[i, j] = #{n : labels_n = i and predicted_n = j}: rows are the truth, columns the guess.

    predicted (N,) and labels (N,) integer in 0 .. classes − 1 -> (classes, classes) int64;
    the diagonal counts the correct answers. Cost O(N + classes²). Explained in §6.2.
    """
    predicted, labels = _labels(predicted, "predicted"), _labels(labels)
    _checks.positive(classes, "classes", integer=True)
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted has shape {tuple(predicted.shape)} but labels has {tuple(labels.shape)}")
    if len(labels) and max(predicted.max().item(), labels.max().item()) >= classes:
        raise ValueError(f"class indices must be below classes={classes}, got up to "
                         f"{max(predicted.max().item(), labels.max().item())}")
    return torch.bincount(labels * classes + predicted, minlength=classes * classes).view(classes, classes)


SHIFTS = ((0, 1), (0, -1))   # one pixel to the right, one to the left


def lossless(images, dy, dx):
    """Which images :func:`shift` moves by (dy, dx) without cutting anything off: (N,) bool.

    True when every pixel that would leave the frame is 0, so that shifting back restores
    the image exactly. images (N, ..., H, W). Cost O(N·H·W). Explained in §6.2.
    """
    _checks.tensor(images, "images", min_dim=3, floating=False)
    back = shift(shift(images, dy, dx), -dy, -dx)
    return (back == images).flatten(1).all(dim=1)


def shift_sensitivity(model, images, labels=None, shifts=SHIFTS):
    """How much a model's answer moves when its input moves by a pixel, pooled over ``shifts``.

    For each (dy, dx), over the images that :func:`shift` moves without losing a pixel
    (:func:`lossless`): flips = the share whose predicted class changes, and change =
    mean_i ‖φ(shift(x_i)) − φ(x_i)‖ / ‖φ(x_i)‖ for the representation φ = model.features that
    the head reads. A model whose features were exactly shift invariant would score 0 on both.
    With ``labels`` (N,), also the accuracy on those images before and after the shift.
    The default shifts are one pixel left and right: the digits touch the top and bottom
    rows, so a vertical shift would cut them. images (N, 1, H, W) -> dict(flips, change,
    [accuracy, shifted_accuracy,] pairs = the number of (image, shift) pairs counted).
    Cost: 2·len(shifts) forward passes. Explained in §6.2.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "features") or not hasattr(model, "head"):
        raise TypeError(f"model must be a module with features and head (DigitViT, DigitCNN), "
                        f"got {type(model).__name__}")
    _checks.tensor(images, "images", min_dim=4)
    if labels is not None:
        images, labels = _dataset(images, labels)
    shifts = list(shifts)
    if not shifts:
        raise ValueError("shifts must name at least one (dy, dx)")
    was_training = model.training
    model.eval()
    flips, change, before, after = [], [], [], []
    with torch.no_grad():
        for dy, dx in shifts:
            kept = lossless(images, dy, dx)
            if not kept.any():
                continue
            base, moved = model.features(images[kept]), model.features(shift(images[kept], dy, dx))
            guess, moved_guess = model.head(base).argmax(-1), model.head(moved).argmax(-1)
            flips.append(guess != moved_guess)
            change.append((moved - base).norm(dim=-1) / base.norm(dim=-1).clamp_min(1e-12))
            if labels is not None:
                before.append(guess == labels[kept])
                after.append(moved_guess == labels[kept])
    model.train(was_training)
    if not flips:
        raise ValueError(f"no image can be shifted by {shifts} without losing pixels")
    result = {"flips": torch.cat(flips).double().mean().item(),
              "change": torch.cat(change).double().mean().item()}
    if labels is not None:
        result["accuracy"] = torch.cat(before).double().mean().item()
        result["shifted_accuracy"] = torch.cat(after).double().mean().item()
    result["pairs"] = len(torch.cat(flips))
    return result
