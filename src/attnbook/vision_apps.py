"""Attention in vision, applied: how a ViT reads a digit, gated CNNs, text steering images (§4.4).

Three small experiments share this module. **Reading a ViT**: the class token's attention per
head and attention rollout, laid back onto the image grid (:func:`class_token_maps`,
:func:`rollout_maps`, :func:`to_pixels`), and the share of a map's mass inside a mask
(:func:`mass_share`). **Gates inside a CNN**: :class:`GatedDigitCNN`, a two-convolution network
for the 8 × 8 digits of :mod:`attnbook.digits` with a squeeze-and-excitation or CBAM block after
each convolution (the blocks themselves are :mod:`attnbook.vision`'s), and
:func:`mean_by_class`. **Text to image**: a synthetic task of 16 × 16 images holding one or
two coloured shapes with captions such as "red square top left blue circle bottom right"
(:func:`make_scenes`), the forward noising of a diffusion model (:func:`add_noise`), and a tiny
conditional denoiser whose image features attend to the caption's words by cross-attention, as
in latent diffusion (:class:`TextToImageDenoiser`, :func:`train_denoiser`,
:func:`word_mask_share`).
"""
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .interpret import _patch_grid, attention_rollout
from .train import fit
from .transformer import CrossAttention, EncoderLayer
from .vision import CBAM, SqueezeExcitation

# ---------------------------------------------------------------- reading a ViT


def _vit_weights(weights, name):
    _checks.tensor(weights, name)
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2] or weights.shape[-1] < 2:
        raise ValueError(f"{name} must be (B, h, N + 1, N + 1) with the class token first, "
                         f"got shape {tuple(weights.shape)}")
    return weights


def class_token_maps(weights, grid):
    """m[b, k, r, c] = A[b, k, 0, 1 + r·cols + c]: where the class token looks, per head, on the grid.

    weights (B, h, N + 1, N + 1) of one ViT layer, class token first, patches in row-major
    order (:func:`attnbook.vision.patchify`) -> (B, h, rows, cols) with rows·cols = N. The
    class token's weight on itself is dropped, so a map sums to 1 − A[b, k, 0, 0].
    Cost O(B·h·N). Explained in §4.4.
    """
    weights = _vit_weights(weights, "weights")
    rows, cols = _patch_grid(grid, weights.shape[-1] - 1)
    return weights[:, :, 0, 1:].reshape(*weights.shape[:2], rows, cols)


def rollout_maps(weights_per_layer, grid, **options):
    """R[b, 0, 1:] on the grid: attention rollout from the class token to every patch.

    rollout = Â_L ··· Â_1 with Â_l = rownorm(½ mean_heads(A_l) + ½ I)
    (:func:`attnbook.interpret.attention_rollout`, Abnar & Zuidema 2020; ``options`` are its
    keywords). weights_per_layer: L tensors (B, h, N + 1, N + 1) -> (B, rows, cols), the share
    of the class token's final state that flows from each patch (the share that stays with the
    class token itself is dropped). Cost O(L·B·(h·N² + N³)). Explained in §4.4.
    """
    if not isinstance(weights_per_layer, (list, tuple)) or not weights_per_layer:
        raise TypeError("weights_per_layer must be a non-empty list of (B, h, N + 1, N + 1) tensors")
    for i, w in enumerate(weights_per_layer):
        _vit_weights(w, f"weights_per_layer[{i}]")
    rollout = attention_rollout(list(weights_per_layer), **options)
    rows, cols = _patch_grid(grid, rollout.shape[-1] - 1)
    return rollout[:, 0, 1:].reshape(len(rollout), rows, cols)


def to_pixels(maps, patch_size):
    """Each patch's value copied to its P × P pixels: (..., rows, cols) -> (..., rows·P, cols·P).

    The inverse of averaging each patch, for drawing a patch map over the image. Cost O(P²)
    per patch. Explained in §4.4.
    """
    _checks.tensor(maps, "maps", min_dim=2, floating=False)
    _checks.positive(patch_size, "patch_size", integer=True)
    return maps.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)


def mass_share(maps, mask):
    """share_b = Σ_ij maps[b, i, j]·mask[b, i, j] / Σ_ij maps[b, i, j]: how much of a map lies in a mask.

    maps (B, H, W) non-negative, mask (B, H, W) or (H, W) boolean -> (B,) in [0, 1]; a map
    that is all zero gets share 0. Compare with mask.mean(), the share of a uniform map.
    Cost O(B·H·W). Explained in §4.4.
    """
    _checks.tensor(maps, "maps", min_dim=2)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if maps.dim() != 3 or mask.shape not in (maps.shape, maps.shape[1:]):
        raise ValueError(f"maps must be (B, H, W) and mask (B, H, W) or (H, W); got shapes "
                         f"{tuple(maps.shape)} and {tuple(mask.shape)}")
    if (maps < 0).any():
        raise ValueError("maps must be non-negative (attention weights or rollout)")
    total = maps.sum(dim=(-2, -1))
    inside = (maps * mask).sum(dim=(-2, -1))
    return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.zeros_like(total))


# ---------------------------------------------------------------- gates inside a CNN

GATES = (None, "se", "cbam")


class GatedDigitCNN(nn.Module):
    """logits = W·GAP(g₂(ReLU(conv₂(pool(g₁(ReLU(conv₁ x))))))) + b: a CNN with a gate after each conv.

    conv₁: 1 -> c₁ and conv₂: c₁ -> c₂ are 3 × 3 convolutions with zero padding 1; pool is
    2 × 2 max pooling (8 × 8 -> 4 × 4); GAP averages over positions. The gates g₁, g₂ are
    the identity (``gate=None``), :class:`attnbook.vision.SqueezeExcitation` (``"se"``, channel
    attention) or :class:`attnbook.vision.CBAM` (``"cbam"``, channel then spatial attention
    with a ``kernel_size`` × ``kernel_size`` spatial convolution), with bottleneck
    ``reduction`` r; after a forward pass their maps are in ``self.gates[i].last_*``.
    images (B, 1, H, W) -> logits (B, ``classes``). Cost O(B·H·W·9·c₁(1 + c₂/4)) time plus
    the gates' O(B·(c₁ + c₂)²/r + B·H·W·k²). Explained in §4.4 (the blocks in §3.6).
    """

    def __init__(self, gate=None, *, channels=(16, 32), reduction=4, kernel_size=3, classes=10):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if not (isinstance(channels, (tuple, list)) and len(channels) == 2):
            raise TypeError(f"channels must be a pair (c1, c2), got {channels!r}")
        for c in channels:
            _checks.positive(c, "channels", integer=True)
        _checks.positive(classes, "classes", integer=True)
        c1, c2 = channels
        self.gate = gate
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)

        def make(c):
            if gate == "se":
                return SqueezeExcitation(c, reduction)
            if gate == "cbam":
                return CBAM(c, reduction, kernel_size)
            return nn.Identity()

        self.gates = nn.ModuleList([make(c1), make(c2)])
        self.head = nn.Linear(c2, classes)

    def features(self, images):
        """GAP of the last gated feature map, (B, c₂): what the head reads."""
        _checks.tensor(images, "images")
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W), got shape {tuple(images.shape)}")
        if images.shape[-1] % 2 or images.shape[-2] % 2:
            raise ValueError(f"images must have even H and W (2 × 2 pooling), got {tuple(images.shape)}")
        h = self.gates[0](torch.relu(self.conv1(images)))
        h = self.gates[1](torch.relu(self.conv2(F.max_pool2d(h, 2))))
        return h.mean(dim=(-2, -1))

    def forward(self, images):
        """Logits (B, classes)."""
        return self.head(self.features(images))


def mean_by_class(values, labels, classes=10):
    """M[k] = mean of values[n] over the n with labels[n] = k: e.g. each class's channel weights.

    values (N, ...) floating, labels (N,) integer in 0 .. classes − 1 -> (classes, ...);
    a class with no example gets NaN. Cost O(N·numel per value). Explained in §4.4.
    """
    _checks.tensor(values, "values")
    _checks.tensor(labels, "labels", floating=False)
    if labels.dim() != 1 or labels.shape[0] != values.shape[0] or labels.is_floating_point():
        raise ValueError(f"labels must be (N,) integer with N = len(values); got labels "
                         f"{tuple(labels.shape)} {labels.dtype} for values {tuple(values.shape)}")
    _checks.positive(classes, "classes", integer=True)
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in 0 .. {classes - 1}, got {labels.min().item()} .. "
                         f"{labels.max().item()}")
    one_hot = F.one_hot(labels.long(), classes).to(values.dtype)          # (N, classes)
    sums = one_hot.T @ values.flatten(1)
    return (sums / one_hot.sum(0)[:, None]).reshape(classes, *values.shape[1:])


# ---------------------------------------------------------------- text to image

# Okabe & Ito's vermillion, bluish green and blue: told apart with the common colour-vision
# deficiencies too (a pure red and green are not).
COLOURS = {"red": (0.835, 0.369, 0.0), "green": (0.0, 0.620, 0.451), "blue": (0.0, 0.447, 0.698)}
SHAPES = ("square", "circle", "triangle")
ROWS, COLS = ("top", "bottom"), ("left", "right")
PAD = "<pad>"
VOCAB = (PAD, *COLOURS, *SHAPES, *ROWS, *COLS)
WORDS_PER_OBJECT = 4           # colour, shape, row, column
MAX_OBJECTS = 2
MAX_WORDS = WORDS_PER_OBJECT * MAX_OBJECTS
SCENE_SIZE = 16                # images are 16 × 16; each quadrant is 8 × 8


def _shape_mask(shape, cell=8):
    """A boolean (cell, cell) mask of the shape drawn in the middle 6 × 6 of a quadrant."""
    i, j = torch.meshgrid(torch.arange(cell, dtype=torch.float64), torch.arange(cell, dtype=torch.float64),
                          indexing="ij")
    c = (cell - 1) / 2
    if shape == "square":
        return (i >= 1) & (i <= cell - 2) & (j >= 1) & (j <= cell - 2)
    if shape == "circle":
        return (i - c) ** 2 + (j - c) ** 2 <= (0.39 * cell) ** 2
    return (i >= 1) & (i <= cell - 2) & ((j - c).abs() <= (i + 0.1) / 2)   # triangle, apex up


def render(objects, size=SCENE_SIZE):
    """The image of a scene: objects = [(colour, shape, row, col), ...] -> ((3, S, S), masks (k, S, S)).

    Each object fills the middle of its quadrant (row in ROWS, col in COLS) with its colour
    (RGB in [0, 1]) on a black background; masks[i] is True on the pixels of object i.
    Cost O(S²) per object. Explained in §4.4.
    """
    _checks.positive(size, "size", integer=True)
    if size % 2:
        raise ValueError(f"size must be even (four quadrants), got {size}")
    if not isinstance(objects, (list, tuple)) or not 1 <= len(objects) <= 4:
        raise ValueError(f"objects must be a list of 1 to 4 (colour, shape, row, col), got {objects!r}")
    cell = size // 2
    image = torch.zeros(3, size, size)
    masks = torch.zeros(len(objects), size, size, dtype=torch.bool)
    seen = set()
    for k, obj in enumerate(objects):
        if not (isinstance(obj, (tuple, list)) and len(obj) == 4):
            raise ValueError(f"objects[{k}] must be (colour, shape, row, col), got {obj!r}")
        colour, shape, row, col = obj
        for value, allowed, what in ((colour, tuple(COLOURS), "colour"), (shape, SHAPES, "shape"),
                                     (row, ROWS, "row"), (col, COLS, "col")):
            if value not in allowed:
                raise ValueError(f"objects[{k}] has {what} {value!r}; choose from {allowed}")
        if (row, col) in seen:
            raise ValueError(f"two objects share the quadrant {row} {col}")
        seen.add((row, col))
        r0, c0 = ROWS.index(row) * cell, COLS.index(col) * cell
        masks[k, r0:r0 + cell, c0:c0 + cell] = _shape_mask(shape, cell)
        image[:, masks[k]] = torch.tensor(COLOURS[colour])[:, None]
    return image, masks


def caption(objects):
    """The words of a scene's caption: colour shape row col for each object, in order. §4.4."""
    return [w for obj in objects for w in obj]


def encode(words, length=MAX_WORDS):
    """Word indices into VOCAB, padded with PAD (index 0) to ``length``: (length,) int64. §4.4."""
    if isinstance(words, str):
        words = words.split()
    words = list(words)
    if len(words) > length:
        raise ValueError(f"a caption of {len(words)} words does not fit length={length}")
    unknown = [w for w in words if w not in VOCAB or w == PAD]
    if unknown:
        raise ValueError(f"unknown words {unknown}; the vocabulary is {VOCAB[1:]}")
    return torch.tensor([VOCAB.index(w) for w in words] + [0] * (length - len(words)))


def decode(tokens):
    """The caption of a row of word indices, padding dropped: (L,) int -> str. §4.4."""
    _checks.tensor(tokens, "tokens", floating=False)
    return " ".join(VOCAB[t] for t in tokens.tolist() if t != 0)


def make_scenes(n, *, seed=0, max_objects=MAX_OBJECTS):
    """n random scenes of 1 .. ``max_objects`` objects in distinct quadrants, with their captions.

    Returns a dict: ``images`` (n, 3, 16, 16) in [0, 1]; ``tokens`` (n, L) int64 word indices
    (L = 4·max_objects, padded with 0); ``valid`` (n, L) bool, True on real words; ``masks``
    (n, L, 16, 16) bool, the pixels of the object each word describes (all False on padding).
    Colours, shapes and quadrants are drawn uniformly by a generator seeded with ``seed``.
    Cost O(n·16²). Explained in §4.4.
    """
    _checks.positive(n, "n", integer=True)
    _checks.positive(max_objects, "max_objects", integer=True)
    if max_objects > 4:
        raise ValueError(f"max_objects must be at most 4 (four quadrants), got {max_objects}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    g = torch.Generator().manual_seed(int(seed))
    length = WORDS_PER_OBJECT * max_objects
    images = torch.zeros(n, 3, SCENE_SIZE, SCENE_SIZE)
    tokens = torch.zeros(n, length, dtype=torch.int64)
    masks = torch.zeros(n, length, SCENE_SIZE, SCENE_SIZE, dtype=torch.bool)
    quadrants = [(r, c) for r in ROWS for c in COLS]
    colours = tuple(COLOURS)
    for i in range(n):
        k = int(torch.randint(1, max_objects + 1, (1,), generator=g))
        places = torch.randperm(4, generator=g)[:k].tolist()
        objects = [(colours[int(torch.randint(3, (1,), generator=g))], SHAPES[int(torch.randint(3, (1,), generator=g))],
                    *quadrants[p]) for p in places]
        images[i], object_masks = render(objects)
        tokens[i] = encode(caption(objects), length)
        masks[i, :WORDS_PER_OBJECT * k] = object_masks.repeat_interleave(WORDS_PER_OBJECT, dim=0)
    return {"images": images, "tokens": tokens, "valid": tokens != 0, "masks": masks}


def add_noise(images, alpha_bar, generator=None):
    """x_t = √ᾱ·x₀ + √(1 − ᾱ)·ε, ε ~ N(0, I): the forward (noising) process of DDPM (Ho et al., 2020).

    images x₀ (B, ...), alpha_bar ᾱ a float or (B,) in [0, 1] (1 = clean, 0 = pure noise)
    -> (x_t, ε), both of the shape of images. Cost O(numel). Explained in §4.4.
    """
    _checks.tensor(images, "images")
    alpha_bar = torch.as_tensor(alpha_bar, dtype=images.dtype)
    if alpha_bar.dim() == 0:
        alpha_bar = alpha_bar.expand(len(images))
    if alpha_bar.shape != (len(images),):
        raise ValueError(f"alpha_bar must be a number or (B,) = ({len(images)},), got shape {tuple(alpha_bar.shape)}")
    if (alpha_bar < 0).any() or (alpha_bar > 1).any():
        raise ValueError("alpha_bar must lie in [0, 1]")
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    a = alpha_bar.view(-1, *([1] * (images.dim() - 1)))
    return a.sqrt() * images + (1 - a).sqrt() * noise, noise


class TextEncoder(nn.Module):
    """c = Encoder(Embed(words) + P): word embeddings made contextual by one self-attention layer.

    tokens (B, L) int64 (0 = padding), valid (B, L) bool -> (B, L, D). One pre-norm
    :class:`attnbook.transformer.EncoderLayer` with ``heads`` heads and learned positions P
    lets each word see the others of its caption (which object it belongs to). In latent
    diffusion this role is played by a large pretrained Transformer (BERT-like or CLIP's).
    Cost O(B·L²·D + B·L·D²). Explained in §4.4.
    """

    def __init__(self, dim=32, heads=2, *, vocab=len(VOCAB), length=MAX_WORDS):
        super().__init__()
        for value, name in ((dim, "dim"), (heads, "heads"), (vocab, "vocab"), (length, "length")):
            _checks.positive(value, name, integer=True)
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.positions = nn.Parameter(0.02 * torch.randn(length, dim))
        self.layer = EncoderLayer(dim, heads, 2 * dim, norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens, valid):
        """(B, L, D) contextual word vectors (padding positions are computed but never attended to)."""
        x = self.embed(tokens) + self.positions[:tokens.shape[1]]
        x, _ = self.layer(x, valid[:, None, :])
        return self.norm(x)


class TextToImageDenoiser(nn.Module):
    """x̂₀ = decode(conv_out(h + CrossAttn(h, c))), h = convs([encode(x_t); σ; coords]), c = TextEncoder(caption).

    The conditioning of latent diffusion (Rombach et al., 2022), at toy scale. ``encode`` is a
    lossless stand-in for the autoencoder: ``pixel_unshuffle`` by ``factor`` f folds each f × f
    block of pixels into channels, (3, H, W) -> (3f², H/f, W/f), and ``decode`` unfolds it.
    On that latent grid, image features are the queries (one per cell, N = HW/f²) and the
    caption's contextual word vectors the keys and values: CrossAttn(h, c) = softmax(Q Kᵀ/√d) V
    with Q = LN(h) W_Q, K = c W_K, V = c W_V, padding masked
    (:class:`attnbook.transformer.CrossAttention`). The convolutions also see the noise level
    σ = √(1 − ᾱ) as a constant channel and two coordinate channels in [−1, 1].
    forward(x_t (B, 3, H, W), alpha_bar (B,), tokens (B, L), valid (B, L))
    -> (x̂₀ (B, 3, H, W), weights (B, heads, N, L), latent cells in row-major order).
    Cost O(B·N·(9·w² + L·w)) time, O(B·heads·N·L) memory for the weights. Explained in §4.4.
    """

    def __init__(self, width=32, text_dim=32, heads=2, *, factor=2):
        super().__init__()
        for value, name in ((width, "width"), (text_dim, "text_dim"), (heads, "heads"), (factor, "factor")):
            _checks.positive(value, name, integer=True)
        self.factor = factor
        latent = 3 * factor * factor
        self.text = TextEncoder(text_dim)
        self.features = nn.Sequential(nn.Conv2d(latent + 1 + 2, width, 3, padding=1), nn.GELU(),
                                      nn.Conv2d(width, width, 3, padding=1), nn.GELU())
        self.norm = nn.LayerNorm(width)
        self.cross = CrossAttention(width, heads, kdim=text_dim)
        self.out = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(width, latent, 3, padding=1))

    def forward(self, noisy, alpha_bar, tokens, valid):
        """(x̂₀ (B, 3, H, W), cross-attention weights (B, heads, HW/f², L))."""
        _checks.tensor(noisy, "noisy")
        f = self.factor
        if noisy.dim() != 4 or noisy.shape[1] != 3 or noisy.shape[2] % f or noisy.shape[3] % f:
            raise ValueError(f"noisy must be (B, 3, H, W) with H and W multiples of factor={f}, "
                             f"got shape {tuple(noisy.shape)}")
        b = noisy.shape[0]
        if not isinstance(tokens, torch.Tensor) or not isinstance(valid, torch.Tensor) \
                or tokens.shape != valid.shape or tokens.dim() != 2 or tokens.shape[0] != b:
            raise ValueError(f"tokens and valid must both be (B, L) with B = {b}, got "
                             f"{tuple(getattr(tokens, 'shape', ()))} and {tuple(getattr(valid, 'shape', ()))}")
        sigma = (1 - torch.as_tensor(alpha_bar, dtype=noisy.dtype).reshape(-1)).clamp_min(0).sqrt()
        if sigma.shape != (b,):
            raise ValueError(f"alpha_bar must be (B,) = ({b},), got {tuple(torch.as_tensor(alpha_bar).shape)}")
        z = F.pixel_unshuffle(noisy, f)                                     # the "latent": (B, 3f², h, w)
        h, w = z.shape[-2:]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        coords = torch.stack([ys, xs]).to(noisy.dtype).expand(b, 2, h, w)
        x = torch.cat([z, sigma.view(b, 1, 1, 1).expand(b, 1, h, w), coords], dim=1)
        feats = self.features(x).flatten(2).transpose(1, 2)                # (B, N, width): queries
        context = self.text(tokens, valid)                                 # (B, L, D): keys and values
        attended, weights = self.cross(self.norm(feats), context, valid[:, None, :])
        feats = (feats + attended).transpose(1, 2).reshape(b, -1, h, w)
        return F.pixel_shuffle(self.out(feats), f), weights


def train_denoiser(model, scenes, *, steps=600, batch_size=64, lr=3e-3, levels=(0.02, 0.2, 0.5, 0.8), seed=0):
    """Minimise E ‖x̂₀(x_t, ᾱ, caption) − x₀‖² over scenes and noise levels; returns the losses.

    Each step draws ``batch_size`` scenes and, for each, a level ᾱ from ``levels`` and fresh
    noise (:func:`add_noise`), all from a generator seeded with ``seed``, then takes one step of
    :func:`attnbook.train.fit`. Predicting x₀ is equivalent to DDPM's predicting ε, since
    x₀ = (x_t − √(1 − ᾱ) ε)/√ᾱ. Cost ``steps`` forward and backward passes. Explained in §4.4.
    """
    if not isinstance(model, TextToImageDenoiser):
        raise TypeError(f"model must be a TextToImageDenoiser, got {type(model).__name__}")
    levels = torch.as_tensor(levels, dtype=torch.float32)
    if levels.dim() != 1 or not len(levels) or (levels < 0).any() or (levels > 1).any():
        raise ValueError(f"levels must be a non-empty list of ᾱ in [0, 1], got {levels.tolist()}")
    draws = torch.Generator().manual_seed(seed)
    n = len(scenes["images"])

    def batch(step):
        i = torch.randint(n, (batch_size,), generator=draws)
        a = levels[torch.randint(len(levels), (batch_size,), generator=draws)]
        noisy, _ = add_noise(scenes["images"][i], a, draws)
        return noisy, a, scenes["tokens"][i], scenes["valid"][i], scenes["images"][i]

    def loss(m, b):
        return F.mse_loss(m(*b[:4])[0], b[4])

    return fit(model, batch, loss, steps=steps, lr=lr)


def word_mask_share(weights, masks, valid):
    """share[b, l] = Σ_{p ∈ mask_{b,l}} a[b, p, l] / Σ_p a[b, p, l]: how much of a word's attention lies on its object.

    weights (B, h, N, L) cross-attention from N query cells to L words (averaged over the
    heads); masks (B, L, H, W) bool, the pixels of the object each word describes; valid (B, L)
    bool. When the cells are coarser than the pixels (N = HW/f², as on a latent grid), each
    cell's weight is spread evenly over its f × f pixels (:func:`to_pixels`).
    -> (B, L) shares, NaN where the word is padding. A word whose attention were spread evenly
    over the image would score the mask's area share, masks.float().mean((-2, -1)).
    Cost O(B·h·N·L + B·L·H·W). Explained in §4.4.
    """
    _checks.tensor(weights, "weights")
    if weights.dim() != 4:
        raise ValueError(f"weights must be (B, h, N, L), got shape {tuple(weights.shape)}")
    b, _, n, length = weights.shape
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool or masks.dim() != 4 \
            or masks.shape[:2] != (b, length):
        raise ValueError(f"masks must be boolean (B, L, H, W) = ({b}, {length}, H, W); got "
                         f"{tuple(getattr(masks, 'shape', ()))} for weights {tuple(weights.shape)}")
    height, width = masks.shape[-2:]
    f = round((height * width / n) ** 0.5) if n else 0
    if not f or height % f or width % f or (height // f) * (width // f) != n:
        raise ValueError(f"weights have N = {n} cells, which is no (H/f)·(W/f) grid of the masks' "
                         f"{height} × {width} pixels")
    if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.shape != (b, length):
        raise ValueError(f"valid must be boolean (B, L) = ({b}, {length}), got {tuple(getattr(valid, 'shape', ()))}")
    column = weights.mean(dim=1).transpose(1, 2).reshape(b, length, height // f, width // f)
    column = to_pixels(column, f) / (f * f)                               # (B, L, H, W)
    share = (column * masks).sum((-2, -1)) / column.sum((-2, -1)).clamp_min(1e-12)
    return torch.where(valid, share, torch.full_like(share, float("nan")))
