"""attnbook.exercises: each check accepts the library's function and names typical mistakes."""
import math

import pytest
import torch

from attnbook import attention, masked_softmax, scaled_dot_scores
from attnbook.exercises import check_attention, check_masked_softmax, check_scaled_scores, check_value


def verdict(capsys, check, *args, **kwargs):
    """Run a check; return its result and the single line it printed."""
    result = check(*args, **kwargs)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert isinstance(result, bool)
    assert lines[0].startswith("✅ " if result else "❌ ")
    return result, lines[0]


# ---------------------------------------------------------------- scaled scores

@pytest.mark.parametrize("seed", [0, 1, 7])
def test_scaled_scores_accepts_the_library_and_independent_solutions(capsys, seed):
    assert verdict(capsys, check_scaled_scores, scaled_dot_scores, seed=seed) == (
        True, "✅ scaled dot-product scores are correct")
    by_hand = lambda q, k: torch.einsum("bid,bjd->bij", q, k) / math.sqrt(q.shape[-1])  # noqa: E731
    assert verdict(capsys, check_scaled_scores, by_hand, seed=seed)[0]
    float32 = lambda q, k: (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])  # noqa: E731
    assert verdict(capsys, check_scaled_scores, float32, seed=seed)[0]


@pytest.mark.parametrize("fn, message", [
    (lambda q, k: q @ k.transpose(-2, -1), "without the 1/√d scale"),
    (lambda q, k: q @ k.transpose(-2, -1) / q.shape[-1], "divided by d instead of √d"),
    (lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(k.shape[-2]), "differ from the reference"),  # √Lk
    (lambda q, k: k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1]), "expected shape (2, 5, 7), got (2, 7, 5)"),
    (lambda q, k: (q @ k.transpose(-2, -1)).tolist(), "expected a torch.Tensor, got list"),
    (lambda q, k: torch.full((2, 5, 7), math.nan, dtype=q.dtype), "NaN"),
])
def test_scaled_scores_names_the_mistake(capsys, fn, message):
    result, line = verdict(capsys, check_scaled_scores, fn)
    assert result is False and message in line


# ---------------------------------------------------------------- masked softmax

def naive_masked_softmax(scores, mask):
    return torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1)


@pytest.mark.parametrize("seed", [0, 3])
def test_masked_softmax_accepts_correct_solutions(capsys, seed):
    assert verdict(capsys, check_masked_softmax, masked_softmax, seed=seed) == (
        True, "✅ masked softmax is correct")
    assert verdict(capsys, check_masked_softmax, naive_masked_softmax, seed=seed)[0]


@pytest.mark.parametrize("fn, message", [
    (lambda s, m: masked_softmax(s, ~m), "the mask is inverted"),                       # inverted mask
    (lambda s, m: torch.softmax(s, dim=-1), "masked positions got a non-zero weight"),  # mask ignored
    (lambda s, m: masked_softmax(s, m, dim=-2), "do not sum to 1"),                     # wrong dim
    (lambda s, m: torch.exp(s) * m, "do not sum to 1"),                                 # no normalisation
    (lambda s, m: masked_softmax(s, m)[..., :-1], "expected shape (2, 5, 7), got (2, 5, 6)"),
    (lambda s, m: None, "expected a torch.Tensor, got NoneType"),
    (lambda s, m: torch.softmax(s.masked_fill(~m, -math.inf), dim=-2), "contains NaN"),  # NaN columns
])
def test_masked_softmax_names_the_mistake(capsys, fn, message):
    result, line = verdict(capsys, check_masked_softmax, fn)
    assert result is False and message in line


def test_masked_softmax_rejects_a_temperature_other_than_one(capsys):
    result, line = verdict(capsys, check_masked_softmax, lambda s, m: masked_softmax(s, m, temperature=2.0))
    assert result is False and "differ from the reference" in line


# ---------------------------------------------------------------- attention

@pytest.mark.parametrize("seed", [0, 5])
def test_attention_accepts_correct_solutions(capsys, seed):
    assert verdict(capsys, check_attention, attention, seed=seed) == (True, "✅ attention is correct")

    def by_hand(q, k, v):  # returns only the output, not a tuple
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v

    assert verdict(capsys, check_attention, by_hand, seed=seed)[0]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert verdict(capsys, check_attention, sdpa, seed=seed)[0]


@pytest.mark.parametrize("fn, message", [
    (lambda q, k, v: attention(q, k, v, scale=1.0), "without the 1/√d scale"),
    (lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2) @ v,
     "softmax runs over the queries"),
    (lambda q, k, v: attention(q, k, v, scale=1 / q.shape[-1]), "divided by d instead of √d"),
    (lambda q, k, v: attention(q, k, v, is_causal=True), "differ from the reference"),
    (lambda q, k, v: attention(q, k, v)[1], "expected shape (2, 5, 3), got (2, 5, 7)"),          # the weights
    (lambda q, k, v: (attention(q, k, v)[1], attention(q, k, v)[0]), "expected shape (2, 5, 3)"),
    (lambda q, k, v: attention(q, k, v)[0].numpy(), "expected a torch.Tensor, got ndarray"),
])
def test_attention_names_the_mistake(capsys, fn, message):
    result, line = verdict(capsys, check_attention, fn)
    assert result is False and message in line


# ---------------------------------------------------------------- numbers

@pytest.mark.parametrize("got, want", [(0.5, 0.5), (0.5004, 0.5), ("2.0", 2), (torch.tensor(3.0), 3.0),
                                       (0.0, 0.0), (-1.0, -1.0)])
def test_check_value_accepts_close_numbers(capsys, got, want):
    assert verdict(capsys, check_value, got, want, name="entropy") == (True, "✅ entropy is correct")


@pytest.mark.parametrize("got, want, message", [
    (0.6, 0.5, "x: 0.6 is not right"),
    (-0.5, 0.5, "x: -0.5 is not right"),
    (math.nan, 0.5, "x: nan is not right"),
    ("half", 0.5, "x: expected a number, got 'half'"),
    (None, 0.5, "x: expected a number, got None"),
    ([0.5], 0.5, "x: expected a number"),
    (torch.tensor([0.5, 0.5]), 0.5, "x: expected a number"),
])
def test_check_value_says_what_is_wrong(capsys, got, want, message):
    result, line = verdict(capsys, check_value, got, want, name="x")
    assert result is False and message in line


def test_check_value_tolerance_is_relative():
    assert check_value(1050.0, 1000.0, tol=0.1)
    assert not check_value(1050.0, 1000.0, tol=0.01)


def test_attention_names_division_by_d(capsys):
    result, line = verdict(capsys, check_attention, lambda q, k, v: attention(q, k, v, scale=1 / q.shape[-1]))
    assert result is False and "d instead of √d" in line


def test_an_error_in_the_students_function_is_a_verdict_not_a_traceback(capsys):
    result, line = verdict(capsys, check_attention, lambda q, k, v: q @ v)
    assert result is False and "your function raised" in line and "(2, 5, 8)" in line
    result, line = verdict(capsys, check_masked_softmax, "not a function")
    assert result is False and "expected a function" in line


def test_attention_checks_the_weights_when_they_are_returned(capsys):
    result, line = verdict(capsys, check_attention,
                           lambda q, k, v: (attention(q, k, v)[0], attention(q, k, v)[1].flip(-1)))
    assert result is False and line.startswith("❌ weights")
