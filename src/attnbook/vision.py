"""Attention for images: gates and non-local blocks inside CNNs (§3.6), the Vision Transformer (§4.4).

Images are batches (B, C, H, W), as for ``torch.nn.Conv2d``; the non-local block also takes
video (B, C, T, H, W). The CNN modules return their output, as a layer in ``nn.Sequential``
would, and keep their last attention map (detached) in ``last_*`` attributes for plotting;
``AttentionGate``, ``ViTBlock`` and ``ViT`` return their maps with the output.
"""
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .attention import attention
from .multihead import MultiHeadAttention

_LAYOUTS = {4: "(B, C, H, W)", 5: "(B, C, T, H, W)"}


def _feature_map(x, name, channels, like, ranks=(4,)):
    """Check that ``x`` is (B, channels, ...) of a rank in ``ranks``, of the dtype and device of ``like``."""
    _checks.tensor(x, name)
    if x.dim() not in ranks:
        layouts = " or ".join(_LAYOUTS[r] for r in ranks)
        raise ValueError(f"{name} must be {layouts}, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}) "
                         f"but this module expects {channels}")
    if x.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the module's parameters are {like.dtype}; "
                        f"convert one of them with .to()")
    if x.device != like.device:
        raise ValueError(f"{name} is on {x.device} but the module's parameters are on {like.device}")
    return x


def _bottleneck(channels, reduction):
    """The width C/r of a squeeze-and-excitation style bottleneck; r may not exceed C."""
    _checks.positive(channels, "channels", integer=True)
    _checks.positive(reduction, "reduction", integer=True)
    if reduction > channels:
        raise ValueError(f"reduction={reduction} is larger than channels={channels}: "
                         f"the bottleneck C/r would have no units")
    return channels // reduction


def _size(image_size):
    """(H, W) from an int or a pair of ints."""
    pair = (image_size, image_size) if isinstance(image_size, numbers.Integral) else image_size
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"image_size must be an int or a pair (H, W), got {image_size!r}")
    for side in pair:
        _checks.positive(side, "image_size", integer=True)
    return tuple(pair)


def _grid(height, width, patch_size):
    """The grid (H/P, W/P) of patches; P must divide H and W."""
    _checks.positive(patch_size, "patch_size", integer=True)
    if height % patch_size or width % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide the image size (H, W) = "
                         f"({height}, {width})")
    return height // patch_size, width // patch_size


# ---------------------------------------------------------------- attention inside CNNs (§3.6)

class SqueezeExcitation(nn.Module):
    """s = σ(W₂ δ(W₁ GAP(x))), y_c = s_c · x_c: each channel scaled by a gate computed from all channel means.

    x (B, C, H, W) -> y (B, C, H, W); the gate s (B, C) is kept in ``last_weights``.
    W₁: C -> C/r and W₂: C/r -> C are linear layers with biases, δ = ReLU, σ = sigmoid
    (Hu et al., 2018). Cost O(B·C·H·W + B·C²/r) time, O(B·C) extra memory, 2C²/r parameters.
    Explained in §3.6.
    """

    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = _bottleneck(channels, reduction)
        self.channels = channels
        self.reduce = nn.Linear(channels, hidden)   # W₁
        self.expand = nn.Linear(hidden, channels)   # W₂
        self.last_weights = None

    def forward(self, x):
        """y = x · s, s (B, C) broadcast over H and W."""
        _feature_map(x, "x", self.channels, self.reduce.weight)
        squeezed = x.mean(dim=(-2, -1))                                    # GAP: (B, C)
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(squeezed))))  # (B, C)
        self.last_weights = s.detach()
        return x * s[:, :, None, None]


class CBAM(nn.Module):
    """y = M_s(x') · x', x' = M_c(x) · x: a channel gate, then a spatial gate (Woo et al., 2018).

    M_c = σ(MLP(AvgPool(x)) + MLP(MaxPool(x))), pooling over H, W, one MLP C -> C/r -> C (ReLU)
    shared by both pools; M_s = σ(conv_k×k([mean_c(x'); max_c(x')])), pooling over channels,
    a convolution 2 -> 1 without bias and zero padding k//2.
    x (B, C, H, W) -> y (B, C, H, W); the maps are kept in ``last_channel_weights`` (B, C) and
    ``last_spatial_weights`` (B, H, W). ``kernel_size`` k must be odd.
    Cost O(B·C·H·W + B·C²/r + B·H·W·k²) time, O(B·(C + H·W)) extra memory. Explained in §3.6.
    """

    def __init__(self, channels, reduction=16, kernel_size=7):
        super().__init__()
        hidden = _bottleneck(channels, reduction)
        _checks.positive(kernel_size, "kernel_size", integer=True)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so that the spatial map keeps the size H × W, "
                             f"got {kernel_size}")
        self.channels = channels
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.last_channel_weights = self.last_spatial_weights = None

    def forward(self, x):
        """y = M_s · (M_c · x), M_c (B, C) broadcast over H, W and M_s (B, H, W) over channels."""
        _feature_map(x, "x", self.channels, self.conv.weight)
        channel = torch.sigmoid(self.mlp(x.mean(dim=(-2, -1))) + self.mlp(x.amax(dim=(-2, -1))))
        x = x * channel[:, :, None, None]
        pooled = torch.stack([x.mean(dim=1), x.amax(dim=1)], dim=1)        # (B, 2, H, W)
        spatial = torch.sigmoid(self.conv(pooled)).squeeze(1)             # (B, H, W)
        self.last_channel_weights, self.last_spatial_weights = channel.detach(), spatial.detach()
        return x * spatial[:, None]


class AttentionGate(nn.Module):
    """α = σ(ψ(ReLU(W_x x + W_g g + b_g)) + b_ψ), output x · α: a coarse signal g says where x matters.

    The additive gate of Attention U-Net (Oktay et al., 2018). x (B, C_x, H, W) and a gating
    signal g (B, C_g, H', W'), usually from a coarser scale -> (x · α (B, C_x, H, W), α (B, 1, H, W)).
    W_x (no bias), W_g and ψ are 1×1 convolutions to F_int = ``inter_channels``, F_int and 1
    channels; when g's grid differs from x's, W_g g is resampled bilinearly to H × W.
    Cost O(B·H·W·F_int·(C_x + C_g)) time, O(B·H·W·F_int) memory. Explained in §3.6.
    """

    def __init__(self, x_channels, g_channels, inter_channels):
        super().__init__()
        _checks.positive(x_channels, "x_channels", integer=True)
        _checks.positive(g_channels, "g_channels", integer=True)
        _checks.positive(inter_channels, "inter_channels", integer=True)
        self.x_channels, self.g_channels = x_channels, g_channels
        self.w_x = nn.Conv2d(x_channels, inter_channels, 1, bias=False)
        self.w_g = nn.Conv2d(g_channels, inter_channels, 1)                # bias b_g
        self.psi = nn.Conv2d(inter_channels, 1, 1)                         # bias b_ψ

    def forward(self, x, g):
        """(x · α, α): α (B, 1, H, W) in (0, 1), broadcast over the channels of x."""
        _feature_map(x, "x", self.x_channels, self.w_x.weight)
        _feature_map(g, "g", self.g_channels, self.w_g.weight)
        if g.shape[0] != x.shape[0]:
            raise ValueError(f"g has batch size {g.shape[0]} but x has {x.shape[0]}: "
                             f"shapes {tuple(g.shape)} and {tuple(x.shape)}")
        gate = self.w_g(g)
        if gate.shape[-2:] != x.shape[-2:]:
            gate = F.interpolate(gate, size=x.shape[-2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi(torch.relu(self.w_x(x) + gate)))
        return x * alpha, alpha


class NonLocalBlock(nn.Module):
    """z_i = W_z y_i + x_i, y_i = (1/C(x)) Σ_j f(x_i, x_j) g(x_j): every position attends to all others.

    Wang et al. (2018). ``mode="embedded_gaussian"``: f = exp(θ(x_i)ᵀ φ(x_j)), C(x) = Σ_j f,
    a softmax over j; ``mode="dot"``: f = θ(x_i)ᵀ φ(x_j), C(x) = N. θ, φ, g are 1×1 convolutions
    (linear maps of each position's channels) to ``inter_channels`` (default C/2), W_z back to C.
    x (B, C, H, W) or video (B, C, T, H, W) -> z of the same shape; the map (B, N, N),
    N = H·W or T·H·W positions in row-major order, is kept in ``last_weights``.
    ``zero_init`` (default, as in the paper, where the zero is BatchNorm's scale) starts W_z at
    zero, so that the block starts as the identity. Cost O(B·N²·C') time, O(B·N²) memory.
    Explained in §3.6.
    """

    MODES = ("embedded_gaussian", "dot")

    def __init__(self, channels, inter_channels=None, mode="embedded_gaussian", *, zero_init=True):
        super().__init__()
        _checks.positive(channels, "channels", integer=True)
        if inter_channels is None:
            inter_channels = max(channels // 2, 1)
        _checks.positive(inter_channels, "inter_channels", integer=True)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.channels, self.mode = channels, mode
        self.theta = nn.Linear(channels, inter_channels)
        self.phi = nn.Linear(channels, inter_channels)
        self.g = nn.Linear(channels, inter_channels)
        self.w_z = nn.Linear(inter_channels, channels)
        if zero_init:
            nn.init.zeros_(self.w_z.weight)
            nn.init.zeros_(self.w_z.bias)
        self.last_weights = None

    def forward(self, x):
        """z = W_z y + x of the shape of x; the weights (B, N, N) go to ``last_weights``."""
        _feature_map(x, "x", self.channels, self.theta.weight, ranks=(4, 5))
        positions = x.flatten(2).transpose(1, 2)                           # (B, N, C)
        theta, phi, g = self.theta(positions), self.phi(positions), self.g(positions)
        if self.mode == "embedded_gaussian":
            y, weights = attention(theta, phi, g, scale=1.0)              # softmax_j θ_iᵀφ_j
        else:
            weights = theta @ phi.transpose(1, 2) / positions.shape[1]
            y = weights @ g
        self.last_weights = weights.detach()
        return self.w_z(y).transpose(1, 2).reshape(x.shape) + x


# ---------------------------------------------------------------- the Vision Transformer (§4.4)

def patchify(images, patch_size):
    """Cut images into non-overlapping P×P patches, each flattened: (..., C, H, W) -> (..., N, C·P·P).

    N = (H/P)·(W/P) patches in row-major order (patch (r, c) of the grid is number r·W/P + c);
    each patch is flattened as ``torch.flatten`` flattens a (C, P, P) image, so a linear map
    with weight ``conv.weight.flatten(1)`` equals a convolution with kernel and stride P.
    Cost O(C·H·W) time and memory per image (one copy). Explained in §4.4.
    """
    _checks.tensor(images, "images", min_dim=3, floating=False)
    c, h, w = images.shape[-3:]
    rows, cols = _grid(h, w, patch_size)
    p, lead = patch_size, images.dim() - 3
    x = images.unflatten(-1, (cols, p)).unflatten(-3, (rows, p))          # (..., C, rows, P, cols, P)
    x = x.permute(*range(lead), lead + 1, lead + 3, lead, lead + 2, lead + 4)  # (..., rows, cols, C, P, P)
    return x.flatten(-3).flatten(-3, -2)


def unpatchify(patches, patch_size, image_size):
    """The inverse of :func:`patchify`: (..., N, C·P·P) -> images (..., C, H, W).

    ``image_size`` is H = W or (H, W); N must be (H/P)·(W/P). Cost O(C·H·W) per image. §4.4.
    """
    _checks.tensor(patches, "patches", min_dim=2, floating=False)
    h, w = _size(image_size)
    rows, cols = _grid(h, w, patch_size)
    n, d = patches.shape[-2:]
    p, lead = patch_size, patches.dim() - 2
    if n != rows * cols or d % (p * p):
        raise ValueError(f"patches has shape {tuple(patches.shape)} but images of size ({h}, {w}) cut "
                         f"into {p}×{p} patches give (..., {rows * cols}, C·{p * p})")
    x = patches.unflatten(-1, (d // (p * p), p, p)).unflatten(-4, (rows, cols))  # (..., rows, cols, C, P, P)
    x = x.permute(*range(lead), lead + 2, lead, lead + 3, lead + 1, lead + 4)    # (..., C, rows, P, cols, P)
    return x.flatten(-2).flatten(-3, -2)


class PatchEmbedding(nn.Module):
    """z₀ = [x_class; x_p¹E; …; x_pᴺE] + E_pos: images to a sequence of patch tokens (Dosovitskiy et al., 2021).

    images (B, C, H, W) -> tokens (B, N + 1, E), the class token first (B, N, E without it),
    N = (H/P)·(W/P). The projection E is ``proj``, a convolution with kernel and stride P:
    the same as :func:`patchify` followed by a linear map with weight ``proj.weight.flatten(1)``.
    ``class_token`` and ``positions`` (learned, one per token) are optional.
    Cost O(B·N·C·P²·E) time, O(B·N·E) memory. Explained in §4.4.
    """

    def __init__(self, image_size, patch_size, in_channels, embed_dim, *, class_token=True, positions=True):
        super().__init__()
        self.image_size = _size(image_size)
        rows, cols = _grid(*self.image_size, patch_size)
        _checks.positive(in_channels, "in_channels", integer=True)
        _checks.positive(embed_dim, "embed_dim", integer=True)
        self.in_channels, self.num_patches = in_channels, rows * cols
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        tokens = self.num_patches + bool(class_token)
        self.positions = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, tokens, embed_dim), std=0.02)) \
            if positions else None

    def forward(self, images):
        """Tokens (B, N + 1, E) with a class token, else (B, N, E)."""
        _feature_map(images, "images", self.in_channels, self.proj.weight)
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"images has size {tuple(images.shape[-2:])} but this embedding was built "
                             f"for image_size {self.image_size}")
        tokens = self.proj(images).flatten(2).transpose(1, 2)              # (B, N, E)
        if self.class_token is not None:
            tokens = torch.cat([self.class_token.expand(len(images), -1, -1), tokens], dim=1)
        if self.positions is not None:
            tokens = tokens + self.positions
        return tokens


class ViTBlock(nn.Module):
    """x ← x + MHA(LN(x)), x ← x + MLP(LN(x)): the pre-norm Transformer encoder block of ViT.

    x (B, N, E) -> (x (B, N, E), weights (B, h, N, N)); MHA is :class:`attnbook.MultiHeadAttention`,
    MLP = Linear(E, r·E), GELU, Linear(r·E, E) with r = ``mlp_ratio``. The same computation as
    ``torch.nn.TransformerEncoderLayer(norm_first=True, activation="gelu", dropout=0)``.
    Cost O(B·N²·E + B·N·E²·r) time, O(B·h·N² + B·N·E·r) memory. Explained in §4.4.
    """

    def __init__(self, embed_dim, num_heads, mlp_ratio=4.0):
        super().__init__()
        _checks.positive(mlp_ratio, "mlp_ratio")
        self.attn = MultiHeadAttention(embed_dim, num_heads)
        hidden = round(embed_dim * mlp_ratio)
        if hidden < 1:
            raise ValueError(f"mlp_ratio={mlp_ratio} gives an MLP of {hidden} units for embed_dim={embed_dim}")
        self.norm1, self.norm2 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))

    def forward(self, x):
        """(x, weights): the tokens after the block and the attention weights (B, h, N, N)."""
        _checks.tensor(x, "x")
        if x.dim() != 3 or x.shape[-1] != self.attn.embed_dim:
            raise ValueError(f"x must be (B, N, E) with E = {self.attn.embed_dim}, got shape {tuple(x.shape)}")
        normed = self.norm1(x)
        attended, weights = self.attn(normed, normed, normed)
        x = x + attended
        return x + self.mlp(self.norm2(x)), weights


class ViT(nn.Module):
    """logits = head(LN(z_L[class])), z_l = Block(z_{l-1}), z₀ = PatchEmbedding(images): a tiny ViT.

    images (B, C, H, W) -> (logits (B, num_classes), [weights (B, heads, N+1, N+1) of each layer]).
    ``depth`` pre-norm blocks of ``heads`` heads; the class token's final state is classified.
    ``positions=False`` drops the position embeddings (the model then ignores patch order).
    Small enough (embed_dim 32, depth 2) to train on 8×8 digits in seconds on a CPU.
    Cost O(depth·(B·N²·E + B·N·E²·r)) time. Explained in §4.4.
    """

    def __init__(self, image_size, patch_size, in_channels, num_classes, embed_dim, depth, heads, *,
                 mlp_ratio=4.0, positions=True):
        super().__init__()
        _checks.positive(num_classes, "num_classes", integer=True)
        _checks.positive(depth, "depth", integer=True)
        self.embed = PatchEmbedding(image_size, patch_size, in_channels, embed_dim, positions=positions)
        self.blocks = nn.ModuleList(ViTBlock(embed_dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, images):
        """(logits (B, num_classes), list of ``depth`` attention weights (B, heads, N+1, N+1))."""
        x = self.embed(images)
        weights = []
        for block in self.blocks:
            x, w = block(x)
            weights.append(w)
        return self.head(self.norm(x[:, 0])), weights
