"""attnbook.interpret (§5.4): rollout, gradients, Grad-CAM and occlusion against brute-force references."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from support import DEVICES, DTYPES, randn, tol
from torch import nn

from attnbook.interpret import (attention_rollout, fuse_heads, grad_cam, gradient_x_input,
                                integrated_gradients, occlusion, saliency, vit_grad_cam)

FAST = settings(max_examples=20, deadline=None)


# --- models and references --------------------------------------------------------------------

def softmax_weights(*shape, seed=0, dtype=torch.float64, device="cpu"):
    return torch.softmax(3 * randn(*shape, seed=seed, dtype=dtype, device=device), dim=-1)


def brute_rollout(layers, head_fusion="mean", residual=True, discard_ratio=0.0):
    """rollout = Â_L ··· Â_1 from the definition, one batch element and one layer at a time."""
    batch, n = layers[0].shape[0], layers[0].shape[-1]
    out = torch.empty(batch, n, n, dtype=torch.float64)
    pick = {"mean": lambda hs: sum(hs) / len(hs), "max": lambda hs: torch.stack(hs).max(0).values,
            "min": lambda hs: torch.stack(hs).min(0).values}[head_fusion]
    for b in range(batch):
        product = torch.eye(n, dtype=torch.float64)
        for weights in layers:
            fused = pick([weights[b, k].double() for k in range(weights.shape[1])]).clone()
            for i in range(n):
                for j in sorted(range(n), key=lambda j: fused[i, j].item())[:int(discard_ratio * n)]:
                    fused[i, j] = 0.0
            a_hat = 0.5 * fused + 0.5 * torch.eye(n, dtype=torch.float64) if residual else fused
            for i in range(n):
                a_hat[i] = a_hat[i] / a_hat[i].sum()
            product = a_hat @ product
        out[b] = product
    return out


def linear_model(inputs_shape, classes=3, seed=1, dtype=torch.float64, device="cpu"):
    """f(x) = W·x + c on the flattened input; returns (f, W (classes, *shape))."""
    weight = randn(classes, *inputs_shape, seed=seed, dtype=dtype, device=device)
    bias = randn(classes, seed=seed + 1, dtype=dtype, device=device)
    return (lambda x: x.flatten(1) @ weight.flatten(1).T + bias), weight


def mlp(features=6, classes=3, dtype=torch.float64, device="cpu", seed=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 16), nn.Tanh(), nn.Linear(16, classes)).to(
        dtype=dtype, device=device)


class TinyCNN(nn.Module):
    """features (conv, relu, conv, in-place relu) then head (pool, linear): the layer is features[2]."""

    def __init__(self, channels=3, classes=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 5, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(5, 6, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, classes))

    def forward(self, x):
        return self.head(self.features(x))


class TinyViT(nn.Module):
    """Patch embedding, a class token (optional), two encoder blocks, a linear head."""

    def __init__(self, channels=3, embed=8, patch=4, grid=(2, 3), classes=4, class_token=True):
        super().__init__()
        self.embed = nn.Conv2d(channels, embed, patch, stride=patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, embed)) if class_token else None
        self.position = nn.Parameter(torch.randn(1, grid[0] * grid[1] + class_token, embed))
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(embed, 2, 16, dropout=0.0, batch_first=True)
                                    for _ in range(2))
        self.head = nn.Linear(embed, classes)

    def tokens(self, images):
        t = self.embed(images).flatten(2).transpose(1, 2)
        if self.class_token is not None:
            t = torch.cat([self.class_token.expand(len(t), -1, -1), t], dim=1)
        return t + self.position

    def classify(self, tokens):
        return self.head(tokens[:, 0] if self.class_token is not None else tokens.mean(1))

    def forward(self, images):
        t = self.tokens(images)
        for block in self.blocks:
            t = block(t)
        return self.classify(t)


def manual_cam(activations, grads, size):
    """Grad-CAM from the paper's definition, looping over images and channels."""
    maps = []
    for a, g in zip(activations, grads):
        cam = torch.zeros_like(a[0])
        for c in range(a.shape[0]):
            cam = cam + g[c].mean() * a[c]
        cam = F.interpolate(cam.clamp_min(0)[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        maps.append(cam / cam.max() if cam.max() > 0 else cam)
    return torch.stack(maps)


def picked_sum(scores, target):
    return scores[torch.arange(len(scores)), target].sum()


def no_hooks(model):
    return all(not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
               and not getattr(m, "_backward_pre_hooks", {}) for m in model.modules())


# --- attention rollout ------------------------------------------------------------------------

@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.45])
def test_rollout_equals_brute_force(head_fusion, residual, discard_ratio):
    layers = [softmax_weights(2, 3, 5, 5, seed=s) for s in range(3)]
    got = attention_rollout(layers, head_fusion=head_fusion, residual=residual, discard_ratio=discard_ratio)
    torch.testing.assert_close(got, brute_rollout(layers, head_fusion, residual, discard_ratio))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_dtypes_devices_and_unbatched(device, dtype):
    layers = [softmax_weights(2, 4, 6, 6, seed=s, dtype=dtype, device=device) for s in range(4)]
    got = attention_rollout(layers)
    assert got.shape == (2, 6, 6) and got.dtype == dtype and got.device.type == device
    torch.testing.assert_close(got.cpu().double(), brute_rollout([w.cpu() for w in layers]), **tol(dtype))
    torch.testing.assert_close(attention_rollout([w[1] for w in layers]), got[1])


def test_rollout_of_one_layer_without_residual_is_the_fused_weights():
    weights = softmax_weights(3, 4, 7, 7)
    torch.testing.assert_close(attention_rollout([weights], residual=False), weights.mean(1))
    for fusion, fused in (("max", weights.amax(1)), ("min", weights.amin(1))):
        torch.testing.assert_close(attention_rollout([weights], head_fusion=fusion, residual=False),
                                   fused / fused.sum(-1, keepdim=True))
        torch.testing.assert_close(fuse_heads(weights, fusion), fused)


@FAST
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 7), st.sampled_from(["mean", "max", "min"]),
       st.booleans(), st.sampled_from([0.0, 0.3, 0.9]), st.integers(0, 2**16))
def test_rollout_rows_sum_to_one(layers, heads, n, head_fusion, residual, discard_ratio, seed):
    weights = [softmax_weights(2, heads, n, n, seed=seed + i) for i in range(layers)]
    got = attention_rollout(weights, head_fusion=head_fusion, residual=residual, discard_ratio=discard_ratio)
    assert (got >= 0).all()
    torch.testing.assert_close(got.sum(-1), torch.ones(2, n, dtype=torch.float64))


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("residual", [True, False])
def test_rollout_of_identity_weights_is_the_identity(head_fusion, residual):
    eye = torch.eye(5, dtype=torch.float64).expand(2, 3, 5, 5)
    got = attention_rollout([eye] * 3, head_fusion=head_fusion, residual=residual)
    torch.testing.assert_close(got, torch.eye(5, dtype=torch.float64).expand(2, 5, 5))


def test_rollout_keeps_a_fully_masked_row_zero_without_residual():
    weights = softmax_weights(1, 2, 4, 4)
    weights[..., 2, :] = 0.0  # query 2 may attend to nothing
    got = attention_rollout([weights, softmax_weights(1, 2, 4, 4, seed=5)], residual=False)
    assert torch.isfinite(got).all()
    with_residual = attention_rollout([weights], residual=True)
    torch.testing.assert_close(with_residual[0, 2], torch.eye(4, dtype=torch.float64)[2])


def test_rollout_bfloat16():
    layers = [softmax_weights(2, 2, 5, 5, seed=s) for s in range(3)]
    got = attention_rollout([w.bfloat16() for w in layers])
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), attention_rollout(layers), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("weights, error, match", [
    (torch.ones(2, 3, 3) / 3, TypeError, "weights_per_layer"),              # a tensor, not a list
    ([], ValueError, "weights_per_layer"),
    ([torch.ones(3, 3) / 3], ValueError, r"weights_per_layer\[0\]"),        # rank 2
    ([torch.ones(1, 2, 2, 3, 3) / 3], ValueError, r"weights_per_layer\[0\]"),  # rank 5
    ([torch.ones(2, 2, 3, 4) / 4], ValueError, r"weights_per_layer\[0\]"),  # not square
    ([torch.ones(2, 2, 3, 3), torch.ones(2, 2, 4, 4)], ValueError, r"weights_per_layer\[1\]"),
    ([torch.ones(2, 2, 3, 3), torch.ones(3, 2, 3, 3)], ValueError, r"weights_per_layer\[1\]"),
    ([torch.ones(2, 3, 3, dtype=torch.long)], TypeError, r"weights_per_layer\[0\]"),
    ([torch.ones(2, 3, 3), torch.ones(2, 3, 3, dtype=torch.float64)], TypeError, r"weights_per_layer\[1\]"),
    ([-torch.ones(2, 3, 3)], ValueError, "non-negative"),
    ([torch.full((2, 3, 3), math.nan)], ValueError, "finite"),
])
def test_rollout_rejects_bad_weights(weights, error, match):
    with pytest.raises(error, match=match):
        attention_rollout(weights)


def test_rollout_rejects_bad_options():
    weights = [softmax_weights(2, 3, 3)]
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(weights, head_fusion="sum")
    for ratio in (-0.1, 1.0, math.nan):
        with pytest.raises(ValueError, match="discard_ratio"):
            attention_rollout(weights, discard_ratio=ratio)
    with pytest.raises(TypeError, match="residual"):
        attention_rollout(weights, residual=1)


# --- gradient × input, saliency ---------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_x_input_of_a_linear_model_is_w_times_x(device, dtype):
    f, weight = linear_model((2, 3, 4), dtype=dtype, device=device)
    x = randn(5, 2, 3, 4, seed=3, dtype=dtype, device=device)
    target = torch.tensor([0, 2, 1, 2, 0], device=device)
    got = gradient_x_input(f, x, target)
    assert got.dtype == dtype and got.device.type == device
    torch.testing.assert_close(got, weight[target] * x, **tol(dtype))
    torch.testing.assert_close(gradient_x_input(f, x, 1), weight[1] * x, **tol(dtype))
    torch.testing.assert_close(saliency(f, x, target), weight[target].abs(), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_of_an_mlp_equal_per_example_jacobians(dtype):
    model = mlp(dtype=dtype)
    x = randn(4, 6, seed=4, dtype=dtype)
    target = torch.tensor([2, 0, 1, 1])
    want = torch.stack([torch.autograd.functional.jacobian(lambda v: model(v[None])[0, t], xi)
                        for xi, t in zip(x, target)])
    torch.testing.assert_close(saliency(model, x, target), want.abs(), **tol(dtype))
    torch.testing.assert_close(gradient_x_input(model, x, target), x * want, **tol(dtype))


def test_gradients_work_under_no_grad_and_leave_inputs_and_parameters_alone():
    model = mlp()
    x = randn(3, 6, seed=5)
    with torch.no_grad():
        got = gradient_x_input(model, x, 1)
    assert got.abs().sum() > 0 and not x.requires_grad
    x.requires_grad_(True)
    saliency(model, x, 1)
    assert x.requires_grad and x.grad is None
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


# --- integrated gradients ---------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["riemann_trapezoid", "riemann_right"])
def test_integrated_gradients_of_a_linear_model(device, dtype, method):
    f, weight = linear_model((3, 5), dtype=dtype, device=device)
    x = randn(4, 3, 5, seed=6, dtype=dtype, device=device)
    target = torch.tensor([1, 0, 2, 1], device=device)
    for baseline, start in ((None, torch.zeros_like(x)), (0.5, torch.full_like(x, 0.5)),
                            (randn(3, 1, seed=7, dtype=dtype, device=device), None)):
        start = baseline.expand_as(x) if start is None else start
        got, delta = integrated_gradients(f, x, target, baseline=baseline, steps=3, method=method,
                                          return_delta=True)
        assert got.dtype == dtype and got.device.type == device
        torch.testing.assert_close(got, (x - start) * weight[target], **tol(dtype))
        torch.testing.assert_close(delta, torch.zeros_like(delta), **tol(dtype))


def test_integrated_gradients_of_a_separable_model_is_the_change_of_each_term():
    """f(x) = Σ_i v_i tanh(x_i): the path integral of each term is v_i (tanh x_i − tanh x'_i)."""
    v = randn(2, 7, seed=8)
    f = lambda x: torch.tanh(x) @ v.T  # noqa: E731
    x, start = randn(3, 7, seed=9), randn(3, 7, seed=10)
    target = torch.tensor([1, 0, 1])
    got = integrated_gradients(f, x, target, baseline=start, steps=400)
    torch.testing.assert_close(got, v[target] * (torch.tanh(x) - torch.tanh(start)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["riemann_trapezoid", "riemann_right"])
def test_integrated_gradients_completeness_gap_shrinks_with_steps(method):
    model = mlp(seed=11)
    x = 2 * randn(4, 6, seed=12)
    gaps = [integrated_gradients(model, x, 2, steps=s, method=method, return_delta=True)[1].abs().max()
            for s in (2, 8, 32, 128)]
    assert gaps[0] > 1e-3
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < gaps[0] / (15 if method == "riemann_right" else 100)


# --- Grad-CAM ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_cam_equals_a_manual_computation(device, dtype):
    model = TinyCNN().to(dtype=dtype, device=device)
    images = randn(3, 3, 9, 11, seed=13, dtype=dtype, device=device)
    target = torch.tensor([0, 3, 1], device=device)
    got = grad_cam(model, images, target, model.features[2])
    activations = model.features[:3](images)
    scores = model.head(model.features[3:](activations.clone()))
    (grads,) = torch.autograd.grad(picked_sum(scores, target), activations)
    want = manual_cam(activations.detach(), grads, (9, 11))
    assert got.shape == (3, 9, 11) and got.dtype == dtype and got.device.type == device
    torch.testing.assert_close(got, want, **tol(dtype))
    torch.testing.assert_close(grad_cam(model, images, target, "features.2"), got)
    assert (got >= 0).all()
    peaks = got.amax(dim=(1, 2))
    assert ((peaks == 1) | (got.flatten(1).abs().amax(1) == 0)).all()


class RegionScore(nn.Module):
    """Score of class k = the sum of feature map k inside region k (feature maps = 2× pooled image)."""

    def __init__(self, regions):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.AvgPool2d(2))
        with torch.no_grad():
            self.features[0].weight.copy_(torch.eye(2)[:, :, None, None])
        self.regions = regions

    def forward(self, x):
        a = self.features(x)
        return torch.stack([a[:, k, rows, cols].sum((-2, -1)) for k, (rows, cols) in enumerate(self.regions)], 1)


def test_grad_cam_peaks_inside_the_region_the_score_reads():
    regions = [(slice(1, 3), slice(1, 4)), (slice(5, 7), slice(4, 7))]  # on the 8×8 feature map
    model = RegionScore(regions)
    images = 0.2 * torch.rand(2, 2, 16, 16)
    for k, (rows, cols) in enumerate(regions):  # object k lies in channel k, inside region k
        images[:, k, 2 * rows.start:2 * rows.stop, 2 * cols.start:2 * cols.stop] += 1.0
    for k, (rows, cols) in enumerate(regions):
        cam = grad_cam(model, images, k, model.features)
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[2 * rows.start:2 * rows.stop, 2 * cols.start:2 * cols.stop] = True
        for b in range(2):
            peak = divmod(cam[b].argmax().item(), 16)
            assert inside[peak], (k, peak)
            assert cam[b][inside].mean() > 3 * cam[b][~inside].mean()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("class_token", [True, False])
def test_vit_grad_cam_equals_a_manual_computation(device, dtype, class_token):
    model = TinyViT(class_token=class_token).to(dtype=dtype, device=device)
    images = randn(2, 3, 8, 12, seed=14, dtype=dtype, device=device)
    target = torch.tensor([3, 1], device=device)
    got = vit_grad_cam(model, images, target, model.blocks[0], grid=(2, 3), has_class_token=class_token)
    model.eval()
    tokens = model.blocks[0](model.tokens(images))
    scores = model.classify(model.blocks[1](tokens))
    (grads,) = torch.autograd.grad(picked_sum(scores, target), tokens)
    first = 1 if class_token else 0
    on_grid = lambda t: t[:, first:].detach().reshape(2, 2, 3, -1).permute(0, 3, 1, 2)  # noqa: E731
    assert got.shape == (2, 8, 12) and got.dtype == dtype and got.device.type == device
    torch.testing.assert_close(got, manual_cam(on_grid(tokens), on_grid(grads), (8, 12)), **tol(dtype))
    assert got.amax() == 1 and (got >= 0).all()


def test_vit_grad_cam_infers_a_square_grid():
    model = TinyViT(grid=(2, 2))
    images = randn(1, 3, 8, 8, seed=15, dtype=torch.float32)
    torch.testing.assert_close(vit_grad_cam(model, images, 0, model.blocks[0]),
                               vit_grad_cam(model, images, 0, model.blocks[0], grid=(2, 2)))
    with pytest.raises(ValueError, match="grid"):
        vit_grad_cam(model, images, 0, model.blocks[0], grid=(1, 3))
    with pytest.raises(ValueError, match="grid"):
        vit_grad_cam(model, images, 0, model.blocks[0], has_class_token=False)  # 5 tokens: no square


class ModeRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def test_hooks_removed_and_training_modes_restored_even_after_an_error():
    model = TinyCNN()
    model.head.append(ModeRecorder())
    model.train()
    model.features[1].eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    images = randn(2, 3, 8, 8, seed=16, dtype=torch.float32)
    grad_cam(model, images, 1, model.features[2])
    saliency(model, images, 1)
    integrated_gradients(model, images, 1, steps=2)
    occlusion(model, images, 1)
    with pytest.raises(ValueError, match="target"):
        grad_cam(model, images, 9, model.features[2])
    assert no_hooks(model)
    assert [m.training for m in model.modules()] == modes
    assert not any(model.head[-1].seen), "the model must run in eval mode"
    assert not images.requires_grad and all(p.grad is None for p in model.parameters())


def test_grad_cam_is_all_zeros_when_nothing_speaks_for_the_class():
    model = RegionScore([(slice(0, 2), slice(0, 2))] * 2)
    cam = grad_cam(model, -torch.rand(1, 2, 8, 8), 0, model.features)  # negative features: ReLU kills all
    assert (cam == 0).all()


# --- occlusion --------------------------------------------------------------------------------

def brute_occlusion(f, images, target, patch, stride, fill):
    """For every pixel, the mean drop of y_t over the windows (documented offsets) that cover it."""
    height, width = images.shape[-2:]
    def offsets(size):
        return sorted(set(range(0, size - patch + 1, stride)) | {size - patch})
    drops = [[[] for _ in range(width)] for _ in range(height)]
    reference = f(images)[torch.arange(len(images)), target]
    for top in offsets(height):
        for left in offsets(width):
            occluded = images.clone()
            occluded[..., top:top + patch, left:left + patch] = fill
            drop = reference - f(occluded)[torch.arange(len(images)), target]
            for i in range(top, top + patch):
                for j in range(left, left + patch):
                    drops[i][j].append(drop)
    return torch.stack([torch.stack([sum(d) / len(d) for d in row], -1) for row in drops], -2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_occlusion_is_nonzero_exactly_on_the_region_the_score_reads(device, dtype):
    inside = torch.zeros(6, 8, dtype=torch.bool, device=device)
    inside[2:4, 2:6] = True  # aligned with the 2×2 windows
    weight = randn(3, 2, 6, 8, seed=17, dtype=dtype, device=device) * inside
    f = lambda x: torch.tanh(0.3 * x.flatten(1) @ weight.flatten(1).T)  # noqa: E731
    images = randn(2, 2, 6, 8, seed=18, dtype=dtype, device=device)
    target = torch.tensor([2, 0], device=device)
    for patch in (1, 2):
        got = occlusion(f, images, target, patch=patch)
        assert got.shape == (2, 6, 8) and got.dtype == dtype and got.device.type == device
        torch.testing.assert_close(got, brute_occlusion(f, images, target, patch, patch, 0.0), **tol(dtype))
        assert ((got != 0) == inside).all()


@pytest.mark.parametrize("patch, stride", [(3, 2), (3, 1), (4, None), (2, 2)])
def test_occlusion_equals_brute_force_with_overlapping_windows(patch, stride):
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 7 * 10, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    images = randn(2, 2, 7, 10, seed=19)
    fill = randn(2, 1, 1, seed=20)  # a per-channel baseline
    got = occlusion(model, images, 1, patch=patch, stride=stride, baseline=fill)
    want = brute_occlusion(model, images, torch.tensor([1, 1]), patch, stride or patch,
                           fill.expand(2, 2, 7, 10)[..., :patch, :patch])
    torch.testing.assert_close(got, want.detach())


# --- bad input --------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    f, _ = linear_model((4,))
    x = randn(2, 4, seed=21)
    images = randn(1, 3, 8, 8, seed=22, dtype=torch.float32)
    cnn, vit = TinyCNN(), TinyViT(grid=(2, 2))
    unused = TinyCNN()
    unused.spare = nn.Conv2d(3, 3, 1)
    cases = [
        (lambda: integrated_gradients(f, x, 0, steps=0), ValueError, "steps"),
        (lambda: integrated_gradients(f, x, 0, steps=2.5), TypeError, "steps"),
        (lambda: integrated_gradients(f, x, 0, method="simpson"), ValueError, "method"),
        (lambda: integrated_gradients(f, x, 0, baseline=torch.zeros(3, dtype=torch.float64)), ValueError, "baseline"),
        (lambda: integrated_gradients(f, x, 0, baseline=torch.zeros(4, dtype=torch.float32)), TypeError,
         "baseline"),
        (lambda: gradient_x_input(f, x, 3), ValueError, "target"),
        (lambda: gradient_x_input(f, x, -1), ValueError, "target"),
        (lambda: gradient_x_input(f, x, torch.tensor([0, 3])), ValueError, "target"),
        (lambda: gradient_x_input(f, x, torch.tensor([0, 1, 2])), ValueError, "target"),
        (lambda: gradient_x_input(f, x, torch.tensor([0.0, 1.0])), TypeError, "target"),
        (lambda: gradient_x_input(f, x, 1.0), TypeError, "target"),
        (lambda: saliency(f, x.long(), 0), TypeError, "inputs"),
        (lambda: saliency("model", x, 0), TypeError, "model_fn"),
        (lambda: saliency(lambda v: v.sum(1), x, 0), ValueError, "model_fn"),
        (lambda: occlusion(cnn, images, 0, patch=0), ValueError, "patch"),
        (lambda: occlusion(cnn, images, 0, patch=9), ValueError, "patch"),
        (lambda: occlusion(cnn, images, 0, patch=2, stride=0), ValueError, "stride"),
        (lambda: occlusion(cnn, images, 0, patch=2, stride=3), ValueError, "stride"),
        (lambda: occlusion(cnn, images[0], 0), ValueError, "images"),
        (lambda: occlusion(cnn, images, 0, baseline=torch.zeros(2, 1, 1)), ValueError, "baseline"),
        (lambda: occlusion(cnn, images, 4), ValueError, "target"),
        (lambda: grad_cam(cnn, images, 0, nn.Conv2d(3, 3, 1)), ValueError, "layer"),
        (lambda: grad_cam(cnn, images, 0, "features.9"), ValueError, "layer"),
        (lambda: grad_cam(cnn, images, 0, 3), TypeError, "layer"),
        (lambda: grad_cam(cnn, images, 0, cnn.head[2]), ValueError, "layer"),   # output (B, classes)
        (lambda: grad_cam(cnn, images, 7, cnn.features[2]), ValueError, "target"),
        (lambda: grad_cam(f, images, 0, cnn.features[2]), TypeError, "model"),
        (lambda: grad_cam(cnn, images[0], 0, cnn.features[2]), ValueError, "images"),
        (lambda: vit_grad_cam(cnn, images, 0, cnn.features[2]), ValueError, "layer"),
        (lambda: grad_cam(unused, images, 0, unused.spare), ValueError, "layer"),  # never called
        (lambda: vit_grad_cam(vit, images, 0, vit.blocks[0], grid=(2, 2.0)), TypeError, "grid"),
        (lambda: vit_grad_cam(vit, images, 0, vit.blocks[0], grid=(0, 4)), ValueError, "grid"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    assert no_hooks(cnn) and no_hooks(vit) and no_hooks(unused)
