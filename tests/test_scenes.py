import pytest
import torch

from attnbook.scenes import CLASSES, EARS, Scenes, make_scenes, patch_coverage


def _scenes(count=24, seed=0, **kwargs):
    return make_scenes(count, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_shapes_dtypes_and_range():
    s = _scenes(10, size=40)
    assert isinstance(s, Scenes)
    assert s.images.shape == (10, 3, 40, 40) and s.images.dtype == torch.float32
    assert s.labels.shape == (10,) and s.labels.dtype == torch.int64
    assert s.head.shape == s.ears.shape == (10, 40, 40) and s.head.dtype == torch.bool
    assert 0.0 <= s.images.min() and s.images.max() <= 1.0
    assert len(CLASSES) == 2


def test_same_generator_seed_gives_same_scenes_and_another_seed_does_not():
    a, b, c = _scenes(seed=3), _scenes(seed=3), _scenes(seed=4)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a.images, c.images)


def test_random_labels_are_balanced_and_given_labels_are_kept():
    s = _scenes(200)
    assert 0.38 < s.labels.float().mean().item() < 0.62
    labels = torch.tensor([1, 0, 0, 1, 1])
    assert torch.equal(_scenes(5, labels=labels).labels, labels)


def test_ears_decide_the_class():
    """Cats: ears above the head disk, pink. Dogs: ears hanging beside it, dark brown."""
    s = _scenes(40)
    disk = s.head & ~s.ears
    assert s.ears.flatten(1).any(1).all() and disk.flatten(1).any(1).all()
    assert (s.ears <= s.head).all()                                 # the ears are part of the head mask
    rows = torch.arange(32.0).view(1, 32, 1)
    mean_row = lambda m: (rows * m).sum((1, 2)) / m.sum((1, 2))
    lift = mean_row(disk) - mean_row(s.ears)                        # > 0: ears higher than the head
    cats = s.labels == 0
    assert (lift[cats] > 2).all(), "a cat's ears stand above its head"
    assert (lift[~cats] < 1).all(), "a dog's ears hang beside its head"
    colours = torch.tensor(EARS)[s.labels].view(-1, 3, 1, 1).expand_as(s.images)
    ears = s.ears.unsqueeze(1).expand_as(s.images)
    assert torch.equal(s.images[ears], colours[ears])


def _ear_coloured(images, label):
    """Pixels within 0.12 of an ear colour (any jitter of the clutter included)."""
    colour = torch.tensor(EARS[label]).view(1, 3, 1, 1)
    direction = colour / colour.norm()
    along = (images * direction).sum(1, keepdim=True)
    return ((images - along * direction).norm(dim=1) < 0.06) & ((along.squeeze(1) / colour.norm() - 1).abs() < 0.2)


def test_clutter_holds_ear_like_shapes_of_both_kinds_outside_the_head():
    with_clutter, without = _scenes(40, clutter=6), _scenes(40, clutter=0)
    for label in (0, 1):
        outside = _ear_coloured(with_clutter.images, label) & ~with_clutter.head
        assert outside.flatten(1).any(1).float().mean() > 0.5
        assert not (_ear_coloured(without.images, label) & ~without.head).any()


def test_head_and_ears_stay_inside_the_frame():
    s = _scenes(80)
    border = s.head[:, [0, -1], :].any() or s.head[:, :, [0, -1]].any()
    assert not border


def test_patch_coverage_matches_a_loop_on_a_non_square_mask():
    mask = torch.rand(3, 8, 12, generator=torch.Generator().manual_seed(0)) > 0.6
    got = patch_coverage(mask, 4)
    assert got.shape == (3, 2, 3)
    for n in range(3):
        for i in range(2):
            for j in range(3):
                want = mask[n, 4 * i:4 * i + 4, 4 * j:4 * j + 4].float().mean()
                assert got[n, i, j] == want


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(count=0), ValueError, "count"),
    (dict(size=16), ValueError, "size"),
    (dict(clutter=-1), ValueError, "clutter"),
    (dict(labels=torch.tensor([0, 1])), ValueError, "labels"),
    (dict(labels=torch.tensor([0, 1, 2])), ValueError, r"0 \(cat\) or 1 \(dog\)"),
    (dict(generator=3), TypeError, "generator"),
])
def test_make_scenes_rejects_bad_arguments(kwargs, error, words):
    args = dict(count=3, generator=torch.Generator().manual_seed(0))
    args.update(kwargs)
    count = args.pop("count")
    with pytest.raises(error, match=words):
        make_scenes(count, **args)


@pytest.mark.parametrize("mask, p, error, words", [
    (torch.zeros(2, 8, 8), 4, TypeError, "boolean"),
    (torch.zeros(8, 8, dtype=torch.bool), 4, ValueError, "at least 3"),
    (torch.zeros(2, 8, 10, dtype=torch.bool), 4, ValueError, "does not divide"),
    (torch.zeros(2, 8, 8, dtype=torch.bool), 0, ValueError, "patch_size"),
])
def test_patch_coverage_rejects_bad_input(mask, p, error, words):
    with pytest.raises(error, match=words):
        patch_coverage(mask, p)
