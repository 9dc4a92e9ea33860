"""attnbook.vision_apps (§4.4): ViT maps, gated CNNs, the text-to-image task and its denoiser."""
import pytest
import torch

from attnbook import vision_apps as va
from attnbook.interpret import attention_rollout
from attnbook.vision import CBAM, SqueezeExcitation


def _weights(b=2, h=3, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, h, n, n, generator=g, dtype=torch.float64), dim=-1)


def test_class_token_maps_read_row_zero_in_row_major_order():
    w = _weights(n=1 + 6)                                           # a 2 × 3 grid of patches
    maps = va.class_token_maps(w, (2, 3))
    assert maps.shape == (2, 3, 2, 3)
    for b in range(2):
        for k in range(3):
            for r in range(2):
                for c in range(3):
                    assert maps[b, k, r, c] == w[b, k, 0, 1 + 3 * r + c]
    torch.testing.assert_close(maps.sum((-2, -1)), 1 - w[:, :, 0, 0])


def test_rollout_maps_match_a_hand_rollout():
    layers = [_weights(seed=s, n=1 + 6) for s in range(3)]
    eye = torch.eye(7, dtype=torch.float64)
    roll = eye
    for w in layers:                                                # ½A + ½I, rows normalised, brute force
        a = 0.5 * w.mean(1) + 0.5 * eye
        roll = (a / a.sum(-1, keepdim=True)) @ roll
    torch.testing.assert_close(va.rollout_maps(layers, (3, 2)), roll[:, 0, 1:].reshape(2, 3, 2))
    torch.testing.assert_close(va.rollout_maps(layers, (3, 2), residual=False),
                               attention_rollout(layers, residual=False)[:, 0, 1:].reshape(2, 3, 2))


def test_map_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="grid"):
        va.class_token_maps(_weights(n=7), (2, 2))
    with pytest.raises(ValueError, match=r"\(B, h, N \+ 1, N \+ 1\)"):
        va.class_token_maps(torch.rand(2, 7, 7), (2, 3))
    with pytest.raises(TypeError, match="grid"):
        va.rollout_maps([_weights(n=7)], 6)
    with pytest.raises(TypeError, match="mask must be a boolean"):
        va.mass_share(torch.rand(2, 3, 3), torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="non-negative"):
        va.mass_share(-torch.rand(2, 3, 3), torch.ones(3, 3, dtype=torch.bool))


def test_to_pixels_and_mass_share():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    pixels = va.to_pixels(maps, 3)
    assert pixels.shape == (1, 6, 6) and pixels[0, 4, 1] == 3.0 and pixels[0, 2, 3] == 2.0
    mask = torch.zeros(2, 2, dtype=torch.bool)
    mask[1] = True
    assert va.mass_share(maps, mask).item() == pytest.approx(0.7)
    assert va.mass_share(torch.zeros(1, 2, 2), mask).item() == 0.0
    uniform = torch.ones(4, 5, 5)
    masks = torch.rand(4, 5, 5, generator=torch.Generator().manual_seed(0)) > 0.5
    torch.testing.assert_close(va.mass_share(uniform, masks), masks.float().mean((-2, -1)))


@pytest.mark.parametrize("gate, kind", [(None, torch.nn.Identity), ("se", SqueezeExcitation), ("cbam", CBAM)])
def test_gated_cnn_shapes_and_gates(gate, kind):
    torch.manual_seed(0)
    model = va.GatedDigitCNN(gate, channels=(8, 12), reduction=4)
    assert all(isinstance(g, kind) for g in model.gates)
    x = torch.rand(5, 1, 8, 6)                                      # non-square
    assert model(x).shape == (5, 10)
    if gate == "cbam":
        assert model.gates[0].last_spatial_weights.shape == (5, 8, 6)
        assert model.gates[1].last_channel_weights.shape == (5, 12)
    if gate is None:                                                # the plain network, by hand
        h = torch.relu(model.conv2(torch.nn.functional.max_pool2d(torch.relu(model.conv1(x)), 2)))
        torch.testing.assert_close(model(x), model.head(h.mean((-2, -1))))
    with pytest.raises(ValueError, match="gate must be one of"):
        va.GatedDigitCNN("non_local")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(2, 3, 8, 8))


def test_mean_by_class_against_a_loop():
    g = torch.Generator().manual_seed(1)
    values, labels = torch.rand(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g)
    means = va.mean_by_class(values, labels, classes=4)
    for k in range(3):
        torch.testing.assert_close(means[k], values[labels == k].mean(0))
    assert torch.isnan(means[3]).all() == (labels == 3).sum().eq(0)
    with pytest.raises(ValueError, match="labels must lie"):
        va.mean_by_class(values, labels + 5, classes=4)
    with pytest.raises(ValueError, match=r"\(N,\) integer"):
        va.mean_by_class(values, labels[:5])


def test_render_and_captions():
    image, masks = va.render([("red", "square", "top", "left"), ("blue", "circle", "bottom", "right")])
    assert image.shape == (3, 16, 16) and masks.shape == (2, 16, 16)
    assert masks[0, :8, :8].sum() == 36 and not masks[0, 8:].any() and not masks[0, :, 8:].any()
    assert masks[1, 8:, 8:].any() and masks[1, 8:, 8:].sum() < 36
    torch.testing.assert_close(image[:, 3, 3], torch.tensor(va.COLOURS["red"]))
    assert (image[:, ~(masks[0] | masks[1])] == 0).all()
    words = "red square top left blue circle bottom right"
    assert va.decode(va.encode(words)) == words
    with pytest.raises(ValueError, match="unknown words"):
        va.encode("purple square top left")
    with pytest.raises(ValueError, match="share the quadrant"):
        va.render([("red", "square", "top", "left"), ("blue", "circle", "top", "left")])
    with pytest.raises(ValueError, match="colour"):
        va.render([("pink", "square", "top", "left")])


def test_make_scenes_is_consistent_and_reproducible():
    a, b = va.make_scenes(12, seed=3), va.make_scenes(12, seed=3)
    torch.testing.assert_close(a["images"], b["images"])
    assert a["tokens"].shape == (12, 8) and a["masks"].shape == (12, 8, 16, 16)
    for i in range(12):
        objects = [tuple(va.VOCAB[t] for t in a["tokens"][i, 4 * k:4 * k + 4].tolist())
                   for k in range(int(a["valid"][i].sum()) // 4)]
        image, masks = va.render(objects)
        torch.testing.assert_close(a["images"][i], image)
        assert (a["masks"][i, :4 * len(objects)] == masks.repeat_interleave(4, 0)).all()
        assert not a["masks"][i, 4 * len(objects):].any()


def test_add_noise_follows_the_ddpm_formula():
    x = torch.rand(3, 3, 4, 4, dtype=torch.float64)
    noisy, eps = va.add_noise(x, torch.tensor([1.0, 0.25, 0.0], dtype=torch.float64),
                              torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy[0], x[0])
    torch.testing.assert_close(noisy[1], 0.5 * x[1] + 0.75 ** 0.5 * eps[1])
    torch.testing.assert_close(noisy[2], eps[2])
    with pytest.raises(ValueError, match="alpha_bar must lie"):
        va.add_noise(x, 1.5)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        va.add_noise(x, torch.ones(2))


def test_denoiser_cross_attention_is_the_library_kernel_and_masks_padding():
    torch.manual_seed(0)
    model = va.TextToImageDenoiser(width=8, text_dim=8, heads=2).eval()
    scenes = va.make_scenes(3, seed=0)
    noisy = torch.rand(3, 3, 16, 16)
    out, weights = model(noisy, torch.full((3,), 0.5), scenes["tokens"], scenes["valid"])
    assert out.shape == (3, 3, 16, 16) and weights.shape == (3, 2, 64, 8)
    assert (weights[~scenes["valid"][:, None, None, :].expand_as(weights)] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 64))
    # the weights are softmax(QKᵀ/√d) computed by torch's MultiheadAttention with the same projections
    captured = {}
    model.cross.register_forward_hook(lambda m, args, result: captured.update(q=args[0], c=args[1]))
    model(noisy, torch.full((3,), 0.5), scenes["tokens"], scenes["valid"])
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    a = model.cross.attn
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
        mha.out_proj.load_state_dict(a.out_proj.state_dict())
        _, ref = mha(captured["q"], captured["c"], captured["c"], key_padding_mask=~scenes["valid"],
                     average_attn_weights=False)
    torch.testing.assert_close(weights, ref)
    # changing the caption changes the output
    other = va.encode("green triangle bottom left").expand(3, -1)
    out2, _ = model(noisy, torch.full((3,), 0.5), other, other != 0)
    assert not torch.allclose(out, out2)
    with pytest.raises(ValueError, match="multiples of factor"):
        model(torch.rand(1, 3, 15, 16), torch.ones(1), scenes["tokens"][:1], scenes["valid"][:1])
    with pytest.raises(ValueError, match="tokens and valid"):
        model(noisy, torch.ones(3), scenes["tokens"], scenes["valid"][:2])


def test_word_mask_share_against_a_loop():
    g = torch.Generator().manual_seed(0)
    b, h, length = 2, 2, 8
    weights = torch.softmax(torch.randn(b, h, 64, length, generator=g, dtype=torch.float64), dim=-1)
    scenes = va.make_scenes(b, seed=4)
    share = va.word_mask_share(weights, scenes["masks"], scenes["valid"])
    for i in range(b):
        for l in range(length):
            if not scenes["valid"][i, l]:
                assert torch.isnan(share[i, l])
                continue
            col = weights[i, :, :, l].mean(0).reshape(8, 8)
            inside = sum(col[r // 2, c // 2] / 4 for r in range(16) for c in range(16) if scenes["masks"][i, l, r, c])
            assert share[i, l].item() == pytest.approx((inside / col.sum()).item())
    with pytest.raises(ValueError, match="no \\(H/f\\)"):
        va.word_mask_share(weights[:, :, :60], scenes["masks"], scenes["valid"])
    with pytest.raises(ValueError, match="valid must be boolean"):
        va.word_mask_share(weights, scenes["masks"], scenes["valid"][:, :4])


def test_training_the_denoiser_lowers_its_loss():
    torch.manual_seed(0)
    model = va.TextToImageDenoiser(width=8, text_dim=8, heads=1)
    losses = va.train_denoiser(model, va.make_scenes(64, seed=0), steps=40, batch_size=16, lr=1e-2)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:5]) / 5
    with pytest.raises(TypeError, match="TextToImageDenoiser"):
        va.train_denoiser(torch.nn.Linear(2, 2), {}, steps=1)
