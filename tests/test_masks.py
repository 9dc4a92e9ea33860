"""Boolean masks (§2.3) against their brute-force definitions and PyTorch's conventions."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook import causal_mask, make_mask, padding_mask, sliding_window_mask
from attnbook.masks import KINDS

FAST = settings(max_examples=25, deadline=None)
sizes = st.integers(1, 9)


def brute(lq, lk, rule):
    return torch.tensor([[rule(i, j) for j in range(lk)] for i in range(lq)], dtype=torch.bool)


@FAST
@given(sizes, sizes)
def test_causal_mask_is_j_le_i(lq, lk):
    m = causal_mask(lq, lk)
    assert m.dtype == torch.bool and m.shape == (lq, lk)
    assert torch.equal(m, brute(lq, lk, lambda i, j: j <= i))


@given(sizes)
@FAST
def test_causal_mask_default_is_square(lq):
    assert torch.equal(causal_mask(lq), brute(lq, lq, lambda i, j: j <= i))


@pytest.mark.parametrize("lq, lk", [(3, 5), (5, 3), (4, 4), (1, 6)])
def test_causal_mask_agrees_with_sdpa_is_causal(lq, lk):
    """SDPA(is_causal=True) equals SDPA with attn_mask=causal_mask (top-left alignment)."""
    q, k, v = torch.randn(2, lq, 4), torch.randn(2, lk, 4), torch.randn(2, lk, 3)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(lq, lk))
    torch.testing.assert_close(got, want)


@FAST
@given(sizes, sizes, st.integers(0, 10))
def test_sliding_window_mask_is_abs_difference_le_window(lq, lk, window):
    m = sliding_window_mask(lq, lk, window=window)
    assert m.dtype == torch.bool
    assert torch.equal(m, brute(lq, lk, lambda i, j: abs(i - j) <= window))
    assert (m.sum(-1) <= 2 * window + 1).all()


@FAST
@given(sizes, sizes, st.integers(0, 10))
def test_causal_sliding_window_mask_is_zero_le_i_minus_j_le_window(lq, lk, window):
    m = sliding_window_mask(lq, lk, window=window, causal=True)
    assert torch.equal(m, brute(lq, lk, lambda i, j: 0 <= i - j <= window))
    assert (m.sum(-1) <= window + 1).all()
    assert not (m & ~causal_mask(lq, lk)).any()


def test_large_windows_give_full_and_causal_masks():
    assert sliding_window_mask(4, 6, window=10).all()
    assert torch.equal(sliding_window_mask(4, 6, window=10, causal=True), causal_mask(4, 6))
    assert torch.equal(sliding_window_mask(5, window=0), torch.eye(5, dtype=torch.bool))


@FAST
@given(st.lists(st.integers(1, 8), min_size=1, max_size=4), st.integers(0, 3))
def test_padding_mask_is_j_lt_length(lengths, extra):
    lk = max(lengths) + extra
    m = padding_mask(lengths, lk)
    assert m.dtype == torch.bool and m.shape == (len(lengths), 1, lk)
    want = torch.tensor([[j < n for j in range(lk)] for n in lengths]).unsqueeze(1)
    assert torch.equal(m, want)
    assert torch.equal(padding_mask(torch.tensor(lengths), lk), m)


def test_padding_mask_matches_torch_key_padding_mask_convention():
    """attnbook's padding mask is the negation of torch's key_padding_mask (True = ignore)."""
    lengths, lk = [5, 2, 4], 5
    key_padding = torch.arange(lk)[None, :] >= torch.tensor(lengths)[:, None]
    assert torch.equal(padding_mask(lengths, lk).squeeze(1), ~key_padding)


def test_masks_broadcast_to_scores_with_padding():
    both = causal_mask(4, 6) & padding_mask([6, 3], 6)
    assert both.shape == (2, 4, 6)
    assert torch.equal(both[1], brute(4, 6, lambda i, j: j <= i and j < 3))


@pytest.mark.parametrize("lq, lk", [(3, 5), (5, 3)])
def test_make_mask_dispatches_by_kind(lq, lk):
    assert make_mask("none", lq, lk) is None
    assert torch.equal(make_mask("causal", lq, lk), causal_mask(lq, lk))
    assert torch.equal(make_mask("sliding window", lq, lk, window=2), sliding_window_mask(lq, lk, window=2))
    assert torch.equal(make_mask("padding", lq, lk, lengths=[2, 1]), padding_mask([2, 1], lk))
    default = make_mask("padding", lq, lk)
    assert torch.equal(default, padding_mask([lk - lk // 3], lk))
    assert set(KINDS) == {"none", "causal", "padding", "sliding window"}
    assert make_mask("causal", lq).shape == (lq, lq)


def test_make_mask_padding_keeps_at_least_one_key():
    for lk in range(1, 8):
        assert make_mask("padding", 2, lk).any(-1).all()


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("fn", [causal_mask, lambda lq, lk=None: sliding_window_mask(lq, lk, window=1)])
@pytest.mark.parametrize("lq, lk, error, name", [
    (0, 3, ValueError, "lq"), (-2, 3, ValueError, "lq"), (3, 0, ValueError, "lk"),
    (2.0, 3, TypeError, "lq"), (3, 2.5, TypeError, "lk"), ("3", 3, TypeError, "lq"),
    (True, 3, TypeError, "lq"), (3, "4", TypeError, "lk"),
])
def test_lengths_must_be_positive_integers(fn, lq, lk, error, name):
    with pytest.raises(error, match=name):
        fn(lq, lk)


@pytest.mark.parametrize("window", [-1, 1.5, "2", True, None])
def test_sliding_window_rejects_bad_window(window):
    with pytest.raises((ValueError, TypeError), match="window"):
        sliding_window_mask(4, 5, window=window)


@pytest.mark.parametrize("lengths, lk, error", [
    ([0, 3], 4, ValueError), ([5, 3], 4, ValueError), ([-1], 4, ValueError),
    ([1.5, 2.0], 4, TypeError), ([[1, 2]], 4, TypeError), (3, 4, TypeError), ([True, False], 4, TypeError),
])
def test_padding_mask_rejects_bad_lengths(lengths, lk, error):
    with pytest.raises(error, match="lengths"):
        padding_mask(lengths, lk)


@pytest.mark.parametrize("lk, error", [(0, ValueError), (2.0, TypeError), (None, TypeError)])
def test_padding_mask_rejects_bad_lk(lk, error):
    with pytest.raises(error, match="lk"):
        padding_mask([1, 2], lk)


def test_make_mask_rejects_unknown_kind_and_bad_sizes():
    with pytest.raises(ValueError, match="kind"):
        make_mask("diagonal", 3, 4)
    with pytest.raises(ValueError, match="lq"):
        make_mask("causal", 0, 4)
    with pytest.raises(ValueError, match="window"):
        make_mask("sliding window", 3, 4, window=-1)
    with pytest.raises(ValueError, match="lengths"):
        make_mask("padding", 3, 4, lengths=[5])
