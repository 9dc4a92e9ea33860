"""§6.3: the modality gap against its definition, closing it, attribute flips, word shuffles, bad input."""
import pytest
import torch
import torch.nn.functional as F

from attnbook.alignment import (attribute_accuracy, close_gap, flipped_captions, modality_gap, shuffle_words)
from attnbook.multimodal import CLIP, captioned_digits, detokenize, similarity, tokenize
from attnbook.train import seed_everything


@pytest.fixture(scope="module")
def data():
    return captioned_digits()


def test_modality_gap_is_the_distance_of_the_centroids():
    g = torch.Generator().manual_seed(0)
    f, t = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    want = sum((sum(f[i, d] for i in range(7)) / 7 - sum(t[j, d] for j in range(3)) / 3) ** 2 for d in range(4)) ** 0.5
    assert modality_gap(f, t) == pytest.approx(want.item())
    assert modality_gap(f, f) == 0
    with pytest.raises(ValueError, match="width"):
        modality_gap(f, t[:, :3])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        modality_gap(f[0], t)


def test_close_gap_moves_the_centroids_together_and_keeps_unit_length():
    g = torch.Generator().manual_seed(1)
    axis = F.normalize(torch.randn(6, generator=g, dtype=torch.float64), dim=0)
    f = F.normalize(torch.randn(20, 6, generator=g, dtype=torch.float64) + 3 * axis, dim=-1)
    t = F.normalize(torch.randn(15, 6, generator=g, dtype=torch.float64) - 3 * axis, dim=-1)
    f1, t1 = close_gap(f, t, 1.0)
    torch.testing.assert_close(f1.norm(dim=-1), torch.ones(20, dtype=torch.float64))
    assert modality_gap(f1, t1) < 0.2 * modality_gap(f, t)
    f0, t0 = close_gap(f, t, 0.0)
    torch.testing.assert_close(f0, f)
    torch.testing.assert_close(t0, t)
    assert modality_gap(*close_gap(f, t, -1.0)) > modality_gap(f, t)     # a negative amount widens it
    delta = f.mean(0) - t.mean(0)                                         # against the formula
    torch.testing.assert_close(f1, F.normalize(f - delta / 2, dim=-1))


def test_flipped_captions_change_one_attribute_only(data):
    idx = torch.nonzero((data.thickness != 0) & (data.leaning != 0)).squeeze(1)[:20]
    for attribute, pairs in (("thickness", ("thick", "thin")), ("leaning", ("left", "right"))):
        flipped = detokenize(flipped_captions(data, idx, attribute))
        for n, new in zip(idx.tolist(), flipped):
            old = data.captions[n].split()
            swapped = [pairs[1 - pairs.index(w)] if w in pairs else w for w in old]
            assert new.split() == swapped
        dropped = detokenize(flipped_captions(data, idx, attribute, drop=True))
        assert all(pairs[0] not in c.split() and pairs[1] not in c.split() for c in dropped)
    with pytest.raises(ValueError, match="attribute"):
        flipped_captions(data, idx, "colour")


def test_attribute_accuracy_against_a_loop(data):
    seed_everything(0)
    model = CLIP(8).eval()
    idx = data.test[:60]
    acc, n = attribute_accuracy(model, data, idx, "leaning")
    keep = [i for i in idx.tolist() if data.leaning[i] != 0]
    assert n == len(keep)
    wins = 0
    for i in keep:
        true = similarity(model, data.images[i:i + 1], data.tokens[i:i + 1]).item()
        flip = similarity(model, data.images[i:i + 1],
                          flipped_captions(data, torch.tensor([i]), "leaning")).item()
        wins += true > flip
    assert acc == pytest.approx(wins / len(keep))
    with pytest.raises(ValueError, match="mentions"):
        attribute_accuracy(model, data, idx[data.leaning[idx] == 0], "leaning")


def test_shuffle_words_permutes_words_and_keeps_the_end():
    tokens = tokenize(["a thick seven leaning left", "the number one"])
    out = shuffle_words(tokens, torch.Generator().manual_seed(0))
    for before, after in zip(tokens, out):
        words = (before > 2).sum()                                          # ids 0, 1, 2 are pad, bos, eos
        assert sorted(before[:words].tolist()) == sorted(after[:words].tolist())
        assert torch.equal(before[words:], after[words:])
    assert not torch.equal(out, tokens)
