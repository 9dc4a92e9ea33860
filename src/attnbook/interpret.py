"""Interpretability: attention rollout, gradient attributions, Grad-CAM and occlusion (§5.4).

Attention weights say where a layer looked, not why the output is what it is (Jain and Wallace,
2019), so next to attention rollout stand the methods that ask the model itself: gradients
(saliency, gradient × input, integrated gradients), class activation maps (Grad-CAM) and
occlusion. ``model_fn`` is any callable mapping a batch of inputs to scores (B, classes);
``target`` is a class index (int) or a (B,) tensor of them. An ``nn.Module`` is run in eval mode
(no dropout, no batch-norm updates) and every submodule is put back in its own mode afterwards;
no hook, ``requires_grad`` flag or ``.grad`` is left behind.
"""
import contextlib
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks

HEAD_FUSIONS = ("mean", "max", "min")
IG_METHODS = ("riemann_trapezoid", "riemann_right")
OCCLUSION_BATCH = 64  # occluded images per forward pass


# --- attention rollout ------------------------------------------------------------------------

def fuse_heads(weights, head_fusion="mean"):
    """Ã = mean, max or min of the attention weights over the heads (element-wise).

    weights (..., h, N, N) -> (..., N, N). Only "mean" keeps rows summing to 1.
    Cost O(h·N²) time, O(N²) memory. Explained in §5.4.
    """
    _checks.tensor(weights, "weights", min_dim=3)
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if head_fusion == "mean":
        return weights.mean(dim=-3)
    return weights.amax(dim=-3) if head_fusion == "max" else weights.amin(dim=-3)


def _check_layers(weights_per_layer):
    """Raise unless weights_per_layer is a non-empty list of (B, h, N, N) or (h, N, N) weights."""
    if not isinstance(weights_per_layer, (list, tuple)):
        raise TypeError("weights_per_layer must be a list of attention weights, one tensor per layer, "
                        f"got {type(weights_per_layer).__name__}")
    if not weights_per_layer:
        raise ValueError("weights_per_layer is empty; give at least one layer's weights")
    first = weights_per_layer[0]
    for i, w in enumerate(weights_per_layer):
        name = f"weights_per_layer[{i}]"
        _checks.tensor(w, name)
        if w.dim() not in (3, 4) or w.shape[-1] != w.shape[-2]:
            raise ValueError(f"{name} has shape {tuple(w.shape)}; attention weights must be "
                             "(B, h, N, N) or (h, N, N), square in the last two dimensions")
        if w.dim() != first.dim() or w.shape[:-3] != first.shape[:-3] or w.shape[-1] != first.shape[-1]:
            raise ValueError(f"weights_per_layer[0] has shape {tuple(first.shape)} but {name} has "
                             f"{tuple(w.shape)}; every layer needs the same batch and N")
        if not (torch.isfinite(w).all() and (w >= 0).all()):
            raise ValueError(f"{name} must hold finite, non-negative attention weights")
    _checks.same_kind({f"weights_per_layer[{i}]": w for i, w in enumerate(weights_per_layer)})


def _discard_smallest(weights, ratio):
    """Set the ⌊ratio·N⌋ smallest weights of every row to 0 (ratio < 1 keeps the largest)."""
    k = int(ratio * weights.shape[-1])
    if k == 0:
        return weights
    smallest = weights.topk(k, dim=-1, largest=False).indices
    return weights.scatter(-1, smallest, 0.0)


def _normalise_rows(weights):
    """Divide every row by its sum; a row of zeros stays zeros."""
    total = weights.sum(dim=-1, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))


def attention_rollout(weights_per_layer, *, head_fusion="mean", residual=True, discard_ratio=0.0):
    """rollout = Â_L ··· Â_1, Â_l = rownorm(½Ã_l + ½I), Ã_l = fuse_heads(A_l) (Abnar & Zuidema, 2020).

    weights_per_layer: L attention weights (B, h, N, N) or (h, N, N), first layer first
    -> (B, N, N) or (N, N): row i says how much of each input token flows into token i at the
    top. ``residual=False`` drops the ½·I of the skip connection (Â_l = rownorm(Ã_l)).
    ``discard_ratio`` in [0, 1) zeroes the ⌊ratio·N⌋ smallest fused weights of each row before
    the residual is added. Rows sum to 1; without the residual, a row of zero weights (a fully
    masked query) stays a row of zeros.
    Cost O(L·B·(h·N² + N³)) time, O(B·N²) memory beyond the weights. Explained in §5.4.
    """
    _check_layers(weights_per_layer)
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be True or False, got {residual!r}")
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, numbers.Real) \
            or not 0 <= discard_ratio < 1:
        raise ValueError(f"discard_ratio must be a number in [0, 1), got {discard_ratio!r}")
    rollout = None
    for weights in weights_per_layer:
        fused = _discard_smallest(fuse_heads(weights, head_fusion), discard_ratio)
        if residual:
            n = fused.shape[-1]
            fused = 0.5 * fused + 0.5 * torch.eye(n, dtype=fused.dtype, device=fused.device)
        layer = _normalise_rows(fused)
        rollout = layer if rollout is None else layer @ rollout
    return rollout


# --- shared machinery of the gradient methods -------------------------------------------------

@contextlib.contextmanager
def _evaluating(model):
    """Run an nn.Module in eval mode, then give every submodule back its own training flag."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def _check_model_fn(model_fn):
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable (inputs -> scores (B, classes)), "
                        f"got {type(model_fn).__name__}")


def _scores(model_fn, inputs, name="model_fn"):
    """model_fn(inputs), checked to be scores of shape (B, classes)."""
    scores = model_fn(inputs)
    batch = inputs.shape[0]
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.shape[0] != batch:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{name} must return scores of shape (B, classes) with B={batch}, got {got}")
    return scores


def _targets(target, batch, classes, device):
    """The target class of every example as a (B,) long tensor, checked to be in [0, classes)."""
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        index = torch.full((batch,), int(target), dtype=torch.long, device=device)
    elif isinstance(target, torch.Tensor):
        if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        if target.dim() == 0:
            target = target.expand(batch)
        if tuple(target.shape) != (batch,):
            raise ValueError(f"target must be an int or a ({batch},) tensor, got shape {tuple(target.shape)}")
        index = target.to(device=device, dtype=torch.long)
    else:
        raise TypeError(f"target must be an int or a tensor of class indices, got {type(target).__name__}")
    if batch and (index.min() < 0 or index.max() >= classes):
        raise ValueError(f"target must be class indices in [0, {classes}), got {index.tolist()}")
    return index


def _target_scores(model_fn, inputs, target):
    """y_t: the score of each example's target class, (B,)."""
    scores = _scores(model_fn, inputs)
    index = _targets(target, inputs.shape[0], scores.shape[1], scores.device)
    return scores.gather(1, index[:, None]).squeeze(1)


def _gradient(model_fn, inputs, target):
    """∂y_t/∂inputs for every example (examples independent: the gradient of Σ_b y_t(b))."""
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        picked = _target_scores(model_fn, x, target)
        if not picked.requires_grad:  # the score does not depend on the inputs
            return torch.zeros_like(inputs)
        (grad,) = torch.autograd.grad(picked.sum(), x, allow_unused=True)
    return torch.zeros_like(inputs) if grad is None else grad


def _check_inputs(inputs, name="inputs"):
    _checks.tensor(inputs, name, min_dim=1)
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch, shape {tuple(inputs.shape)}")


def _baseline_like(baseline, inputs, name="baseline"):
    """The baseline x' expanded to the shape of the inputs: None = zeros, a number, or a tensor."""
    if baseline is None:
        return torch.zeros_like(inputs)
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    _checks.tensor(baseline, name, min_dim=0)
    _checks.same_kind({"inputs": inputs, name: baseline})
    try:
        fits = tuple(torch.broadcast_shapes(baseline.shape, inputs.shape)) == tuple(inputs.shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"{name} has shape {tuple(baseline.shape)} but the inputs are "
                         f"{tuple(inputs.shape)}; a baseline must broadcast to the inputs")
    return baseline.expand_as(inputs)


# --- gradient attributions --------------------------------------------------------------------

def saliency(model_fn, inputs, target):
    """S = |∂y_t/∂x|, the vanilla gradient map (Simonyan et al., 2014).

    inputs (B, ...) -> (B, ...) of the same shape; for images take ``.amax(1)`` over the channels
    as in the paper. Cost: one forward and one backward pass. Explained in §5.4.
    """
    _check_model_fn(model_fn)
    _check_inputs(inputs)
    with _evaluating(model_fn):
        return _gradient(model_fn, inputs, target).abs()


def gradient_x_input(model_fn, inputs, target):
    """a = x ⊙ ∂y_t/∂x, the first-order (Taylor) contribution of each input element.

    inputs (B, ...) -> attributions (B, ...) of the same shape; exact (a sums to y_t − bias)
    for a linear model. Cost: one forward and one backward pass. Explained in §5.4.
    """
    _check_model_fn(model_fn)
    _check_inputs(inputs)
    with _evaluating(model_fn):
        return inputs.detach() * _gradient(model_fn, inputs, target)


def _path(steps, method):
    """Points α_k of the Riemann sum over [0, 1] and their weights (the weights sum to 1)."""
    if method == "riemann_right":
        return [(k / steps, 1.0 / steps) for k in range(1, steps + 1)]
    if method == "riemann_trapezoid":
        return [(k / steps, (0.5 if k in (0, steps) else 1.0) / steps) for k in range(steps + 1)]
    raise ValueError(f"method must be one of {IG_METHODS}, got {method!r}")


def integrated_gradients(model_fn, inputs, target, *, baseline=None, steps=32,
                         method="riemann_trapezoid", return_delta=False):
    """IG(x) = (x − x') ⊙ ∫₀¹ ∂y_t(x' + α(x − x'))/∂x dα (Sundararajan et al., 2017).

    inputs (B, ...) -> attributions (B, ...); ``baseline`` x' is None (zeros), a number or a
    tensor broadcastable to the inputs. The integral is a Riemann sum over ``steps`` intervals:
    "riemann_trapezoid" (steps + 1 points, error O(1/steps²)) or "riemann_right" (steps points).
    With ``return_delta`` also returns the completeness gap (B,): Σ IG − (y_t(x) − y_t(x')),
    which is 0 for the exact integral.
    Cost: steps + 1 forward and backward passes of batch B, O(size of the inputs) memory.
    Explained in §5.4.
    """
    _check_model_fn(model_fn)
    _check_inputs(inputs)
    _checks.positive(steps, "steps", integer=True)
    path = _path(steps, method)
    if not isinstance(return_delta, bool):
        raise TypeError(f"return_delta must be True or False, got {return_delta!r}")
    x = inputs.detach()
    start = _baseline_like(baseline, x).detach()
    with _evaluating(model_fn):
        mean_grad = torch.zeros_like(x)
        for alpha, weight in path:
            mean_grad += weight * _gradient(model_fn, start + alpha * (x - start), target)
        attributions = (x - start) * mean_grad
        if not return_delta:
            return attributions
        with torch.no_grad():
            change = _target_scores(model_fn, x, target) - _target_scores(model_fn, start, target)
    return attributions, attributions.reshape(len(x), -1).sum(1) - change.to(x.dtype)


# --- class activation maps --------------------------------------------------------------------

def _resolve_layer(model, layer):
    """The submodule ``layer`` of ``model``, given as a module or its dotted name."""
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"layer {layer!r} is not a submodule of the model") from None
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be an nn.Module or its name, got {type(layer).__name__}")
    if not any(module is layer for module in model.modules()):
        raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
    return layer


def _layer_gradients(model, images, target, layer):
    """The output A of ``layer`` and ∂y_t/∂A, both detached, from one forward and backward pass.

    A forward hook keeps the layer's output (the first element of a tuple) and passes a copy on,
    so that an in-place operation later in the model cannot change the kept activation.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (hooks need one), got {type(model).__name__}")
    _checks.tensor(images, "images", min_dim=4)
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    layer = _resolve_layer(model, layer)
    kept = []

    def keep(module, args, output):
        first = output[0] if isinstance(output, tuple) else output
        if not isinstance(first, torch.Tensor):
            return None
        kept.append(first)
        return (first.clone(), *output[1:]) if isinstance(output, tuple) else first.clone()

    handle = layer.register_forward_hook(keep)
    try:
        with _evaluating(model), torch.enable_grad():
            picked = _target_scores(model, images.detach().requires_grad_(True), target)
            if len(kept) != 1:
                raise ValueError(f"layer {type(layer).__name__} must give one tensor in the forward "
                                 f"pass, it gave {len(kept)}")
            activations = kept[0]
            grad = None
            if picked.requires_grad and activations.requires_grad:
                (grad,) = torch.autograd.grad(picked.sum(), activations, allow_unused=True)
    finally:
        handle.remove()
    if activations.shape[0] != images.shape[0]:
        raise ValueError(f"layer output has shape {tuple(activations.shape)}; its first dimension "
                         f"must be the batch, {images.shape[0]}")
    grad = torch.zeros_like(activations) if grad is None else grad
    return activations.detach(), grad.detach()


def _normalise_max(maps):
    """Divide each (H, W) map by its maximum; an all-zero map stays zeros."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak))


def _cam(activations, grads, size):
    """ReLU(Σ_c w_c A_c) with w_c = mean_ij grads_c: (B, K, h, w) -> (B, H, W) in [0, 1]."""
    weights = grads.mean(dim=(-2, -1), keepdim=True)
    cam = torch.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return _normalise_max(cam.clamp_min(0))


def grad_cam(model, images, target, layer):
    """CAM = ReLU(Σ_c w_c A_c), w_c = mean_ij ∂y_t/∂A_c[i, j] (Selvaraju et al., 2017).

    model: an nn.Module mapping images (B, C, H, W) to scores (B, classes); layer: a submodule
    (or its dotted name) whose output A is (B, K, h, w). -> (B, H, W): the map upsampled
    bilinearly to the image size and divided by its maximum, so in [0, 1] (all zeros when no
    location speaks for the class). Cost: one forward and one backward pass. Explained in §5.4.
    """
    activations, grads = _layer_gradients(model, images, target, layer)
    if activations.dim() != 4:
        raise ValueError(f"layer output has shape {tuple(activations.shape)}; grad_cam needs a "
                         "convolutional map (B, K, h, w); use vit_grad_cam for tokens (B, N, E)")
    return _cam(activations, grads, images.shape[-2:])


def _patch_grid(grid, patches):
    """(h, w) with h·w = patches; None means the square grid."""
    if patches < 1:
        raise ValueError("the layer gives no patch tokens beyond the class token; check has_class_token")
    if grid is None:
        side = round(patches ** 0.5)
        if side * side != patches:
            raise ValueError(f"grid is None but the {patches} patch tokens are no square; pass grid=(h, w)")
        return side, side
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2):
        raise TypeError(f"grid must be a pair (h, w), got {grid!r}")
    for g in grid:
        _checks.positive(g, "grid", integer=True)
    if grid[0] * grid[1] != patches:
        raise ValueError(f"grid={tuple(grid)} holds {grid[0] * grid[1]} patches but the layer "
                         f"gives {patches} patch tokens")
    return tuple(grid)


def vit_grad_cam(model, images, target, layer, grid=None, *, has_class_token=True):
    """Grad-CAM on the token features (B, N, E) of a vision Transformer, as maps on the patch grid.

    The patch tokens (all but the first when ``has_class_token``) are laid out on the ``grid``
    (h, w) (None: square) to give A of shape (B, E, h, w); then CAM = ReLU(Σ_e w_e A_e),
    w_e = mean_ij ∂y_t/∂A_e[i, j], upsampled to the image size and max-normalised: (B, H, W).
    Pick a layer before the last block: only the class token reaches a class-token head there.
    Cost: one forward and one backward pass. Explained in §5.4.
    """
    if not isinstance(has_class_token, bool):
        raise TypeError(f"has_class_token must be True or False, got {has_class_token!r}")
    tokens, grads = _layer_gradients(model, images, target, layer)
    if tokens.dim() != 3:
        raise ValueError(f"layer output has shape {tuple(tokens.shape)}; vit_grad_cam needs "
                         "tokens (B, N, E)")
    first = 1 if has_class_token else 0
    h, w = _patch_grid(grid, tokens.shape[1] - first)

    def on_grid(t):
        return t[:, first:].transpose(1, 2).unflatten(-1, (h, w))

    return _cam(on_grid(tokens), on_grid(grads), images.shape[-2:])


# --- occlusion --------------------------------------------------------------------------------

def _starts(size, patch, stride):
    """Offsets 0, s, 2s, … of the windows, plus size − p so that the last pixels are covered."""
    starts = list(range(0, size - patch + 1, stride))
    return starts if starts[-1] == size - patch else starts + [size - patch]


def occlusion(model_fn, images, target, *, patch=4, stride=None, baseline=0.0):
    """map[i, j] = mean over windows P ∋ (i, j) of y_t(x) − y_t(x with P set to the baseline).

    Zeiler and Fergus (2014): a grey square slides over the image (all channels), and the drop
    in the target score marks what mattered. images (B, C, H, W) -> (B, H, W). Windows of
    ``patch``×``patch`` start at 0, s, 2s, … (s = ``stride``, default ``patch``, at most
    ``patch``) and at H − p (W − p), so every pixel is covered; ``baseline`` is a number or a
    tensor broadcastable to the images.
    Cost: one forward pass per window and image, about (H/s)·(W/s)·B, run in batches of
    ``OCCLUSION_BATCH`` images; O(OCCLUSION_BATCH·C·H·W) memory. Explained in §5.4.
    """
    _check_model_fn(model_fn)
    _checks.tensor(images, "images", min_dim=4)
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (B, C, H, W) with B > 0, got {tuple(images.shape)}")
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    _checks.positive(patch, "patch", integer=True)
    if patch > min(height, width):
        raise ValueError(f"patch={patch} is larger than the images, {height}×{width}")
    stride = patch if stride is None else _checks.positive(stride, "stride", integer=True)
    if stride > patch:
        raise ValueError(f"stride={stride} must be at most patch={patch} so that every pixel is covered")
    x = images.detach()
    fill = _baseline_like(baseline, x)
    windows = [(slice(top, top + patch), slice(left, left + patch))
               for top in _starts(height, patch, stride) for left in _starts(width, patch, stride)]
    per_pass = max(1, OCCLUSION_BATCH // batch)
    total = x.new_zeros(batch, height, width)
    count = x.new_zeros(height, width)
    with _evaluating(model_fn), torch.no_grad():
        scores = _scores(model_fn, x)
        index = _targets(target, batch, scores.shape[1], scores.device)
        reference = scores.gather(1, index[:, None]).squeeze(1)
        for first in range(0, len(windows), per_pass):
            chunk = windows[first:first + per_pass]
            occluded = x.repeat(len(chunk), 1, 1, 1).unflatten(0, (len(chunk), batch))
            for k, (rows, cols) in enumerate(chunk):
                occluded[k, ..., rows, cols] = fill[..., rows, cols]
            occluded_scores = _target_scores(model_fn, occluded.flatten(0, 1), index.repeat(len(chunk)))
            drops = reference - occluded_scores.unflatten(0, (len(chunk), batch))
            for (rows, cols), drop in zip(chunk, drops.to(x.dtype)):
                total[:, rows, cols] += drop[:, None, None]
                count[rows, cols] += 1
    return total / count
