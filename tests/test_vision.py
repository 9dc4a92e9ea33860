"""vision (§3.6, §4.3): SE, CBAM, attention gate, non-local block, patches and ViT.

References are brute-force loops over plain Python floats written from the papers' formulas,
torch.nn.functional.interpolate for resampling, and torch.nn.TransformerEncoderLayer.
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attnbook import MultiHeadAttention
from attnbook.vision import (CBAM, AttentionGate, NonLocalBlock, PatchEmbedding, SqueezeExcitation, ViT,
                             ViTBlock, patchify, unpatchify)
from support import DEVICES, DTYPES, randn, tol


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads; on a shared 2-core machine two threads are much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(cls, *args, dtype=torch.float64, device="cpu", **kwargs):
    return cls(*args, **kwargs).to(dtype=dtype, device=device)


def floats(t):
    """Nested Python lists of floats (double precision): the brute-force references use no tensor ops."""
    return t.detach().cpu().double().tolist()


def close(got, want, dtype):
    """Compare a tensor with a reference in nested lists, at the tolerance of ``dtype``."""
    torch.testing.assert_close(got.detach().cpu().double(), torch.tensor(want, dtype=torch.float64), **tol(dtype))


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def linear(weight, bias, v):
    """y_k = Σ_c W_kc v_c + b_k by hand."""
    return [sum(w * a for w, a in zip(row, v)) + (bias[k] if bias is not None else 0.0)
            for k, row in enumerate(weight)]


def relu(v):
    return [max(a, 0.0) for a in v]


def mlp_by_hand(first, second):
    """v -> W₂ ReLU(W₁ v + b₁) + b₂ from two nn.Linear layers."""
    w1, b1, w2, b2 = floats(first.weight), floats(first.bias), floats(second.weight), floats(second.bias)
    return lambda v: linear(w2, b2, relu(linear(w1, b1, v)))


def one_by_one(conv):
    """The (out, in) matrix and bias of a 1×1 convolution."""
    return floats(conv.weight[:, :, 0, 0]), (floats(conv.bias) if conv.bias is not None else None)


# ---------------------------------------------------------------- squeeze-and-excitation

def se_by_hand(x, se):
    """s = σ(W₂ δ(W₁ z)), z_c = (1/HW) Σ_ij x_cij; y_cij = s_c x_cij."""
    mlp = mlp_by_hand(se.reduce, se.expand)
    outputs, gates = [], []
    for image in floats(x):
        means = [sum(sum(row) for row in ch) / (len(ch) * len(ch[0])) for ch in image]
        s = [sigmoid(v) for v in mlp(means)]
        gates.append(s)
        outputs.append([[[v * s[c] for v in row] for row in ch] for c, ch in enumerate(image)])
    return outputs, gates


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, reduction", [((2, 8, 3, 5), 4), ((1, 6, 4, 4), 6), ((3, 5, 2, 7), 1)])
def test_squeeze_excitation_matches_brute_force(device, dtype, shape, reduction):
    se = build(SqueezeExcitation, shape[1], reduction, dtype=dtype, device=device)
    x = randn(*shape, dtype=dtype, device=device)
    y = se(x)
    want_y, want_s = se_by_hand(x, se)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    close(y, want_y, dtype)
    close(se.last_weights, want_s, dtype)
    assert ((se.last_weights > 0) & (se.last_weights < 1)).all()


# ---------------------------------------------------------------- CBAM

def cbam_by_hand(x, cbam):
    """M_c = σ(MLP(avg) + MLP(max)), x' = M_c x; M_s = σ(conv([mean_c x'; max_c x'])) with zero padding."""
    mlp = mlp_by_hand(cbam.mlp[0], cbam.mlp[2])
    kernel = floats(cbam.conv.weight)[0]           # (2, k, k)
    k = len(kernel[0])
    pad = k // 2
    outputs, channel_maps, spatial_maps = [], [], []
    for image in floats(x):
        C, H, W = len(image), len(image[0]), len(image[0][0])
        avg = [sum(sum(row) for row in ch) / (H * W) for ch in image]
        top = [max(max(row) for row in ch) for ch in image]
        mc = [sigmoid(a + m) for a, m in zip(mlp(avg), mlp(top))]
        xp = [[[v * mc[c] for v in row] for row in ch] for c, ch in enumerate(image)]
        pooled = [[[sum(xp[c][i][j] for c in range(C)) / C for j in range(W)] for i in range(H)],
                  [[max(xp[c][i][j] for c in range(C)) for j in range(W)] for i in range(H)]]
        ms = [[sigmoid(sum(kernel[m][u][v] * pooled[m][i + u - pad][j + v - pad]
                           for m in range(2) for u in range(k) for v in range(k)
                           if 0 <= i + u - pad < H and 0 <= j + v - pad < W))
               for j in range(W)] for i in range(H)]
        channel_maps.append(mc)
        spatial_maps.append(ms)
        outputs.append([[[xp[c][i][j] * ms[i][j] for j in range(W)] for i in range(H)] for c in range(C)])
    return outputs, channel_maps, spatial_maps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, reduction, kernel_size", [((2, 8, 5, 6), 4, 7), ((1, 4, 3, 7), 2, 3),
                                                            ((2, 3, 4, 2), 1, 1)])
def test_cbam_maps_and_output_match_brute_force(device, dtype, shape, reduction, kernel_size):
    cbam = build(CBAM, shape[1], reduction, kernel_size, dtype=dtype, device=device)
    x = randn(*shape, dtype=dtype, device=device)
    y = cbam(x)
    want_y, want_c, want_s = cbam_by_hand(x, cbam)
    assert y.shape == x.shape and y.dtype == dtype
    assert cbam.last_channel_weights.shape == shape[:2]
    assert cbam.last_spatial_weights.shape == (shape[0], *shape[2:])
    close(cbam.last_channel_weights, want_c, dtype)
    close(cbam.last_spatial_weights, want_s, dtype)
    close(y, want_y, dtype)


# ---------------------------------------------------------------- attention gate

def gate_by_hand(x, g, gate):
    """α_ij = σ(ψ ReLU(W_x x_ij + W_g g_ij + b_g) + b_ψ), at every position of x (g on the same grid)."""
    (wx, _), (wg, bg), (psi, bpsi) = one_by_one(gate.w_x), one_by_one(gate.w_g), one_by_one(gate.psi)
    X, G = floats(x), floats(g)
    alphas, outputs = [], []
    for image, signal in zip(X, G):
        H, W = len(image[0]), len(image[0][0])
        alpha = [[sigmoid(linear(psi, bpsi, relu([a + b for a, b in zip(
            linear(wx, None, [ch[i][j] for ch in image]), linear(wg, bg, [ch[i][j] for ch in signal]))]))[0])
            for j in range(W)] for i in range(H)]
        alphas.append([alpha])
        outputs.append([[[ch[i][j] * alpha[i][j] for j in range(W)] for i in range(H)] for ch in image])
    return outputs, alphas


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("g_size", [(4, 6), (2, 3), (3, 5)])
def test_attention_gate_matches_brute_force(device, dtype, g_size):
    """Same grid: by hand. Other grid: g resampled to x's grid first (resampling commutes with W_g)."""
    gate = build(AttentionGate, 3, 5, 4, dtype=dtype, device=device)
    x = randn(2, 3, 4, 6, dtype=dtype, device=device)
    g = randn(2, 5, *g_size, seed=1, dtype=dtype, device=device)
    out, alpha = gate(x, g)
    assert out.shape == x.shape and alpha.shape == (2, 1, 4, 6) and alpha.dtype == dtype
    assert ((alpha > 0) & (alpha < 1)).all()
    torch.testing.assert_close(out, x * alpha, rtol=0, atol=0)
    g_on_x = g if g_size == (4, 6) else F.interpolate(g, size=(4, 6), mode="bilinear", align_corners=False)
    want_out, want_alpha = gate_by_hand(x, g_on_x, gate)
    close(alpha, want_alpha, dtype)
    close(out, want_out, dtype)


# ---------------------------------------------------------------- non-local block

def nonlocal_by_hand(x, block):
    """z_i = W_z Σ_j (f_ij / C_i) g(x_j) + x_i, positions i, j in row-major order over (T,) H, W."""
    wt, bt = floats(block.theta.weight), floats(block.theta.bias)
    wp, bp = floats(block.phi.weight), floats(block.phi.bias)
    wg, bg = floats(block.g.weight), floats(block.g.bias)
    wz, bz = floats(block.w_z.weight), floats(block.w_z.bias)
    positions = list(itertools.product(*(range(s) for s in x.shape[2:])))
    n = len(positions)
    z, maps = torch.zeros(x.shape, dtype=torch.float64), []
    for b in range(x.shape[0]):
        v = [floats(x[(b, slice(None), *pos)]) for pos in positions]
        theta, phi, g = ([linear(w, bias, vi) for vi in v] for w, bias in ((wt, bt), (wp, bp), (wg, bg)))
        dots = [[sum(a * c for a, c in zip(theta[i], phi[j])) for j in range(n)] for i in range(n)]
        if block.mode == "embedded_gaussian":
            rows = [[math.exp(d) for d in row] for row in dots]
            weights = [[e / sum(row) for e in row] for row in rows]
        else:
            weights = [[d / n for d in row] for row in dots]
        maps.append(weights)
        for i, pos in enumerate(positions):
            y = [sum(weights[i][j] * g[j][k] for j in range(n)) for k in range(len(g[0]))]
            zi = [a + c for a, c in zip(linear(wz, bz, y), v[i])]
            z[(b, slice(None), *pos)] = torch.tensor(zi, dtype=torch.float64)
    return z.tolist(), maps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", NonLocalBlock.MODES)
@pytest.mark.parametrize("shape, inter", [((2, 6, 3, 4), None), ((1, 4, 2, 5), 3), ((2, 3, 2, 2, 3), 2)])
def test_non_local_block_matches_brute_force(device, dtype, mode, shape, inter):
    block = build(NonLocalBlock, shape[1], inter, mode, zero_init=False, dtype=dtype, device=device)
    x = randn(*shape, dtype=dtype, device=device)
    z = block(x)
    want_z, want_map = nonlocal_by_hand(x, block)
    n = math.prod(shape[2:])
    assert z.shape == x.shape and z.dtype == dtype and block.last_weights.shape == (shape[0], n, n)
    close(block.last_weights, want_map, dtype)
    close(z, want_z, dtype)
    if mode == "embedded_gaussian":
        torch.testing.assert_close(block.last_weights.sum(-1), torch.ones(shape[0], n, dtype=dtype, device=device),
                                   **tol(dtype))


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 6),
       spatial=st.lists(st.integers(1, 4), min_size=2, max_size=3), seed=st.integers(0, 1000))
def test_non_local_zero_init_is_identity_and_map_rows_sum_to_one(batch, channels, spatial, seed):
    block = NonLocalBlock(channels).double()   # the paper's init: W_z = 0
    x = randn(batch, channels, *spatial, seed=seed)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    n = math.prod(spatial)
    torch.testing.assert_close(block.last_weights.sum(-1), torch.ones(batch, n, dtype=torch.float64))
    assert (block.last_weights >= 0).all()


def test_non_local_block_is_equivariant_to_permuting_positions():
    """No positions in the formula: shuffling the pixels shuffles the output and the map."""
    block = NonLocalBlock(4, zero_init=False).double()
    x = randn(2, 4, 3, 5)
    perm = torch.randperm(15)
    z, weights = block(x), block.last_weights
    shuffled = x.flatten(2)[..., perm].reshape(x.shape)
    torch.testing.assert_close(block(shuffled).flatten(2), z.flatten(2)[..., perm])
    torch.testing.assert_close(block.last_weights, weights[:, perm][:, :, perm])


def test_non_local_block_stays_finite_on_huge_inputs():
    block = NonLocalBlock(4, zero_init=False).double()
    z = block(randn(1, 4, 3, 3) * 1e4)
    assert torch.isfinite(z).all() and torch.isfinite(block.last_weights).all()
    torch.testing.assert_close(block.last_weights.sum(-1), torch.ones(1, 9, dtype=torch.float64))


# ---------------------------------------------------------------- patches

def test_patch_order_matches_brute_force_loop():
    images = randn(2, 3, 3, 8, 12)          # two leading dimensions, non-square image
    p, rows, cols = 4, 2, 3
    patches = patchify(images, p)
    assert patches.shape == (2, 3, rows * cols, 3 * p * p)
    for r, c in itertools.product(range(rows), range(cols)):
        want = images[..., :, r * p:(r + 1) * p, c * p:(c + 1) * p].flatten(-3)
        torch.testing.assert_close(patches[..., r * cols + c, :], want, rtol=0, atol=0)


@settings(max_examples=20, deadline=None)
@given(lead=st.lists(st.integers(1, 2), max_size=2), channels=st.integers(1, 3), rows=st.integers(1, 4),
       cols=st.integers(1, 4), p=st.integers(1, 4))
def test_patchify_and_unpatchify_invert_each_other(lead, channels, rows, cols, p):
    images = randn(*lead, channels, rows * p, cols * p)
    patches = patchify(images, p)
    assert patches.shape == (*lead, rows * cols, channels * p * p)
    torch.testing.assert_close(unpatchify(patches, p, (rows * p, cols * p)), images, rtol=0, atol=0)
    torch.testing.assert_close(patchify(unpatchify(patches, p, (rows * p, cols * p)), p), patches, rtol=0, atol=0)


def test_patchify_takes_integer_images():
    images = torch.arange(2 * 16).reshape(2, 1, 4, 4)
    assert torch.equal(unpatchify(patchify(images, 2), 2, 4), images)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("class_token, positions", [(True, True), (False, True), (True, False), (False, False)])
def test_patch_embedding_equals_patchify_then_linear(device, dtype, class_token, positions):
    embed = build(PatchEmbedding, (8, 12), 4, 3, 10, class_token=class_token, positions=positions,
                  dtype=dtype, device=device)
    if class_token:
        with torch.no_grad():
            embed.class_token.normal_()
    linear_map = build(nn.Linear, 3 * 16, 10, dtype=dtype, device=device)
    with torch.no_grad():
        linear_map.weight.copy_(embed.proj.weight.flatten(1))
        linear_map.bias.copy_(embed.proj.bias)
    images = randn(2, 3, 8, 12, dtype=dtype, device=device)
    want = linear_map(patchify(images, 4))                       # (2, 6, 10)
    if class_token:
        want = torch.cat([embed.class_token.expand(2, 1, 10), want], dim=1)
    if positions:
        want = want + embed.positions
    got = embed(images)
    assert got.shape == (2, 6 + class_token, 10) and embed.num_patches == 6
    torch.testing.assert_close(got, want, **tol(dtype))


# ---------------------------------------------------------------- ViT block and ViT

def torch_twin(embed_dim, heads, mlp_ratio, dtype):
    """A torch pre-norm encoder layer (GELU, no dropout) with random norms and biases, and a ViTBlock copy."""
    layer = nn.TransformerEncoderLayer(embed_dim, heads, round(embed_dim * mlp_ratio), dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True, dtype=dtype)
    with torch.no_grad():
        for p in (layer.self_attn.in_proj_bias, layer.self_attn.out_proj.bias, layer.norm1.weight,
                  layer.norm1.bias, layer.norm2.weight, layer.norm2.bias):
            p.normal_()
    block = ViTBlock(embed_dim, heads, mlp_ratio).to(dtype)
    block.attn = MultiHeadAttention.from_torch(layer.self_attn)
    for mine, theirs in ((block.norm1, layer.norm1), (block.norm2, layer.norm2),
                         (block.mlp[0], layer.linear1), (block.mlp[2], layer.linear2)):
        mine.load_state_dict(theirs.state_dict())
    return layer, block


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("embed_dim, heads, mlp_ratio, n", [(12, 3, 4.0, 5), (8, 1, 2.0, 7), (16, 8, 0.5, 3)])
def test_vit_block_matches_torch_encoder_layer(device, dtype, embed_dim, heads, mlp_ratio, n):
    layer, block = torch_twin(embed_dim, heads, mlp_ratio, dtype)
    layer, block = layer.to(device), block.to(device)
    x = randn(2, n, embed_dim, dtype=dtype, device=device)
    out, weights = block(x)
    assert out.shape == x.shape and weights.shape == (2, heads, n, n)
    torch.testing.assert_close(out, layer(x), **tol(dtype))
    normed = layer.norm1(x)
    _, want = layer.self_attn(normed, normed, normed, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(weights, want, **tol(dtype))
    torch.testing.assert_close(weights, block.attn(normed, normed, normed)[1], **tol(dtype))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, heads, n, dtype=dtype, device=device), **tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vit_shapes(device, dtype):
    vit = build(ViT, (8, 12), 4, 3, 5, 16, 3, 4, dtype=dtype, device=device)
    logits, weights = vit(randn(2, 3, 8, 12, dtype=dtype, device=device))
    assert logits.shape == (2, 5) and logits.dtype == dtype and logits.device.type == torch.device(device).type
    assert len(weights) == 3 and all(w.shape == (2, 4, 7, 7) for w in weights)


def test_vit_without_positions_ignores_patch_order():
    """Without position embeddings a ViT sees a bag of patches: shuffling them changes nothing
    but the order of the attention weights; with positions the logits change."""
    images, perm = randn(3, 1, 8, 8), torch.randperm(16)
    shuffled = unpatchify(patchify(images, 2)[:, perm], 2, 8)
    bag = ViT(8, 2, 1, 4, 16, 2, 2, positions=False).double()
    logits, weights = bag(images)
    logits2, weights2 = bag(shuffled)
    torch.testing.assert_close(logits2, logits)
    order = torch.cat([torch.zeros(1, dtype=torch.long), perm + 1])   # the class token stays first
    torch.testing.assert_close(weights2[-1], weights[-1][:, :, order][:, :, :, order])
    placed = ViT(8, 2, 1, 4, 16, 2, 2).double()
    with torch.no_grad():
        placed.embed.positions.normal_()
    assert not torch.allclose(placed(shuffled)[0], placed(images)[0])


def test_tiny_vit_learns_bars_in_a_few_steps():
    """8×8 images of a horizontal or a vertical bar at a random place: a tiny ViT separates them."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (32,), generator=g)
    where = torch.randint(0, 8, (32,), generator=g)
    images = 0.3 * torch.randn(32, 1, 8, 8, generator=g)
    for i, (label, k) in enumerate(zip(labels, where)):
        if label:
            images[i, 0, :, k] += 1.0
        else:
            images[i, 0, k, :] += 1.0
    vit = ViT(8, 4, 1, 2, 16, 1, 4)
    optimizer = torch.optim.Adam(vit.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(vit(images)[0], labels)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = (vit(images)[0].argmax(-1) == labels).float().mean().item()
    assert losses[-1] < 0.25 * losses[0] and accuracy >= 0.9


# ---------------------------------------------------------------- gradients

GRADIENT_CASES = {
    "se": lambda: (SqueezeExcitation(8, 2), (randn(2, 8, 3, 4, grad=True),)),
    "cbam": lambda: (CBAM(8, 2, 3), (randn(2, 8, 3, 4, grad=True),)),
    "gate": lambda: (AttentionGate(3, 5, 4), (randn(2, 3, 4, 6, grad=True), randn(2, 5, 2, 3, grad=True))),
    "nonlocal": lambda: (NonLocalBlock(4, zero_init=False), (randn(2, 4, 2, 3, grad=True),)),
    "nonlocal_dot": lambda: (NonLocalBlock(4, mode="dot", zero_init=False), (randn(2, 4, 2, 2, 3, grad=True),)),
    "embedding": lambda: (PatchEmbedding(4, 2, 3, 8), (randn(2, 3, 4, 4, grad=True),)),
    "block": lambda: (ViTBlock(8, 2), (randn(2, 5, 8, grad=True),)),
    "vit": lambda: (ViT(4, 2, 1, 3, 8, 2, 2), (randn(2, 1, 4, 4, grad=True),)),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradients_reach_every_parameter_and_the_input(case):
    module, inputs = GRADIENT_CASES[case]()
    module = module.double()
    out = module(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    (out * randn(*out.shape, seed=7)).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for x in inputs:
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_cbam_and_se_run_in_bfloat16():
    x = randn(2, 8, 4, 4, dtype=torch.bfloat16)
    for module in (SqueezeExcitation(8, 2), CBAM(8, 2)):
        y = module.to(torch.bfloat16)(x)
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


# ---------------------------------------------------------------- bad input

X = randn(2, 8, 4, 4, dtype=torch.float32)


@pytest.mark.parametrize("make, error, match", [
    (lambda: SqueezeExcitation(8, 16), ValueError, "reduction=16 is larger than channels=8"),
    (lambda: SqueezeExcitation(0), ValueError, "channels"),
    (lambda: SqueezeExcitation(8, 2.5), TypeError, "reduction"),
    (lambda: CBAM(4), ValueError, "reduction=16"),
    (lambda: CBAM(8, 2, kernel_size=4), ValueError, "kernel_size"),
    (lambda: CBAM(8, 2, kernel_size=0), ValueError, "kernel_size"),
    (lambda: AttentionGate(3, 5, 0), ValueError, "inter_channels"),
    (lambda: AttentionGate(3, 0, 2), ValueError, "g_channels"),
    (lambda: NonLocalBlock(8, mode="gaussian"), ValueError, "mode"),
    (lambda: NonLocalBlock(8, inter_channels=0), ValueError, "inter_channels"),
    (lambda: PatchEmbedding(10, 4, 3, 16), ValueError, "patch_size=4 does not divide"),
    (lambda: PatchEmbedding((8, 8, 8), 4, 3, 16), TypeError, "image_size"),
    (lambda: PatchEmbedding(8, 4, 0, 16), ValueError, "in_channels"),
    (lambda: ViTBlock(10, 3), ValueError, "num_heads"),
    (lambda: ViTBlock(8, 2, mlp_ratio=0.0), ValueError, "mlp_ratio"),
    (lambda: ViTBlock(8, 2, mlp_ratio=0.01), ValueError, "mlp_ratio"),
    (lambda: ViT(8, 2, 1, 0, 16, 2, 2), ValueError, "num_classes"),
    (lambda: ViT(8, 2, 1, 3, 16, 0, 2), ValueError, "depth"),
    (lambda: ViT(8, 3, 1, 3, 16, 2, 2), ValueError, "patch_size"),
])
def test_bad_construction_names_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("call, error, match", [
    (lambda: SqueezeExcitation(8, 2)(randn(2, 5, 4, 4, dtype=torch.float32)), ValueError, "x has 5 channels"),
    (lambda: SqueezeExcitation(8, 2)(X[0]), ValueError, r"x must be \(B, C, H, W\)"),
    (lambda: SqueezeExcitation(8, 2)(X.long()), TypeError, "x must be a floating-point"),
    (lambda: SqueezeExcitation(8, 2)(X.double()), TypeError, "x has dtype torch.float64"),
    (lambda: SqueezeExcitation(8, 2)(X.tolist()), TypeError, "x must be a torch.Tensor"),
    (lambda: CBAM(8, 2)(randn(2, 4, 4, 4, dtype=torch.float32)), ValueError, "x has 4 channels"),
    (lambda: AttentionGate(8, 5, 4)(X, randn(2, 6, 2, 2, dtype=torch.float32)), ValueError, "g has 6 channels"),
    (lambda: AttentionGate(8, 5, 4)(X, randn(3, 5, 2, 2, dtype=torch.float32)), ValueError, "g has batch size 3"),
    (lambda: AttentionGate(8, 5, 4)(X, randn(2, 5, 2, dtype=torch.float32)), ValueError, "g must be"),
    (lambda: NonLocalBlock(8)(X[0]), ValueError, r"x must be \(B, C, H, W\) or \(B, C, T, H, W\)"),
    (lambda: NonLocalBlock(6)(X), ValueError, "x has 8 channels"),
    (lambda: patchify(X, 3), ValueError, "patch_size=3 does not divide"),
    (lambda: patchify(X, 0), ValueError, "patch_size"),
    (lambda: patchify(X[0, 0], 2), ValueError, "images must have at least 3"),
    (lambda: unpatchify(patchify(X, 2), 2, 6), ValueError, "patches has shape"),
    (lambda: unpatchify(patchify(X, 2), 2, 8), ValueError, "patches has shape"),
    (lambda: unpatchify(patchify(X, 2)[..., :-1], 2, 4), ValueError, "patches has shape"),
    (lambda: unpatchify(patchify(X, 2), 2, "4"), TypeError, "image_size"),
    (lambda: PatchEmbedding(4, 2, 3, 8)(X), ValueError, "images has 8 channels"),
    (lambda: PatchEmbedding(8, 2, 8, 8)(X), ValueError, r"images has size \(4, 4\)"),
    (lambda: ViTBlock(8, 2)(randn(2, 5, 6, dtype=torch.float32)), ValueError, r"x must be \(B, N, E\)"),
    (lambda: ViTBlock(8, 2)(randn(5, 8, dtype=torch.float32)), ValueError, r"x must be \(B, N, E\)"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
