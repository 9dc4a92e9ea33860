"""§4.6: captions against hand-written ones, the contrastive loss against a loop, encoders' invariances,
retrieval against sorting, videos against their definition, the decoders' causality, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from attnbook.multimodal import (CLIP, DIGIT_NAMES, VOCAB, WORD_INDEX, Captioner, TextEncoder, VideoAligner,
                                 alignment_accuracy, caption, captioned_digits, detokenize, frame_features,
                                 greedy_caption, info_nce, ink, lean, make_videos, prompts, retrieval_accuracy,
                                 retrieve, shift_right, similarity, terciles, tokenize, train_aligner, train_clip,
                                 train_captioner, zero_shot)
from attnbook.train import seed_everything


@pytest.fixture(scope="module")
def data():
    return captioned_digits()


# ---------------------------------------------------------------- attributes and captions

def test_ink_and_lean_against_loops():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 1, 8, 8, generator=g) * (torch.rand(5, 1, 8, 8, generator=g) > 0.5)
    for n in range(5):
        x = images[n, 0]
        assert math.isclose(ink(images)[n].item(), sum(x[i, j].item() for i in range(8) for j in range(8)), rel_tol=1e-5)
        top = sum(j * x[i, j].item() for i in range(4) for j in range(8)) / x[:4].sum().item()
        bottom = sum(j * x[i, j].item() for i in range(4, 8) for j in range(8)) / x[4:].sum().item()
        assert math.isclose(lean(images)[n].item(), top - bottom, rel_tol=1e-4, abs_tol=1e-5)


def test_lean_is_positive_for_a_slash_and_zero_for_an_empty_half():
    slash = torch.zeros(1, 1, 8, 8)
    for i in range(8):
        slash[0, 0, i, 7 - i] = 1.0                          # "/": the top is to the right
    assert lean(slash).item() == pytest.approx(4.0)
    assert lean(slash.flip(-1)).item() == pytest.approx(-4.0)
    half = torch.zeros(1, 1, 8, 8)
    half[0, 0, 5, 1] = 1.0                                   # no ink in the top half: counts as centred
    assert lean(half).item() == pytest.approx(3.5 - 1)


def test_terciles_split_each_class_in_thirds():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(3).repeat_interleave(torch.tensor([30, 60, 90]))
    values = torch.rand(180, generator=g, dtype=torch.float64) + labels      # classes on different scales
    levels = terciles(values, labels)
    for k in range(3):
        counts = torch.bincount(levels[labels == k] + 1, minlength=3)
        assert (counts - counts.sum() / 3).abs().max() <= 1
        member = values[labels == k]
        low, high = member.sort().values[[len(member) // 3 - 1, -len(member) // 3]]
        assert (levels[labels == k][member <= low] == -1).all() and (levels[labels == k][member >= high] == 1).all()
    with pytest.raises(ValueError, match="values and labels"):
        terciles(values, labels[:-1])


def test_captions_follow_their_templates():
    assert caption(7, 1, -1, 0) == ["a", "thick", "seven", "leaning", "left"]
    assert caption(3, -1, 0, 1) == ["a", "handwritten", "thin", "three"]
    assert caption(7, 1, -1, 2) == ["a", "digit", "seven", ",", "thick", ",", "leaning", "left"]
    assert caption(0, 0, 1, 3) == ["the", "number", "zero", ",", "leaning", "right"]
    assert caption(5) == ["a", "five"]
    for bad in (dict(label=10), dict(label=1, template=4), dict(label=1, thickness=2)):
        with pytest.raises(ValueError):
            caption(**bad)
    with pytest.raises(TypeError, match="label"):
        caption(1.0)


def test_tokenize_round_trips_and_rejects_unknown_words():
    words = [["a", "thick", "seven"], "the number one , leaning left"]
    tokens = tokenize(words)
    assert tokens.shape == (2, 7) and tokens.dtype == torch.int64
    assert tokens[0].tolist() == [WORD_INDEX[w] for w in ["a", "thick", "seven", "<eos>", "<pad>", "<pad>", "<pad>"]]
    assert detokenize(tokens) == ["a thick seven", "the number one , leaning left"]
    assert tokenize(words, length=9).shape == (2, 9)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenize(["a fat seven"])
    with pytest.raises(ValueError, match="too short"):
        tokenize(words, length=6)
    with pytest.raises(ValueError, match="int64"):
        detokenize(tokens.float().long()[0])


def test_captioned_digits_are_deterministic_and_consistent(data):
    assert data.images.shape == (1797, 1, 8, 8) and len(data.captions) == 1797
    assert (len(data.train), len(data.test)) == (1402, 395)
    assert detokenize(data.tokens) == data.captions
    for n in (0, 100, 1000):
        assert data.captions[n] == " ".join(caption(data.labels[n].item(), data.thickness[n].item(),
                                                    data.leaning[n].item(), data.template[n].item()))
    assert torch.equal(captioned_digits().tokens, data.tokens)
    assert not torch.equal(captioned_digits(seed=1).template, data.template)
    assert len(data.content.unique()) == 90                  # 10 digits × 3 thicknesses × 3 leanings
    assert detokenize(prompts()) == [f"a digit {name}" for name in DIGIT_NAMES]


# ---------------------------------------------------------------- the loss and the model

def test_info_nce_against_a_loop():
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rows = [-(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(5)]
    cols = [-(logits[i, i] - torch.logsumexp(logits[:, i], 0)) for i in range(5)]
    want = (sum(rows) + sum(cols)) / 10
    torch.testing.assert_close(info_nce(logits), want)
    assert info_nce(100 * torch.eye(4)) < 1e-10              # a perfect match costs nothing
    assert info_nce(torch.zeros(4, 4)).item() == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="square"):
        info_nce(torch.zeros(3, 4))


def test_text_encoder_without_positions_is_a_bag_of_words():
    tokens = tokenize(["a thick seven leaning left", "left seven leaning a thick"])
    seed_everything(0)
    bag = TextEncoder(16, positions=False).eval()
    seed_everything(0)
    ordered = TextEncoder(16, positions=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(bag(tokens)[0], bag(tokens)[1])
        assert (ordered(tokens)[0] - ordered(tokens)[1]).abs().max() > 1e-3
        # padding is ignored: more padding gives the same encoding
        torch.testing.assert_close(ordered(tokens), ordered(tokenize(["a thick seven leaning left",
                                                                       "left seven leaning a thick"], length=12)))
    with pytest.raises(ValueError, match="at most"):
        ordered(torch.zeros(1, 20, dtype=torch.int64))


def test_clip_logits_are_scaled_cosine_similarities(data):
    seed_everything(0)
    model = CLIP(12).eval()
    images, tokens = data.images[:6], data.tokens[:4]
    with torch.no_grad():
        f, g = model.encode_image(images), model.encode_text(tokens)
        torch.testing.assert_close(f.norm(dim=-1), torch.ones(6))
        torch.testing.assert_close(g.norm(dim=-1), torch.ones(4))
        torch.testing.assert_close(model(images, tokens), (1 / 0.07) * F.cosine_similarity(
            f[:, None], g[None], dim=-1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(similarity(model, images, tokens), f @ g.T)
    fixed = CLIP(12, temperature=0.5)
    assert fixed.scale.item() == pytest.approx(2.0) and "logit_scale" not in dict(fixed.named_parameters())
    assert CLIP(12, temperature=1e-4).scale.item() == pytest.approx(100.0)     # clamped as in CLIP
    with pytest.raises(ValueError, match="image_encoder"):
        CLIP(12, image_encoder="rnn")
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        model.encode_image(torch.zeros(2, 8, 8))


def test_retrieval_against_sorting():
    sim = torch.randn(7, 5, generator=torch.Generator().manual_seed(3))
    top = retrieve(sim, 3)
    assert torch.equal(top, sim.argsort(1, descending=True)[:, :3])
    match = torch.zeros(7, 5, dtype=torch.bool)
    match[torch.arange(7), torch.arange(7) % 5] = True
    for k in (1, 3, 5):
        want = sum(any(match[i, j] for j in top_i) for i, top_i in enumerate(retrieve(sim, k).tolist())) / 7
        assert retrieval_accuracy(sim, match, k) == pytest.approx(want)
    assert retrieval_accuracy(sim, match, 5) == 1.0
    with pytest.raises(ValueError, match="candidates"):
        retrieve(sim, 6)
    with pytest.raises(ValueError, match="match"):
        retrieval_accuracy(sim, match.T, 1)


def test_train_clip_is_deterministic_and_zero_shot_uses_the_prompts(data):
    one, two = (train_clip(data, steps=3, batch_size=16) for _ in range(2))
    for p, q in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert len(one.losses) == 3
    images = data.images[:9]
    assert torch.equal(zero_shot(one, images), similarity(one, images, prompts()).argmax(1))
    with pytest.raises(ValueError, match="batch_size"):
        train_clip(data, steps=1, batch_size=1)
    with pytest.raises(TypeError, match="CaptionedDigits"):
        train_clip("digits", steps=1)


# ---------------------------------------------------------------- videos

def test_make_videos_builds_the_segments_it_describes(data):
    videos = make_videos(data.images, data.labels, 20, digits=3, frames=10, min_frames=3, noise=0.0, seed=4)
    assert videos.frames.shape == (20, 10, 1, 8, 8) and videos.tokens.shape == (20, 6)
    for v in range(20):
        seg, digits = videos.segments[v], videos.digits[v]
        assert len(set(digits.tolist())) == 3                     # three different digits
        assert torch.equal(seg, seg.sort().values) and torch.bincount(seg, minlength=3).min() >= 3
        assert videos.captions[v] == " then ".join(DIGIT_NAMES[d] for d in digits.tolist())
        for k in range(3):                                        # without noise, a segment repeats one image
            frames = videos.frames[v][seg == k]
            assert (frames == frames[0]).all()
            assert any(torch.equal(frames[0], img) for img in data.images[data.labels == digits[k]])
    noisy = make_videos(data.images, data.labels, 20, digits=3, frames=10, min_frames=3, seed=4)
    assert torch.equal(noisy.segments, videos.segments) and not torch.equal(noisy.frames, videos.frames)
    with pytest.raises(ValueError, match="do not fit"):
        make_videos(data.images, data.labels, 2, digits=4, frames=7, min_frames=2)


def test_alignment_accuracy_against_a_loop():
    g = torch.Generator().manual_seed(5)
    weights = torch.rand(4, 3, 7, generator=g).softmax(-1)
    segments = torch.tensor([[0, 0, 1, 1, 1, 2, 2]] * 4)
    want = sum(segments[v, weights[v, k].argmax()].item() == k for v in range(4) for k in range(3)) / 12
    assert alignment_accuracy(weights, segments) == pytest.approx(want)
    perfect = torch.nn.functional.one_hot(torch.tensor([1, 3, 6]), 7).float().expand(4, 3, 7)
    assert alignment_accuracy(perfect, segments) == 1.0
    with pytest.raises(ValueError, match="segments"):
        alignment_accuracy(weights, segments[:, :6])


def test_the_aligner_can_only_read_the_word_through_its_attention():
    seed_everything(0)
    model = VideoAligner(5, 8).eval()
    words = torch.tensor([[1, 2, 3], [4, 5, 6]])
    same = torch.randn(2, 1, 5).expand(2, 7, 5)              # every frame alike: attention cannot choose
    with torch.no_grad():
        logits, weights = model(words, same)
    assert logits.shape == (2, 3, 10) and weights.shape == (2, 3, 7)
    torch.testing.assert_close(logits[:, 0], logits[:, 1])   # so the word does not reach the output
    with pytest.raises(ValueError, match="digit labels"):
        model(words + 10, same)


def test_the_captioner_is_causal_and_decodes_greedily():
    seed_everything(0)
    model = Captioner(5, 8).eval()
    features = torch.randn(2, 6, 5)
    tokens = tokenize(["three then seven", "one then two"])
    changed = tokens.clone()
    changed[:, 2:] = WORD_INDEX["nine"]
    with torch.no_grad():
        a, weights = model(shift_right(tokens), features)
        b, _ = model(shift_right(changed), features)
    torch.testing.assert_close(a[:, :3], b[:, :3])             # position i sees inputs ≤ i only
    assert weights.shape == (2, 2, 4, 6)
    assert shift_right(tokens)[:, 0].eq(WORD_INDEX["<bos>"]).all()
    out, w = greedy_caption(model, features, 4)
    with torch.no_grad():
        first = model(shift_right(out), features)[0].argmax(-1)
    assert torch.equal(out, first)                            # greedy: each word is the argmax given the prefix
    assert w.shape == (2, 2, 4, 6)


def test_the_video_models_learn_on_clean_features(data):
    """Features that are one-hot digits: a few steps teach both models the alignment."""
    videos = make_videos(data.images, data.labels, 64, noise=0.0, seed=6)
    features = F.one_hot(videos.digits.gather(1, videos.segments), 10).float()
    aligner = train_aligner(videos, features, steps=60, batch_size=32)
    with torch.no_grad():
        _, weights = aligner(videos.digits, features)
    assert alignment_accuracy(weights, videos.segments) > 0.9
    captioner = train_captioner(videos, features, steps=60, batch_size=32)
    assert len(captioner.losses) == 60 and captioner.losses[-1] < captioner.losses[0] / 2
    with pytest.raises(TypeError, match="CLIP"):
        frame_features(aligner, videos.frames)
    assert len(VOCAB) == len(WORD_INDEX)
