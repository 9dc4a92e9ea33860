"""Tiny CNNs and U-Nets of §3.6 against hand-written forward passes, receptive fields and overlap scores."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from support import randn

from attnbook.convnets import BLOCKS, TinyCNN, TinyUNet, dice, iou, train_on
from attnbook.vision import NonLocalBlock, SqueezeExcitation


def model(cls, *args, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(*args, **kwargs).double()


# ---------------------------------------------------------------- TinyCNN

def reference_cnn(m, x, block):
    """conv3×3 → ReLU → block → conv3×3 → ReLU → head, written with torch.nn.functional."""
    h = F.relu(F.conv2d(x, m.conv1.weight, m.conv1.bias, padding=1))
    if block == "se":
        s = torch.sigmoid(F.linear(F.relu(F.linear(h.mean((2, 3)), m.block.reduce.weight, m.block.reduce.bias)),
                                   m.block.expand.weight, m.block.expand.bias))
        h = h * s[:, :, None, None]
    elif block == "non_local":
        p = h.flatten(2).transpose(1, 2)                                  # (B, N, C)
        nl = m.block
        theta, phi, g = (F.linear(p, layer.weight, layer.bias) for layer in (nl.theta, nl.phi, nl.g))
        y = torch.softmax(theta @ phi.transpose(1, 2), dim=-1) @ g
        h = h + F.linear(y, nl.w_z.weight, nl.w_z.bias).transpose(1, 2).reshape(h.shape)
    h = F.relu(F.conv2d(h, m.conv2.weight, m.conv2.bias, padding=1))
    if m.pixelwise:
        return F.conv2d(h, m.head.weight, m.head.bias)
    return F.linear(h.mean((2, 3)), m.head.weight, m.head.bias)


@pytest.mark.parametrize("block, pixelwise", list(itertools.product(BLOCKS, (False, True))))
def test_tiny_cnn_matches_a_functional_forward_pass(block, pixelwise):
    m = model(TinyCNN, 3, 4, width=6, block=block, pixelwise=pixelwise, zero_init=False)
    x = randn(2, 3, 5, 7, seed=1)
    out = m(x)
    assert out.shape == ((2, 4, 5, 7) if pixelwise else (2, 4))
    torch.testing.assert_close(out, reference_cnn(m, x, block))
    assert isinstance(m.block, {None: torch.nn.Identity, "se": SqueezeExcitation,
                                "non_local": NonLocalBlock}[block])


def test_a_zero_initialised_non_local_block_starts_as_the_identity():
    plain = model(TinyCNN, 2, 3, width=4, pixelwise=True, seed=3)
    local = model(TinyCNN, 2, 3, width=4, block="non_local", pixelwise=True, seed=3)
    local.conv1.load_state_dict(plain.conv1.state_dict())
    local.conv2.load_state_dict(plain.conv2.state_dict())
    local.head.load_state_dict(plain.head.state_dict())
    x = randn(2, 2, 6, 5)
    torch.testing.assert_close(local(x), plain(x))


def influence(m, x, row, col):
    """Input pixels with a non-zero gradient of the logits at output pixel (row, col)."""
    x = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(m(x)[:, :, row, col].sum(), x)
    return grad.abs().sum((0, 1)) > 0


@pytest.mark.parametrize("row, col", [(0, 0), (4, 6), (8, 3), (2, 10)])
def test_without_a_block_an_output_pixel_sees_only_a_five_by_five_window(row, col):
    m = model(TinyCNN, 2, 3, width=8, pixelwise=True)
    H, W = 9, 11
    seen = influence(m, randn(3, 2, H, W, seed=2), row, col)
    rows, cols = torch.arange(H)[:, None], torch.arange(W)[None, :]
    assert torch.equal(seen, ((rows - row).abs() <= 2) & ((cols - col).abs() <= 2))


@pytest.mark.parametrize("block", ["se", "non_local"])
def test_an_attention_block_makes_every_input_pixel_count(block):
    m = model(TinyCNN, 2, 3, width=8, block=block, pixelwise=True, zero_init=False)
    assert influence(m, randn(3, 2, 9, 11, seed=2), 0, 0).all()


def test_tiny_cnn_bad_input_names_the_argument():
    m = TinyCNN(3, 2)
    with pytest.raises(ValueError, match=r"x must be \(B, 3, H, W\), got shape \(2, 4, 5, 5\)"):
        m(torch.zeros(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"x must be \(B, 3, H, W\)"):
        m(torch.zeros(3, 5, 5))
    with pytest.raises(TypeError, match="float64 but the model's parameters are torch.float32"):
        m(torch.zeros(1, 3, 5, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        m([[0.0]])
    with pytest.raises(ValueError, match="block must be one of"):
        TinyCNN(3, 2, block="cbam")
    with pytest.raises(ValueError, match="width"):
        TinyCNN(3, 2, width=0)
    with pytest.raises(TypeError, match="num_classes"):
        TinyCNN(3, 2.5)


# ---------------------------------------------------------------- TinyUNet

def reference_unet(m, x, alphas=None):
    """The dataflow of the docstring, from the model's own layers; ``alphas`` replaces the gates' maps."""
    e1 = m.enc1(x)
    e2 = m.enc2(F.max_pool2d(e1, 2))
    b = m.bottom(F.max_pool2d(e2, 2))
    s2 = e2 if alphas is None else e2 * alphas[1]
    d2 = m.dec2(torch.cat([m.up2(F.interpolate(b, scale_factor=2.0)), s2], dim=1))
    s1 = e1 if alphas is None else e1 * alphas[0]
    d1 = m.dec1(torch.cat([m.up1(F.interpolate(d2, scale_factor=2.0)), s1], dim=1))
    return m.head(d1)


@pytest.mark.parametrize("size", [(8, 12), (12, 8), (16, 16)])
def test_tiny_unet_follows_its_dataflow(size):
    m = model(TinyUNet, 2, 3, width=4)
    x = randn(2, 2, *size, seed=4)
    out = m(x)
    assert out.shape == (2, 3, *size) and m.last_gates is None
    torch.testing.assert_close(out, reference_unet(m, x))


@pytest.mark.parametrize("size", [(8, 12), (12, 8)])
def test_gated_unet_multiplies_each_skip_by_its_gate(size):
    m = model(TinyUNet, 1, 1, width=4, gates=True)
    x = randn(3, 1, *size, seed=5)
    out = m(x)
    a1, a2 = m.last_gates
    H, W = size
    assert a1.shape == (3, 1, H, W) and a2.shape == (3, 1, H // 2, W // 2)
    assert ((a1 > 0) & (a1 < 1)).all() and ((a2 > 0) & (a2 < 1)).all() and not a1.requires_grad
    torch.testing.assert_close(out, reference_unet(m, x, (a1, a2)))
    # the gates' maps themselves, recomputed from the formula α = σ(ψ(ReLU(W_x x + W_g g)))
    e1 = m.enc1(x)
    e2 = m.enc2(F.max_pool2d(e1, 2))
    b = m.bottom(F.max_pool2d(e2, 2))
    wg = F.interpolate(m.gate2.w_g(b), size=e2.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(a2, torch.sigmoid(m.gate2.psi(F.relu(m.gate2.w_x(e2) + wg))))


def test_gates_held_open_give_the_plain_unet():
    gated = model(TinyUNet, 1, 2, width=4, gates=True, seed=6)
    plain = model(TinyUNet, 1, 2, width=4, seed=6)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("gate")})
    with torch.no_grad():
        for gate in (gated.gate1, gated.gate2):
            gate.psi.weight.zero_()
            gate.psi.bias.fill_(60.0)                                 # α = σ(60) = 1 in float64
    x = randn(2, 1, 8, 12, seed=7)
    torch.testing.assert_close(gated(x), plain(x))


def test_tiny_unet_bad_input_names_the_argument():
    m = TinyUNet(1, width=4)
    with pytest.raises(ValueError, match=r"multiples of 4 \(the model halves them 2 times\)"):
        m(torch.zeros(1, 1, 10, 12))
    with pytest.raises(ValueError, match=r"x must be \(B, 1, H, W\)"):
        m(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="in_channels"):
        TinyUNet(0)


# ---------------------------------------------------------------- dice and iou

def brute_scores(p, t):
    """Dice and IoU of two flat boolean lists, with sets of indices."""
    P = {i for i, v in enumerate(p) if v}
    T = {i for i, v in enumerate(t) if v}
    if not P and not T:
        return 1.0, 1.0
    return 2 * len(P & T) / (len(P) + len(T)), len(P & T) / len(P | T)


def test_dice_and_iou_match_sets_on_random_masks():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(40, 3, 5, generator=g) < torch.rand(40, 1, 1, generator=g)
    t = torch.rand(40, 3, 5, generator=g) < torch.rand(40, 1, 1, generator=g)
    p[0], t[0] = False, False                                         # both empty
    p[1], t[1] = True, False                                          # nothing to find, all found
    want = torch.tensor([brute_scores(a.flatten().tolist(), b.flatten().tolist()) for a, b in zip(p, t)])
    torch.testing.assert_close(dice(p, t), want[:, 0].float())
    torch.testing.assert_close(iou(p, t), want[:, 1].float())
    assert dice(p, t)[0] == 1 and iou(p, t)[1] == 0


def test_dice_is_a_monotone_function_of_iou_and_both_are_symmetric():
    g = torch.Generator().manual_seed(1)
    p, t = torch.rand(50, 6, 7, generator=g) < 0.4, torch.rand(50, 6, 7, generator=g) < 0.3
    j = iou(p, t)
    torch.testing.assert_close(dice(p, t), 2 * j / (1 + j))
    torch.testing.assert_close(dice(t, p), dice(p, t))
    torch.testing.assert_close(iou(t, p), j)
    assert (dice(p, p) == 1).all() and (iou(p, ~p) == 0).all()


@pytest.mark.parametrize("call, error, match", [
    (lambda: dice(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool)), TypeError, "prediction must be a boolean mask"),
    (lambda: iou(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.long)), TypeError, "target must be"),
    (lambda: dice(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)), ValueError, "at least one pixel axis"),
    (lambda: iou(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool)), ValueError,
     r"prediction has shape \(2, 3\) but target has \(2, 4\)"),
    (lambda: dice([True], torch.zeros(1, 1, dtype=torch.bool)), TypeError, "prediction must be a torch.Tensor"),
])
def test_overlap_scores_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- train_on

def test_train_on_learns_and_is_reproducible():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 4, 4, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()                                 # the sign of the mean brightness

    def run():
        torch.manual_seed(0)
        m = TinyCNN(1, 2, width=4)
        return m, train_on(m, x, y, F.cross_entropy, steps=100, batch_size=16, lr=0.03, seed=1)

    m, losses = run()
    assert len(losses) == 100 and sum(losses[-10:]) < 0.7 * sum(losses[:10])
    with torch.no_grad():
        assert (m(x).argmax(1) == y).float().mean() > 0.85
    assert run()[1] == losses and not m.training


def test_train_on_bad_input_names_the_argument():
    m = TinyCNN(1, 2, width=4)
    x, y = torch.zeros(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"inputs has 8 examples .* but targets has 7"):
        train_on(m, x, y[:7], F.cross_entropy, steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        train_on(m, x, y, F.cross_entropy, steps=1, batch_size=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        train_on(m, x, y, F.cross_entropy, steps=1, seed=0.5)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        train_on(m, x, y, "cross_entropy", steps=1)
