"""The digits of §6.2: data, splits, shifts against loops; the ViT and the CNN against reference models."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from support import randn

from attnbook.digits import (SHIFTS, DigitCNN, DigitViT, accuracy, confusion_matrix, count_parameters,
                             load_digits_tensors, lossless, predict, random_shifts, shift, shift_sensitivity,
                             split, subsets, train_classifier)
from attnbook.train import seed_everything
from attnbook.vision import ViT


@pytest.fixture(scope="module")
def digits():
    return load_digits_tensors()


def unbalanced_labels(seed=0):
    """400 labels of 5 classes with very different frequencies, in random order."""
    labels = torch.repeat_interleave(torch.arange(5), torch.tensor([7, 40, 93, 120, 140]))
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


# ---------------------------------------------------------------- the data

def test_load_digits_tensors_matches_scikit_learn(digits):
    from sklearn.datasets import load_digits

    images, labels = digits
    raw = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert torch.equal(labels, torch.as_tensor(raw.target))
    torch.testing.assert_close(images[:, 0] * 16, torch.as_tensor(raw.images, dtype=torch.float32))
    assert images.min() == 0 and images.max() == 1
    assert load_digits_tensors(torch.float64)[0].dtype == torch.float64
    with pytest.raises(TypeError, match="dtype"):
        load_digits_tensors(torch.int64)


def test_split_is_a_stratified_seeded_partition(digits):
    _, labels = digits
    train, test = split(labels)
    assert (len(train), len(test)) == (1402, 395)
    assert torch.equal(torch.sort(torch.cat([train, test])).values, torch.arange(len(labels)))
    assert torch.equal(train, train.sort().values) and torch.equal(test, test.sort().values)
    for c in range(10):
        n_c = (labels == c).sum().item()
        assert (labels[test] == c).sum().item() == round(0.22 * n_c)
    again, other = split(labels), split(labels, seed=1)
    assert torch.equal(again[1], test) and not torch.equal(other[1], test)


def test_split_keeps_the_proportions_of_unbalanced_classes():
    labels = unbalanced_labels()
    train, test = split(labels, test_size=0.3, seed=4)
    counts = torch.bincount(labels[test], minlength=5)
    assert counts.tolist() == [round(0.3 * n) for n in torch.bincount(labels).tolist()]
    assert len(set(train.tolist()) & set(test.tolist())) == 0


@pytest.mark.parametrize("test_size", [0, 1, 1.5, -0.2])
def test_split_rejects_a_bad_fraction(test_size):
    with pytest.raises(ValueError, match="test_size"):
        split(torch.arange(10) % 2, test_size=test_size)


def test_split_and_subsets_reject_bad_labels():
    with pytest.raises(ValueError, match="1-D integer"):
        split(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="labels"):
        split([0, 1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        subsets(torch.tensor([0, -1, 1]), [2])
    with pytest.raises(ValueError, match="1-D integer"):
        subsets(torch.tensor([0.0, 1.0]), [1])


@pytest.mark.parametrize("seed", [0, 3])
def test_subsets_are_nested_and_stratified_within_one(seed):
    labels = unbalanced_labels(seed)
    sizes = [1, 10, 37, 100, 250, len(labels)]
    parts = subsets(labels, sizes, seed=seed)
    share = torch.bincount(labels).double() / len(labels)
    for n, part in zip(sizes, parts):
        assert len(part) == n and len(set(part.tolist())) == n
        deviation = torch.bincount(labels[part], minlength=5).double() - n * share
        assert deviation.abs().max() <= 1.0, (n, deviation)
    for small, large in zip(parts, parts[1:]):
        assert set(small.tolist()) <= set(large.tolist())
    assert all(torch.equal(a, b) for a, b in zip(parts, subsets(labels, sizes, seed=seed)))
    assert not torch.equal(parts[3], subsets(labels, [100], seed=seed + 1)[0])


@pytest.mark.parametrize("sizes, error, match", [
    ([], ValueError, "at least one"),
    ([5, 5], ValueError, "increase"),
    ([10, 3], ValueError, "increase"),
    ([0, 3], ValueError, "sizes"),
    ([2.5], TypeError, "sizes"),
    ([3, 500], ValueError, "only 400"),
])
def test_subsets_reject_bad_sizes(sizes, error, match):
    with pytest.raises(error, match=match):
        subsets(unbalanced_labels(), sizes)


# ---------------------------------------------------------------- shifts

def shift_loop(images, dy, dx):
    """out[..., i, j] = images[..., i - dy, j - dx] when inside, else 0: pixel by pixel."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[..., i, j] = images[..., i - dy, j - dx]
    return out


@pytest.mark.parametrize("dy, dx", [(0, 0), (1, 0), (0, -1), (2, 3), (-3, 1), (-1, -4), (5, 0), (0, -7), (9, 9)])
def test_shift_equals_a_pixel_loop_on_non_square_images(dy, dx):
    images = randn(2, 3, 5, 7)
    assert torch.equal(shift(images, dy, dx), shift_loop(images, dy, dx))
    ints = torch.arange(35).view(5, 7)
    assert torch.equal(shift(ints, dy, dx), shift_loop(ints, dy, dx))


def test_shift_rejects_bad_arguments():
    with pytest.raises(TypeError, match="dy"):
        shift(randn(4, 4), 0.5, 1)
    with pytest.raises(TypeError, match="dx"):
        shift(randn(4, 4), 1, True)
    with pytest.raises(ValueError, match="at least 2"):
        shift(randn(4), 1, 1)


def test_lossless_is_true_exactly_when_no_pixel_leaves_the_frame():
    images = torch.zeros(4, 1, 5, 6)
    images[0, 0, 2, 1:5] = 1          # away from every edge
    images[1, 0, 1:4, 5] = 1          # touches the right edge
    images[2, 0, 0, 2] = 1            # touches the top edge
    images[3] = 1                     # fills the frame
    for dy, dx in [(0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (0, 2)]:
        want = torch.tensor([torch.equal(shift(shift(x, dy, dx), -dy, -dx), x) for x in images])
        assert torch.equal(lossless(images, dy, dx), want)
    assert lossless(images, 0, 1).tolist() == [True, False, True, False]
    assert lossless(images, 0, 2).tolist() == [False, False, True, False]


def test_random_shifts_moves_each_image_by_an_allowed_offset():
    images = randn(60, 2, 5, 7).relu()
    moved = random_shifts(images, 1, torch.Generator().manual_seed(0))
    offsets = list(itertools.product(range(-1, 2), repeat=2))
    seen = set()
    for x, m in zip(images, moved):
        matches = [o for o in offsets if torch.equal(shift(x, *o), m)]
        assert matches, "every output is a shift of its input by at most one pixel"
        seen.add(matches[0])
    assert seen == set(offsets), "all nine offsets occur in 60 draws"
    again = random_shifts(images, 1, torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)
    assert random_shifts(images, 0) is images
    far = random_shifts(images, 2, torch.Generator().manual_seed(1))
    assert all(any(torch.equal(shift(x, dy, dx), m) for dy in range(-2, 3) for dx in range(-2, 3))
               for x, m in zip(images, far))


@pytest.mark.parametrize("images, max_shift, error", [
    (torch.zeros(2, 5, 5), 1, ValueError),
    (torch.zeros(2, 1, 5, 5), -1, ValueError),
    (torch.zeros(2, 1, 5, 5), 1.0, ValueError),
    (torch.zeros(2, 1, 5, 5, dtype=torch.long), 1, TypeError),
])
def test_random_shifts_rejects_bad_arguments(images, max_shift, error):
    with pytest.raises(error):
        random_shifts(images, max_shift)


# ---------------------------------------------------------------- the models

@pytest.mark.parametrize("kwargs", [{}, dict(patch_size=4), dict(embed_dim=12, depth=2, heads=3, mlp_ratio=1.5)])
def test_digit_vit_equals_the_vit_of_attnbook_vision(kwargs):
    torch.manual_seed(0)
    model = DigitViT(**kwargs).double()
    p = kwargs.get("patch_size", 2)
    e, d, h, r = (kwargs.get(k, v) for k, v in (("embed_dim", 16), ("depth", 1), ("heads", 2), ("mlp_ratio", 2.0)))
    reference = ViT(8, p, 1, 10, e, d, h, mlp_ratio=r).double()
    reference.load_state_dict(model.state_dict())              # same parameter names and shapes
    x = randn(3, 1, 8, 8)
    logits, weights = reference(x)
    torch.testing.assert_close(model(x), logits)
    for mine, theirs in zip(model.attention(x), weights):
        torch.testing.assert_close(mine, theirs)
    assert count_parameters(model) == sum(t.numel() for t in reference.parameters())
    tokens = (8 // p) ** 2 + 1
    assert model.attention(x)[0].shape == (3, h, tokens, tokens)
    assert model.features(x).shape == (3, e) and model.grid == (8 // p, 8 // p)


def test_digit_vit_default_size_and_errors():
    assert count_parameters(DigitViT()) == 2794 == count_parameters(DigitViT(patch_size=4))
    model = DigitViT()
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        model(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        model(torch.zeros(2, 1, 8, 6))
    with pytest.raises(TypeError, match="dtype"):
        model(torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="patch_size"):
        DigitViT(patch_size=3)
    with pytest.raises(ValueError, match="depth"):
        DigitViT(depth=0)


def cnn_reference(m, x):
    """The forward pass of DigitCNN written with torch.nn.functional."""
    h = F.max_pool2d(F.relu(F.conv2d(x, m.conv1.weight, m.conv1.bias, padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, m.conv2.weight, m.conv2.bias, padding=1)), 2)
    return F.linear(h.mean((2, 3)), m.head.weight, m.head.bias)


@pytest.mark.parametrize("channels, size", [((12, 24), 8), ((3, 5), 12), ((4, 6), (8, 12))])
def test_digit_cnn_matches_a_functional_forward_pass_and_counts(channels, size):
    torch.manual_seed(0)
    model = DigitCNN(channels=channels, classes=7, image_size=size).double()
    h, w = (size, size) if isinstance(size, int) else size
    x = randn(3, 1, h, w)
    torch.testing.assert_close(model(x), cnn_reference(model, x))
    c1, c2 = channels
    assert count_parameters(model) == 9 * c1 + c1 + 9 * c1 * c2 + c2 + 7 * c2 + 7
    assert model.features(x).shape == (3, c2)
    assert model.feature_maps(x).shape == (3, c2, h // 4, w // 4)


def test_digit_cnn_first_layer_is_shift_equivariant_away_from_the_borders():
    torch.manual_seed(0)
    conv = DigitCNN().double().conv1
    x = randn(2, 1, 8, 8)
    for dy, dx in [(0, 1), (1, 0), (-1, 1)]:
        moved, expected = conv(shift(x, dy, dx)), shift(conv(x), dy, dx)
        inner = (slice(None), slice(None), slice(2, 6), slice(2, 6))
        torch.testing.assert_close(moved[inner], expected[inner])
        assert not torch.allclose(moved, expected)     # the borders differ: zero padding


def test_digit_cnn_default_size_and_errors():
    assert count_parameters(DigitCNN()) == 2986
    with pytest.raises(TypeError, match="channels"):
        DigitCNN(channels=8)
    with pytest.raises(ValueError, match="channels"):
        DigitCNN(channels=(8, 0))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        DigitCNN()(torch.zeros(2, 3, 8, 8))


def test_count_parameters_counts_trainable_ones_unless_told():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert count_parameters(model) == 3 * 4 + 4 + 4 * 2 + 2
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == 4 + 4 * 2 + 2
    assert count_parameters(model, trainable_only=False) == 26
    with pytest.raises(TypeError, match="nn.Module"):
        count_parameters([torch.zeros(3)])


# ---------------------------------------------------------------- training and evaluation

class Recorder(torch.nn.Module):
    """A linear classifier on flattened pixels that remembers every batch it was given."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(64, 10)
        self.batches = []

    def features(self, images):
        return images.flatten(1)

    def forward(self, images):
        if self.training:
            self.batches.append(images.detach().clone())
        return self.head(self.features(images))


def test_train_classifier_learns_and_is_deterministic(digits):
    images, labels = digits
    x, y = images[:300], labels[:300]
    runs = []
    for _ in range(2):
        seed_everything(0)
        model = DigitViT(patch_size=4)
        runs.append((train_classifier(model, x, y, steps=60, batch_size=32), model))
    (losses, model), (again, _) = runs
    assert losses == again
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert accuracy(model, x, y) > 0.8


def test_train_classifier_uses_the_whole_set_when_it_fits_and_shifts_when_asked(digits):
    images, labels = digits
    x, y = images[:20], labels[:20]
    model = Recorder()
    train_classifier(model, x, y, steps=3, batch_size=32)
    assert len(model.batches) == 3 and all(torch.equal(b, x) for b in model.batches)
    model = Recorder()
    train_classifier(model, x, y, steps=2, batch_size=8, max_shift=1)
    offsets = list(itertools.product(range(-1, 2), repeat=2))
    for batch in model.batches:
        assert batch.shape == (8, 1, 8, 8)
        assert all(any(torch.equal(shift(xi, *o), b) for xi in x for o in offsets) for b in batch)


@pytest.mark.parametrize("args, error, match", [
    ((torch.nn.Linear(2, 2), torch.zeros(3, 1, 8, 8), torch.zeros(4, dtype=torch.long)), ValueError, "one label each"),
    (("model", torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)), TypeError, "nn.Module"),
    ((torch.nn.Linear(2, 2), torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), ValueError, "empty"),
    ((torch.nn.Linear(2, 2), torch.zeros(3, 1, 8, 8), torch.zeros(3)), ValueError, "integer"),
])
def test_train_classifier_rejects_bad_data(args, error, match):
    with pytest.raises(error, match=match):
        train_classifier(*args, steps=1)


def test_predict_and_accuracy_equal_a_loop_and_keep_the_mode():
    torch.manual_seed(0)
    model = DigitCNN(channels=(3, 4)).double()
    x = randn(37, 1, 8, 8)
    want = torch.stack([model(xi[None]).argmax(-1)[0] for xi in x])
    assert torch.equal(predict(model, x, batch_size=10), want)
    labels = want.clone()
    labels[:7] = (labels[:7] + 1) % 10
    assert accuracy(model, x, labels) == pytest.approx(30 / 37)
    assert model.training, "predict leaves the model in the mode it found"


def test_confusion_matrix_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    predicted, labels = torch.randint(0, 4, (50,), generator=g), torch.randint(0, 4, (50,), generator=g)
    m = confusion_matrix(predicted, labels, classes=5)
    want = torch.zeros(5, 5, dtype=torch.long)
    for p, t in zip(predicted.tolist(), labels.tolist()):
        want[t, p] += 1
    assert torch.equal(m, want) and m.sum() == 50
    assert m.diagonal().sum() == (predicted == labels).sum()
    with pytest.raises(ValueError, match="below classes=3"):
        confusion_matrix(predicted, labels, classes=3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(predicted[:5], labels)


class Invariant(torch.nn.Module):
    """Features that no lossless shift can change: the sorted pixel values."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(64, 10)

    def features(self, images):
        return images.flatten(1).sort(dim=1).values


def test_shift_sensitivity_is_zero_for_invariant_features_and_equals_a_loop(digits):
    images, labels = digits
    x, y = images[:60], labels[:60]
    torch.manual_seed(0)
    result = shift_sensitivity(Invariant(), x, y)
    assert result["flips"] == 0 and result["change"] == 0
    assert result["accuracy"] == result["shifted_accuracy"]
    model = DigitCNN()
    result = shift_sensitivity(model, x, y)
    flips, changes, right, right_moved = [], [], [], []
    with torch.no_grad():
        for xi, yi in zip(x, y):
            for dy, dx in SHIFTS:
                if not torch.equal(shift(shift(xi, dy, dx), -dy, -dx), xi):
                    continue                                   # the shift would cut the digit
                a, b = model.features(xi[None])[0], model.features(shift(xi, dy, dx)[None])[0]
                pa, pb = model.head(a).argmax().item(), model.head(b).argmax().item()
                flips.append(pa != pb)
                changes.append(((b - a).norm() / a.norm()).item())
                right.append(pa == yi.item())
                right_moved.append(pb == yi.item())
    assert result["pairs"] == len(flips) < 2 * len(x)
    assert result["flips"] == pytest.approx(sum(flips) / len(flips))
    assert result["change"] == pytest.approx(sum(changes) / len(changes), rel=1e-5)
    assert result["accuracy"] == pytest.approx(sum(right) / len(right))
    assert result["shifted_accuracy"] == pytest.approx(sum(right_moved) / len(right_moved))
    assert "accuracy" not in shift_sensitivity(model, x)


def test_shift_sensitivity_rejects_bad_arguments():
    with pytest.raises(TypeError, match="features"):
        shift_sensitivity(torch.nn.Linear(64, 10), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="at least one"):
        shift_sensitivity(DigitCNN(), torch.zeros(2, 1, 8, 8), shifts=[])
    with pytest.raises(ValueError, match="without losing pixels"):
        shift_sensitivity(DigitCNN(), torch.ones(2, 1, 8, 8))


def test_digit_vit_without_positions_ignores_the_order_of_the_patches():
    torch.manual_seed(0)
    model = DigitViT(positions=False).double()
    assert count_parameters(model) == 2794 - 17 * 16
    x = randn(3, 1, 8, 8)
    patches = x.unfold(2, 2, 2).unfold(3, 2, 2)                     # (3, 1, 4, 4, 2, 2): a grid of patches
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    shuffled = patches.reshape(3, 1, 16, 2, 2)[:, :, order].reshape(3, 1, 4, 4, 2, 2)
    shuffled = shuffled.permute(0, 1, 2, 4, 3, 5).reshape(3, 1, 8, 8)
    assert not torch.equal(shuffled, x)
    torch.testing.assert_close(model(shuffled), model(x))
    with_positions = DigitViT().double()
    assert not torch.allclose(with_positions(shuffled), with_positions(x))
