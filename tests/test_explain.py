"""attnbook.explain (§5.4): the scene ViT, maps on the patch grid, scores, attention edits."""
import math

import matplotlib.pyplot as plt
import pytest
import torch
from support import randn

from attnbook.explain import (LogOdds, SceneViT, alternative_attention, cls_attention, delete_top_patches,
                              evidence_scores, forward_with_attention, log_odds, overlay, pixel_relevance,
                              to_patches, value_norms)

H, W, P = 8, 12, 4          # a non-square image: a grid of 2 × 3 patches


def scene_vit(seed=0, dtype=torch.float64, depth=2, heads=2):
    torch.manual_seed(seed)
    images = randn(5, 3, H, W, seed=seed + 100, dtype=dtype).sigmoid()
    return SceneViT(images, patch_size=P, embed_dim=8, depth=depth, heads=heads, mlp_ratio=2.0,
                    classes=3).to(dtype).eval()


def images_for(seed=1, batch=4, dtype=torch.float64):
    return randn(batch, 3, H, W, seed=seed, dtype=dtype).sigmoid()


# --- the model --------------------------------------------------------------------------------

def test_scene_vit_standardises_each_channel_then_runs_the_vit():
    train = randn(6, 3, H, W, seed=3).sigmoid()
    model = SceneViT(train, patch_size=P, embed_dim=8, depth=1, heads=2).double().eval()
    x = images_for()
    mean = torch.stack([train[:, c].mean() for c in range(3)]).view(1, 3, 1, 1)
    std = torch.stack([train[:, c].std() for c in range(3)]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.standardise(x), (x - mean) / std)
    torch.testing.assert_close(model(x), model.vit((x - mean) / std)[0])
    weights = model.attention(x)
    assert model.grid == (2, 3) and len(weights) == 1 and weights[0].shape == (4, 2, 7, 7)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(4, 2, 7, dtype=torch.float64))
    assert not weights[0].requires_grad


def test_scene_vit_rejects_bad_input():
    good = randn(4, 3, H, W, seed=0)
    with pytest.raises(ValueError, match="N >= 2"):
        SceneViT(good[:1], patch_size=P)
    with pytest.raises(ValueError, match="images"):
        SceneViT(good[0], patch_size=P)
    flat = good.clone()
    flat[:, 1] = 0.5
    with pytest.raises(ValueError, match="vary"):
        SceneViT(flat, patch_size=P)
    with pytest.raises(ValueError, match="patch_size"):
        SceneViT(good, patch_size=5)
    with pytest.raises(TypeError, match="images"):
        SceneViT(good.long(), patch_size=P)
    model = SceneViT(good, patch_size=P, embed_dim=8, heads=2)
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 12\)"):
        model(randn(2, 3, 12, 8, seed=1, dtype=torch.float32))


# --- log-odds ---------------------------------------------------------------------------------

@pytest.mark.parametrize("classes", [2, 3, 5])
def test_log_odds_is_log_p_over_one_minus_p(classes):
    logits = 3 * randn(7, classes, seed=classes)
    p = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(log_odds(logits), torch.log(p / (1 - p)))
    torch.testing.assert_close(log_odds(logits + 4.0), log_odds(logits))       # a shared shift cancels
    if classes == 2:
        torch.testing.assert_close(log_odds(logits), logits - logits.flip(-1))


def test_log_odds_is_stable_for_confident_logits():
    logits = torch.tensor([[60.0, -60.0, 0.0]])
    got = log_odds(logits)
    assert torch.isfinite(got).all() and got[0, 0] > 59 and got[0, 1] < -119


def test_log_odds_module_and_bad_input():
    model = scene_vit()
    x = images_for()
    torch.testing.assert_close(LogOdds(model)(x), log_odds(model(x)))
    with pytest.raises(ValueError, match="C >= 2"):
        log_odds(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="logits"):
        log_odds(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="model"):
        LogOdds(lambda x: x)


# --- maps -------------------------------------------------------------------------------------

def test_pixel_relevance_and_to_patches_against_loops():
    a = randn(2, 3, 6, 10, seed=5)
    relevance = pixel_relevance(a)
    assert relevance.shape == (2, 6, 10)
    for b in range(2):
        for i in range(6):
            for j in range(10):
                assert math.isclose(relevance[b, i, j].item(), abs(sum(a[b, c, i, j].item() for c in range(3))),
                                    rel_tol=1e-12, abs_tol=1e-12)
    patches = to_patches(relevance, 2)
    assert patches.shape == (2, 3, 5)
    for b in range(2):
        for r in range(3):
            for c in range(5):
                torch.testing.assert_close(patches[b, r, c], relevance[b, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mean())
    with pytest.raises(ValueError, match="patch_size"):
        to_patches(relevance, 4)
    with pytest.raises(ValueError, match="maps"):
        to_patches(a, 2)
    with pytest.raises(ValueError, match="attributions"):
        pixel_relevance(relevance.unsqueeze(0).unsqueeze(0))


def test_cls_attention_picks_the_class_token_row_on_the_grid():
    weights = torch.softmax(randn(2, 3, 7, 7, seed=6), dim=-1)
    got = cls_attention(weights, (2, 3))
    assert got.shape == (2, 3, 2, 3)
    for r in range(2):
        for c in range(3):
            torch.testing.assert_close(got[:, :, r, c], weights[:, :, 0, 1 + 3 * r + c])
    torch.testing.assert_close(got.sum((-2, -1)), 1 - weights[:, :, 0, 0])
    with pytest.raises(ValueError, match="N = 3·3 = 9 patches"):
        cls_attention(weights, (3, 2 + 1))
    with pytest.raises(TypeError, match="grid"):
        cls_attention(weights, 6)


def brute_scores(maps, evidence):
    mass, hit = [], []
    for m, e in zip(maps, evidence):
        total = m.sum().item()
        inside = sum(m[i, j].item() for i in range(m.shape[0]) for j in range(m.shape[1]) if e[i, j])
        mass.append(inside / total if total > 0 else 0.0)
        peak = max(((i, j) for i in range(m.shape[0]) for j in range(m.shape[1])), key=lambda ij: m[ij].item())
        hit.append(bool(e[peak]) and total > 0)
    return torch.tensor(mass, dtype=maps.dtype), torch.tensor(hit)


def test_evidence_scores_against_a_loop():
    maps = randn(6, 3, 5, seed=7).abs()
    evidence = randn(6, 3, 5, seed=8) > 0.5
    maps[0] = 0.0                                                   # points nowhere
    maps[1, 2, 4] = 10.0                                            # a clear peak
    evidence[1, 2, 4] = True
    mass, hit = evidence_scores(maps, evidence)
    want_mass, want_hit = brute_scores(maps, evidence)
    torch.testing.assert_close(mass, want_mass)
    assert torch.equal(hit, want_hit) and hit[1] and not hit[0] and mass[0] == 0


def test_evidence_scores_of_an_even_map_is_the_chance_level():
    evidence = randn(4, 3, 5, seed=9) > 0
    mass, _ = evidence_scores(torch.ones(4, 3, 5), evidence)
    torch.testing.assert_close(mass, evidence.float().mean((1, 2)))


def test_evidence_scores_rejects_bad_input():
    maps, evidence = torch.ones(2, 3, 5), torch.ones(2, 3, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="non-negative"):
        evidence_scores(-maps, evidence)
    with pytest.raises(TypeError, match="boolean"):
        evidence_scores(maps, evidence.float())
    with pytest.raises(ValueError, match="evidence has shape"):
        evidence_scores(maps, evidence[:, :2])
    with pytest.raises(ValueError, match="maps must have at least 3 dimensions"):
        evidence_scores(maps[0], evidence[0])
    with pytest.raises(ValueError, match=r"patch maps \(B, rows, cols\)"):
        evidence_scores(maps[None], evidence[None])


def test_delete_top_patches_against_a_loop():
    images = randn(2, 3, H, W, seed=10)
    maps = randn(2, 2, 3, seed=11).abs()
    fill = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).view(1, 3, 1, 1)
    got = delete_top_patches(images, maps, 2, fill, P)
    want = images.clone()
    for b in range(2):
        for index in maps[b].flatten().argsort(descending=True)[:2].tolist():
            r, c = divmod(index, 3)
            want[b, :, P * r:P * r + P, P * c:P * c + P] = fill[0]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(delete_top_patches(images, maps, 6, 0.0, P), torch.zeros_like(images))
    with pytest.raises(ValueError, match="k=7"):
        delete_top_patches(images, maps, 7, 0.0, P)
    with pytest.raises(ValueError, match="maps must be"):
        delete_top_patches(images, maps[:, :1], 1, 0.0, P)
    with pytest.raises(ValueError, match="images"):
        delete_top_patches(images[0], maps, 1, 0.0, P)


# --- edited attention -------------------------------------------------------------------------

def test_forward_with_attention_without_edit_is_the_model():
    model, x = scene_vit(), images_for()
    torch.testing.assert_close(forward_with_attention(model, x), model(x))
    seen = []

    def keep(layer, weights):
        seen.append((layer, weights))
        return weights

    torch.testing.assert_close(forward_with_attention(model, x, keep), model(x))
    assert [layer for layer, _ in seen] == [0, 1]
    for (_, got), want in zip(seen, model.attention(x)):
        torch.testing.assert_close(got, want)


def test_forward_with_attention_applies_the_edit():
    """Class token of the last layer attending only to patch 2: logits from the block's parts."""
    model, x = scene_vit(), images_for()

    def one_hot(layer, weights):
        if layer == 0:
            return weights
        edited = weights.clone()
        edited[:, :, 0] = 0.0
        edited[:, :, 0, 3] = 1.0
        return edited

    got = forward_with_attention(model, x, one_hot)
    vit = model.vit
    tokens, _ = vit.blocks[0](vit.embed(model.standardise(x)))
    last = vit.blocks[1]
    value = last.attn.v_proj(last.norm1(tokens))[:, 3]                      # all heads read token 3
    state = tokens[:, 0] + last.attn.out_proj(value)
    state = state + last.mlp(last.norm2(state))
    torch.testing.assert_close(got, vit.head(vit.norm(state)))


def test_forward_with_attention_rejects_bad_input():
    model, x = scene_vit(), images_for()
    with pytest.raises(ValueError, match="edit must return weights of shape"):
        forward_with_attention(model, x, lambda layer, w: w[:, :1])
    with pytest.raises(TypeError, match="edit"):
        forward_with_attention(model, x, "uniform")
    with pytest.raises(TypeError, match="SceneViT"):
        forward_with_attention(model.vit, x)


def test_alternative_attention_moves_off_the_avoided_tokens_and_keeps_the_output():
    model, x = scene_vit(seed=2), images_for(seed=3, batch=3)
    target = torch.tensor([0, 2, 1])
    avoid = torch.zeros(3, 6, dtype=torch.bool)
    avoid[:, :3] = True                                                     # the top row of patches
    flags = [p.requires_grad for p in model.parameters()]
    found = alternative_attention(model, x, target, avoid, steps=300, lr=0.1, penalty=100.0)
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(found["weights"], model.attention(x)[-1][:, :, 0])
    torch.testing.assert_close(found["scores"], log_odds(model(x)).gather(1, target[:, None])[:, 0])
    torch.testing.assert_close(found["found"].sum(-1), torch.ones(3, 2, dtype=torch.float64))

    def install(layer, weights):                                           # an independent recomputation
        if layer == 0:
            return weights
        edited = weights.clone()
        edited[:, :, 0] = found["found"]
        return edited

    again = log_odds(forward_with_attention(model, x, install)).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(found["found_scores"], again)
    on_avoided = lambda w: w[:, :, 1:4].sum(-1).mean(-1)                    # noqa: E731
    assert (on_avoided(found["found"]) < on_avoided(found["weights"])).all()           # every image moves
    assert on_avoided(found["found"]).mean() < 0.3 * on_avoided(found["weights"]).mean()
    assert (found["found_scores"] - found["scores"]).abs().max() < 0.05


def test_alternative_attention_with_nothing_to_avoid_keeps_the_weights():
    model, x = scene_vit(seed=4), images_for(seed=5, batch=2)
    found = alternative_attention(model, x, 1, torch.zeros(2, 6, dtype=torch.bool), steps=20)
    torch.testing.assert_close(found["found"], found["weights"], atol=1e-3, rtol=0)


def test_alternative_attention_rejects_bad_input():
    model, x = scene_vit(), images_for(batch=2)
    avoid = torch.zeros(2, 6, dtype=torch.bool)
    cases = [
        (lambda: alternative_attention(model, x, 0, avoid[:, :5]), ValueError, r"\(B, N\) = \(2, 6\)"),
        (lambda: alternative_attention(model, x, 0, avoid.float()), TypeError, "boolean"),
        (lambda: alternative_attention(model, x, 3, avoid), ValueError, "target"),
        (lambda: alternative_attention(model, x, torch.tensor([0.0, 1.0]), avoid), ValueError, "target"),
        (lambda: alternative_attention(model, x, 0, avoid, steps=0), ValueError, "steps"),
        (lambda: alternative_attention(model, x, 0, avoid, penalty=-1.0), ValueError, "penalty"),
        (lambda: alternative_attention(model.vit, x, 0, avoid), TypeError, "SceneViT"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_value_norms_against_a_loop_over_heads_and_tokens():
    model, x = scene_vit(seed=6, heads=2), images_for(seed=7, batch=2)
    weights, norms, sent = value_norms(model, x, layer=1)
    torch.testing.assert_close(weights, model.attention(x)[1][:, :, 0])
    vit = model.vit
    tokens, _ = vit.blocks[0](vit.embed(model.standardise(x)))
    block = vit.blocks[1]
    values = block.attn.v_proj(block.norm1(tokens))                         # (B, N+1, E), heads side by side
    w_out, width = block.attn.out_proj.weight, 4                            # E = 8, two heads of 4
    for b in range(2):
        for j in range(7):
            total = torch.zeros(8, dtype=torch.float64)
            for h in range(2):
                part = slice(h * width, (h + 1) * width)
                vector = weights[b, h, j] * (w_out[:, part] @ values[b, j, part])
                total += vector
                torch.testing.assert_close(norms[b, h, j], vector.norm())
            torch.testing.assert_close(sent[b, j], total.norm())
    same = value_norms(model, x, layer=-1)
    for got, want in zip(same, (weights, norms, sent)):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="layer"):
        value_norms(model, x, layer=2)
    with pytest.raises(ValueError, match="layer"):
        value_norms(model, x, layer=True)


def test_overlay_draws_the_map_at_image_size():
    fig, ax = plt.subplots()
    shown = overlay(ax, images_for()[0], torch.rand(2, 3), outline=torch.zeros(H, W, dtype=torch.bool),
                    title="a map")
    assert shown.get_array().shape == (H, W) and ax.get_title() == "a map"
