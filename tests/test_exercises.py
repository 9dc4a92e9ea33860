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


# ---------------------------------------------------------------- sliding-window mask (§3.5)

def _band(lq, lk, window):
    offset = torch.arange(lq)[:, None] - torch.arange(lk)[None, :]
    return offset.abs() <= window


def test_sliding_window_mask_check_accepts_correct_solutions(capsys):
    from attnbook.exercises import check_sliding_window_mask

    loops = lambda lq, lk, w: torch.tensor([[abs(i - j) <= w for j in range(lk)] for i in range(lq)])
    for fn in (_band, loops, lambda lq, lk, w: torch.ones(lq, lk, dtype=torch.bool).tril(w).triu(-w)):
        assert verdict(capsys, check_sliding_window_mask, fn) == (
            True, "✅ sliding-window mask is correct on 5 sizes, square and non-square")


@pytest.mark.parametrize("fn, message", [
    (lambda lq, lk, w: ~_band(lq, lk, w), "inverted"),
    (lambda lq, lk, w: (torch.arange(lq)[:, None] - torch.arange(lk)).abs() < w, "not <"),
    (lambda lq, lk, w: _band(lq, lk, w + 1), "too wide by one"),
    (lambda lq, lk, w: _band(lq, lk, w) & (torch.arange(lq)[:, None] >= torch.arange(lk)), "causal"),
    (lambda lq, lk, w: _band(lq, lk, w) & (torch.arange(lq)[:, None] <= torch.arange(lk)), "before i"),
    (lambda lq, lk, w: _band(lk, lq, w), "rows must be queries"),
    (lambda lq, lk, w: _band(lq, lq, w), r"expected shape \(5, 8\), got \(5, 5\)"),
    (lambda lq, lk, w: _band(lq, lk, w).float(), "boolean mask"),
    (lambda lq, lk, w: _band(lq, lk, w).tolist(), "expected a torch.Tensor, got list"),
    (lambda lq, lk, w: _band(lq, lk, 1), "lq=5, lk=8, window=2: the window is too narrow"),
    (lambda lq, lk, w: _band(lq, lk, w) ^ (torch.rand(lq, lk) < 0.3), "entries differ"),
    (lambda lq, lk: _band(lq, lk, 1), "raised TypeError"),
    ("not a function", "expected a function"),
])
def test_sliding_window_mask_check_names_the_mistake(capsys, fn, message):
    import re

    from attnbook.exercises import check_sliding_window_mask

    result, line = verdict(capsys, check_sliding_window_mask, fn)
    assert not result
    assert re.search(message, line), line


# ---------------------------------------------------------------- timeline query (§1.3)

def _query(table, field, first, last):
    chosen = [m for m in table if m.field == field and first <= m.year <= last]
    return [m.name for m in sorted(chosen, key=lambda m: (m.year, m.month))]


def test_timeline_query_check_accepts_correct_solutions(capsys):
    from attnbook.exercises import check_timeline_query
    from attnbook.history import milestones

    def library(table, field, first, last):
        return [m.name for m in milestones(field, (first, last), table=table)]

    for fn in (_query, library, lambda t, f, a, b: tuple(_query(t, f, a, b))):
        assert verdict(capsys, check_timeline_query, fn) == (
            True, "✅ timeline query is correct on 5 fields and ranges, one of them empty")


@pytest.mark.parametrize("fn, message", [
    (lambda t, f, a, b: _query(t, f, a, b - 1), "the last year is left out"),
    (lambda t, f, a, b: _query(t, f, a + 1, b), "the first year is left out"),
    (lambda t, f, a, b: [m.name for m in sorted(t, key=lambda m: m.when) if a <= m.year <= b],
     "other fields are included"),
    (lambda t, f, a, b: _query(t, f, 1900, 2100), "the years are ignored"),
    (lambda t, f, a, b: [m.name for m in t if m.field == f and a <= m.year <= b], "not in chronological order"),
    (lambda t, f, a, b: sorted(_query(t, f, a, b)), "not in chronological order"),
    (lambda t, f, a, b: [m for m in t if m.field == f and a <= m.year <= b], "not the Milestone objects"),
    (lambda t, f, a, b: set(_query(t, f, a, b)), "expected a list of names (strings), got set"),
    (lambda t, f, a, b: _query(t, f, a, b) * 2, "more than once"),
    (lambda t, f, a, b: _query(t, f, a, b)[1:], "missing ['Squeeze-and-excitation'], unexpected []"),
    (lambda t, f, a, b: t[100], "raised IndexError"),
    ("not a function", "expected a function"),
])
def test_timeline_query_check_names_the_mistake(capsys, fn, message):
    from attnbook.exercises import check_timeline_query

    result, line = verdict(capsys, check_timeline_query, fn)
    assert result is False and message in line, line


# ---------------------------------------------------------------- squeeze-and-excitation (§3.6)

def _se(x, w1, b1, w2, b2, *, pool="mean", hidden=True, squash="sigmoid", bias=True, combine="mul"):
    """Squeeze-and-excitation written from the formula, with switches for the usual mistakes."""
    z = x.mean(dim=(2, 3)) if pool == "mean" else x.amax(dim=(2, 3))
    h = z @ w1.T + (b1 if bias else 0)
    h = torch.relu(h) if hidden else h
    a = h @ w2.T + (b2 if bias else 0)
    s = {"sigmoid": torch.sigmoid, "none": lambda t: t, "softmax": lambda t: torch.softmax(t, dim=-1)}[squash](a)
    return x * s[:, :, None, None] if combine == "mul" else x + s[:, :, None, None]


@pytest.mark.parametrize("seed", [0, 3])
def test_squeeze_excitation_check_accepts_correct_solutions(capsys, seed):
    from attnbook.exercises import check_squeeze_excitation

    linear = lambda x, w1, b1, w2, b2: x * torch.sigmoid(  # noqa: E731
        torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x.mean((-2, -1)), w1, b1)), w2, b2))[..., None, None]

    def with_gate(x, w1, b1, w2, b2):
        s = torch.sigmoid(torch.relu(x.mean((2, 3)) @ w1.T + b1) @ w2.T + b2)
        return x * s[:, :, None, None], s

    for fn in (_se, linear, with_gate):
        assert verdict(capsys, check_squeeze_excitation, fn, seed=seed) == (
            True, "✅ squeeze-and-excitation is correct")


@pytest.mark.parametrize("mistake, message", [
    (dict(pool="max"), "takes the maximum of each channel"),
    (dict(hidden=False), "ReLU between the two linear maps is missing"),
    (dict(squash="none"), "sigmoid is missing"),
    (dict(squash="softmax"), "softmax over the channels"),
    (dict(bias=False), "biases b1 and b2 are missing"),
    (dict(combine="add"), "the gate is added to x"),
])
def test_squeeze_excitation_check_names_the_mistake(capsys, mistake, message):
    from attnbook.exercises import check_squeeze_excitation

    result, line = verdict(capsys, check_squeeze_excitation, lambda *a: _se(*a, **mistake))
    assert result is False and message in line, line


@pytest.mark.parametrize("fn, message", [
    (lambda x, w1, b1, w2, b2: torch.sigmoid(torch.relu(x.mean((2, 3)) @ w1.T + b1) @ w2.T + b2),
     "shape (B, C) of the gate s"),
    (lambda x, w1, b1, w2, b2: _se(x, w1, b1, w2, b2) * 1.01, "differ from the reference"),
    (lambda x, w1, b1, w2, b2: x * torch.sigmoid(x.mean((2, 3)) @ w1 + b1), "your function raised"),
    (lambda x, w1, b1, w2, b2: (_se(x, w1, b1, w2, b2), torch.zeros(2, 6, dtype=x.dtype)), "gate s"),
    (lambda x, w1, b1, w2, b2: _se(x, w1, b1, w2, b2).tolist(), "expected a torch.Tensor"),
    ("not a function", "expected a function"),
])
def test_squeeze_excitation_check_reports_other_errors(capsys, fn, message):
    from attnbook.exercises import check_squeeze_excitation

    result, line = verdict(capsys, check_squeeze_excitation, fn)
    assert result is False and message in line, line


# ---------------------------------------------------------------- online softmax step (§5.3)

def _online_step(kind=None):
    """A student's online softmax step, right (kind None) or with one typical mistake."""
    def step(state, scores, values):
        block_max = scores.amax(-1, keepdim=True)
        if state is None:
            if kind == "none":
                raise TypeError("cannot unpack non-iterable NoneType object")
            p = torch.exp(scores - block_max)
            return (block_max.squeeze(-1) if kind == "keepdim" else block_max), p.sum(-1, keepdim=True), p @ values
        m, l, acc = state
        new = block_max if kind == "block max" else torch.maximum(m, block_max)
        r, p = torch.exp(m - new), torch.exp(scores - new)
        l_r, acc_r = {"l": (l, r * acc), "acc": (r * l, acc), "inverted": (l / r, acc / r)}.get(kind, (r * l, r * acc))
        if kind == "pair":
            return new, l_r
        if kind == "shifted":            # a consistent state, but relative to m' − 1 instead of m'
            r, p = torch.exp(m - new + 1), torch.exp(scores - new + 1)
            l_r, acc_r = r * l, r * acc
        return [new, l_r + p.sum(-1, keepdim=True), acc_r + p @ values]
    return step


def test_online_softmax_step_check_accepts_correct_solutions(capsys):
    from attnbook.exercises import check_online_softmax_step
    from attnbook.flash import online_softmax_step

    for fn in (online_softmax_step, _online_step(), lambda s, b, v: online_softmax_step(s, b, v, overwrite=True)):
        for seed in (0, 1):
            assert verdict(capsys, check_online_softmax_step, fn, seed=seed) == (
                True, "✅ online softmax step is correct: after 3 blocks acc / l = softmax(S) V")


@pytest.mark.parametrize("kind, message", [
    ("l", "l after block 2: values differ .*: l is not rescaled"),
    ("acc", "acc after block 2: .*acc is not rescaled"),
    ("inverted", "the rescaling is inverted"),
    ("block max", "m after block 2: .*not the max of this block alone"),
    ("keepdim", r"expected shape \(2, 5, 1\), got \(2, 5\): keep the last dimension"),
    ("none", "block 1: your function raised TypeError.*the first call gets state=None"),
    ("pair", "return the new state as a tuple \\(m, l, acc\\), got a tuple of 2 values"),
    ("shifted", "acc / l is right but l is not relative to the running max"),
])
def test_online_softmax_step_check_names_the_mistake(capsys, kind, message):
    import re

    from attnbook.exercises import check_online_softmax_step

    result, line = verdict(capsys, check_online_softmax_step, _online_step(kind))
    assert result is False and re.search(message, line), line


def test_online_softmax_step_check_rejects_a_non_function_and_a_wrong_output(capsys):
    from attnbook.exercises import check_online_softmax_step

    assert verdict(capsys, check_online_softmax_step, "step") == (False, "❌ expected a function, got str")
    result, line = verdict(capsys, check_online_softmax_step, lambda s, b, v: (b, b, v))
    assert result is False and "m after block 1: expected shape (2, 5, 1)" in line


# ---------------------------------------------------------------- RoPE (§5.1)

def _rope_complex(x, positions, base=10000.0):
    """RoPE by complex multiplication: pair (x_2i, x_2i+1) as x_2i + i·x_2i+1, times e^{i m θ_i}."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    turn = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions[:, None] * theta)
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (d // 2, 2)).contiguous()) * turn).flatten(-2)


def _rope_loop(x, positions):
    out = x.clone()
    d = x.shape[-1]
    for j, m in enumerate(positions.tolist()):
        for i in range(d // 2):
            a = m * 10000.0 ** (-2 * i / d)
            u, v = x[..., j, 2 * i], x[..., j, 2 * i + 1]
            out[..., j, 2 * i], out[..., j, 2 * i + 1] = u * math.cos(a) - v * math.sin(a), u * math.sin(a) + v * math.cos(a)
    return out


@pytest.mark.parametrize("seed", [0, 3])
def test_rope_check_accepts_correct_solutions(capsys, seed):
    from attnbook.exercises import check_rope
    from attnbook.positions import apply_rope

    for fn in (apply_rope, _rope_complex, _rope_loop, lambda x, p: _rope_complex(x.float(), p)):
        assert verdict(capsys, check_rope, fn, seed=seed) == (True, "✅ RoPE is correct: every pair turns by m·θ_i")


def _neox(x, positions):
    d = x.shape[-1]
    first, second = x[..., : d // 2], x[..., d // 2:]
    angle = positions[:, None].double() * 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    return torch.cat((first * angle.cos() - second * angle.sin(), first * angle.sin() + second * angle.cos()), -1)


@pytest.mark.parametrize("fn, message", [
    (lambda x, p: x.clone(), "nothing is rotated"),
    (lambda x, p: _rope_complex(x, -p), "turn the wrong way"),
    (_neox, "GPT-NeoX layout"),
    (lambda x, p: _rope_complex(x, p, base=100.0), "the frequencies are base"),
    (lambda x, p: _rope_complex(x, torch.arange(x.shape[-2])), "positions are ignored"),
    (lambda x, p: _rope_complex(x, p + 1), "off by one"),
    (lambda x, p: 2 * _rope_complex(x, p), "length of some pair"),
    (lambda x, p: _rope_complex(x, p)[..., :4], r"expected shape \(2, 3, 5, 8\), got \(2, 3, 5, 4\)"),
    (lambda x, p: _rope_complex(x, p.flip(0)), "differ from the reference"),   # lengths kept, angles wrong
    (lambda x, p: _rope_complex(x, p).tolist(), "expected a torch.Tensor, got list"),
    (lambda x: x, "raised TypeError"),
])
def test_rope_check_names_the_mistake(capsys, fn, message):
    import re

    from attnbook.exercises import check_rope

    result, line = verdict(capsys, check_rope, fn)
    assert result is False and re.search(message, line), line


# ---------------------------------------------------------------- causal linear attention (§5.2)

def _phi(x):
    return torch.nn.functional.elu(x) + 1


def _causal_linear_loop(q, k, v, *, phi=_phi, strict=False, future=False, normalise=True):
    """The recurrence S_i = S_{i-1} + φ(k_i) v_iᵀ, z_i = z_{i-1} + φ(k_i), one query at a time
    (with the usual mistakes as options)."""
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    n = q.shape[-2]
    for i in range(n):
        keys = range(i, n) if future else range(i if strict else i + 1)
        s = torch.zeros(*q.shape[:-2], q.shape[-1], v.shape[-1], dtype=q.dtype)
        z = torch.zeros(*q.shape[:-2], q.shape[-1], dtype=q.dtype)
        for j in keys:
            s = s + phi(k[..., j, :]).unsqueeze(-1) * v[..., j, :].unsqueeze(-2)
            z = z + phi(k[..., j, :])
        num = (phi(q[..., i, :]).unsqueeze(-1) * s).sum(-2)
        den = (phi(q[..., i, :]) * z).sum(-1, keepdim=True)
        out[..., i, :] = num / den if normalise else num
    return out


def _non_causal_linear(q, k, v):
    from attnbook.linear import linear_attention

    return linear_attention(q, k, v)


@pytest.mark.parametrize("seed", [0, 5])
def test_causal_linear_attention_check_accepts_correct_solutions(capsys, seed):
    from attnbook.exercises import check_causal_linear_attention
    from attnbook.linear import linear_attention

    for fn in (lambda q, k, v: linear_attention(q, k, v, causal=True), _causal_linear_loop,
               lambda q, k, v: (_causal_linear_loop(q.float(), k.float(), v.float()), None)):
        assert verdict(capsys, check_causal_linear_attention, fn, seed=seed) == (
            True, "✅ causal linear attention is correct: out_i = φ(q_i)ᵀS_i / φ(q_i)ᵀz_i over the keys j ≤ i")


@pytest.mark.parametrize("fn, message", [
    (lambda q, k, v: _non_causal_linear(q, k, v), "every query sees every key"),
    (lambda q, k, v: _causal_linear_loop(q, k, v, strict=True), "leaves out its own key"),
    (lambda q, k, v: _causal_linear_loop(q, k, v, strict=True).nan_to_num(0.0), "leaves out its own key"),
    (lambda q, k, v: _causal_linear_loop(q, k, v, future=True), "the future"),
    (lambda q, k, v: _causal_linear_loop(q, k, v, normalise=False), "not normalised"),
    (lambda q, k, v: attention(q, k, v, is_causal=True)[0], "causal softmax attention"),
    (lambda q, k, v: _causal_linear_loop(q, k, v, phi=lambda x: x), "feature map is missing"),
    (lambda q, k, v: _causal_linear_loop(q / 2, k / 2, v), "no 1/√d scale"),
    (lambda q, k, v: _causal_linear_loop(q, k, v)[..., :2], r"expected shape \(2, 6, 3\), got \(2, 6, 2\)"),
    (lambda q, k, v: _causal_linear_loop(q, k, v) + 0.1, "differ from the reference"),
    (lambda q, k: q, "raised TypeError"),
    ("linear", "expected a function, got str"),
])
def test_causal_linear_attention_check_names_the_mistake(capsys, fn, message):
    import re

    from attnbook.exercises import check_causal_linear_attention

    result, line = verdict(capsys, check_causal_linear_attention, fn)
    assert result is False and re.search(message, line), line


# ---------------------------------------------------------------- integrated gradients (§5.4)

def _my_ig(model_fn, x, target, baseline, steps, *, rule="right", sign=1.0, scale=1.0, start=None,
           factor="difference", all_classes=False):
    """Integrated gradients by an explicit loop over the path (one wrong turn at a time)."""
    start = baseline.expand_as(x) if start is None else start
    alphas = {"right": [k / steps for k in range(1, steps + 1)],
              "left": [k / steps for k in range(steps)],
              "midpoint": [(k + 0.5) / steps for k in range(steps)]}[rule]
    total = torch.zeros_like(x)
    for alpha in alphas:
        point = (start + alpha * (x - start)).detach().requires_grad_(True)
        scores = model_fn(point)
        picked = scores.sum() if all_classes else scores[torch.arange(len(x)), target].sum()
        total += torch.autograd.grad(picked, point)[0] / steps
    multiplier = {"difference": x - start, "x": x, "none": torch.ones_like(x)}[factor]
    return sign * scale * multiplier * total


def _grad_at_x(model_fn, x, target):
    point = x.detach().requires_grad_(True)
    return torch.autograd.grad(model_fn(point)[torch.arange(len(x)), target].sum(), point)[0]


@pytest.mark.parametrize("seed", [0, 2])
def test_integrated_gradients_check_accepts_the_library_and_every_riemann_rule(capsys, seed):
    from attnbook.exercises import check_integrated_gradients
    from attnbook.interpret import integrated_gradients

    for method in ("riemann_right", "riemann_trapezoid"):
        library = lambda f, x, t, b, m, method=method: integrated_gradients(f, x, t, baseline=b, steps=m,  # noqa: E731
                                                                            method=method)
        result, line = verdict(capsys, check_integrated_gradients, library, seed=seed)
        assert result and "integrated gradients are correct" in line
    for rule in ("right", "left", "midpoint"):
        fn = lambda f, x, t, b, m, rule=rule: _my_ig(f, x, t, b, m, rule=rule)  # noqa: E731
        result, line = verdict(capsys, check_integrated_gradients, fn, seed=seed)
        assert result and f"({rule} Riemann sum)" in line


@pytest.mark.parametrize("fn, message", [
    (lambda f, x, t, b, m: x * _grad_at_x(f, x, t), "this is gradient × input"),
    (lambda f, x, t, b, m: (x - b) * _grad_at_x(f, x, t), "the gradient at x only"),
    (lambda f, x, t, b, m: _my_ig(f, x, t, b, m, factor="none"), r"multiply them by \(x − x'\)"),
    (lambda f, x, t, b, m: _my_ig(f, x, t, b, m, factor="x"), "not by x"),
    (lambda f, x, t, b, m: _my_ig(f, x, t, b, m, scale=m), "take their mean"),
    (lambda f, x, t, b, m: _my_ig(f, x, t, b, m, start=torch.zeros_like(x)), "zero baseline"),
    (lambda f, x, t, b, m: _my_ig(f, x, t, b, m, all_classes=True), "sum of all classes"),
    (lambda f, x, t, b, m: _my_ig(f, x, t, b, m, sign=-1.0), "sign is reversed"),
    (lambda f, x, t, b, m: _my_ig(f, x, t, b, 4), "differ from the reference"),
    (lambda f, x, t, b, m: _my_ig(f, x, t, b, m)[:, 0], r"expected shape \(3, 2, 5\), got \(3, 5\)"),
    (lambda f, x, t, b, m: _my_ig(f, x, t, b, m).tolist(), "expected a torch.Tensor, got list"),
    (lambda f, x, t: x, "raised TypeError"),
])
def test_integrated_gradients_check_names_the_mistake(capsys, fn, message):
    import re

    from attnbook.exercises import check_integrated_gradients

    result, line = verdict(capsys, check_integrated_gradients, fn)
    assert result is False and re.search(message, line), line


# ---------------------------------------------------------------- the longest length that fits (§6.1)

def test_max_length_check_accepts_correct_solutions(capsys):
    from attnbook.exercises import check_max_length

    for fn in (lambda c, h, i: math.isqrt(c // (4 * h * i)),
               lambda c, h, i: int((c / (4 * h * i)) ** 0.5),
               lambda c, h, i: float(math.isqrt(c // (4 * h * i))),
               lambda c, h, i: max(n for n in range(1, 70_000) if 4 * h * i * n * n <= c)):
        result, line = verdict(capsys, check_max_length, fn)
        assert result and "all 5 budgets" in line


@pytest.mark.parametrize("fn, message", [
    (lambda c, h, i: math.ceil((c / (4 * h * i)) ** 0.5), "does not fit: 4·heads·n²·itemsize = 1,000,318,464"),
    (lambda c, h, i: max(n for n in range(1, 70_000) if 4 * h * i * n * n < c), "use ≤, not <"),
    (lambda c, h, i: math.isqrt(c // (h * i)), "one n × n matrix per head"),
    (lambda c, h, i: math.isqrt(c // (4 * i)), "the heads are missing"),
    (lambda c, h, i: math.isqrt(c // (4 * h)), "numbers, not bytes"),
    (lambda c, h, i: math.isqrt(c // (32 * h * i)), "do not multiply it by 8"),
    (lambda c, h, i: (c / (4 * h * i)) ** 0.5, "not a whole number of tokens"),
    (lambda c, h, i: str(math.isqrt(c // (4 * h * i))), "expected a number of tokens, got str"),
    (lambda c, h, i: math.isqrt(c // (4 * h * i)) + 7, "expected n = 3,227, got 3,234"),
    (lambda c, h: 1, "raised TypeError"),
    (42, "expected a function"),
])
def test_max_length_check_names_the_mistake(capsys, fn, message):
    from attnbook.exercises import check_max_length

    result, line = verdict(capsys, check_max_length, fn)
    assert result is False and message in line, line


# ---------------------------------------------------------------- adaptive span (§6.4)

def _my_span_mask(span, lk, ramp, *, clamp_high=True, future=True, top_left=False, start=None, hard=False):
    """The ramp mask written out, with one wrong turn at a time."""
    lq = span.shape[-1]
    i = torch.arange(lq)[:, None] + (0 if top_left else lk - lq)
    d = (i - torch.arange(lk)).to(span.dtype)
    z = span[..., None]
    if hard:
        return ((d <= z) & (d >= 0)).to(span.dtype)
    m = ((ramp if start is None else start) + z - d) / ramp
    m = m.clamp(0.0, 1.0) if clamp_high else m.clamp(min=0.0)
    return m * (d >= 0) if future else m


@pytest.mark.parametrize("seed", [0, 3])
def test_span_mask_check_accepts_the_library_and_a_loop(capsys, seed):
    from attnbook.adaptive_span import span_mask
    from attnbook.exercises import check_span_mask

    result, line = verdict(capsys, check_span_mask, lambda z, lk, r: span_mask(z, lk, ramp=r), seed=seed)
    assert result and "the span mask is correct" in line
    assert verdict(capsys, check_span_mask, _my_span_mask, seed=seed)[0]


@pytest.mark.parametrize("fn, message", [
    (lambda z, lk, r: _my_span_mask(z, lk, r, clamp_high=False), "clamp the ramp to at most 1"),
    (lambda z, lk, r: _my_span_mask(z, lk, r, future=False), "future keys"),
    (lambda z, lk, r: _my_span_mask(z, lk, r, top_left=True), "query's own position"),
    (lambda z, lk, r: _my_span_mask(z, lk, r, start=0.0), "starts at 0"),
    (lambda z, lk, r: _my_span_mask(z, lk, r, hard=True), "hard window"),
    (lambda z, lk, r: _my_span_mask(z, lk, r) > 0, "not booleans"),
    (lambda z, lk, r: _my_span_mask(z, lk, 2 * r), "differ from the reference"),
    (lambda z, lk, r: _my_span_mask(z, lk, r).transpose(-2, -1), "expected shape"),
    (lambda z, lk: z, "raised TypeError"),
])
def test_span_mask_check_names_the_mistake(capsys, fn, message):
    from attnbook.exercises import check_span_mask

    result, line = verdict(capsys, check_span_mask, fn)
    assert result is False and message in line, line


# ---------------------------------------------------------------- counting a ViT's parameters (§6.2)

def _my_vit_count(size, patch, channels, classes, embed, depth, ratio, *, skip=()):
    """The count written out part by part (independent of the check's helper); ``skip`` drops parts."""
    n, hidden = (size // patch) ** 2, round(embed * ratio)
    parts = {
        "projection": channels * patch * patch * embed + embed,
        "class token": embed,
        "positions": (n + 1) * embed,
        "attention": depth * 4 * (embed * embed + embed),
        "mlp": depth * (embed * hidden + hidden + hidden * embed + embed),
        "norms": depth * 2 * 2 * embed + 2 * embed,
        "head": embed * classes + classes,
    }
    return sum(v for k, v in parts.items() if k not in skip)


def test_vit_parameters_check_accepts_a_count_and_a_built_model(capsys):
    from attnbook.exercises import check_vit_parameters
    from attnbook.vision import ViT

    result, line = verdict(capsys, check_vit_parameters, _my_vit_count)
    assert result and "2,794 for the digits' ViT" in line
    built = lambda s, p, c, k, e, d, r: sum(t.numel() for t in ViT(s, p, c, k, e, d, 2, mlp_ratio=r).parameters())  # noqa: E731
    assert verdict(capsys, check_vit_parameters, built)[0]
    assert verdict(capsys, check_vit_parameters, lambda *a: float(_my_vit_count(*a)))[0]


def _count_without_biases(s, p, c, k, e, d, r):
    h = round(e * r)
    return c * p * p * e + e + ((s // p) ** 2 + 1) * e + d * (4 * e * e + 2 * e * h + 4 * e) + 2 * e + e * k


@pytest.mark.parametrize("fn, message", [
    (_count_without_biases, "the biases are missing"),
    (lambda *a: _my_vit_count(*a, skip=("norms",)), "the LayerNorms are missing"),
    (lambda *a: _my_vit_count(*a) - 2 * a[4], "the final LayerNorm"),
    (lambda *a: _my_vit_count(*a, skip=("class token",)) - a[4], "or the class token"),
    (lambda *a: _my_vit_count(*a) - a[4], "N + 1 positions"),
    (lambda *a: _my_vit_count(*a, skip=("positions",)), "position embeddings"),
    (lambda s, p, c, k, e, d, r: _my_vit_count(s, p, c, k, e, d, 1.0), "round(mlp_ratio·E) units, not E"),
    (lambda *a: _my_vit_count(*a) - a[5] * (a[4] ** 2 + a[4]), "four E × E projections"),
    (lambda s, p, c, k, e, d, r: _my_vit_count(s, p, 1, k, e, d, r), "multiply by the channels"),
    (lambda s, p, c, k, e, d, r: _my_vit_count(s, p, c, k, e, 1, r), "depth times"),
    (lambda s, p, c, k, e, d, r: _my_vit_count(s, p, c, k, e, d, r) - ((s // p) ** 2 - s // p) * e, "not S/P"),
    (lambda *a: _my_vit_count(*a, skip=("head",)), "the classification head"),
    (lambda *a: _my_vit_count(*a) + 1, "expected 2,794 parameters, got 2,795"),
    (lambda *a: _my_vit_count(*a) + 0.5, "whole number of parameters"),
    (lambda *a: str(_my_vit_count(*a)), "whole number of parameters, got '2794'"),
    (lambda s, p: 1, "raised TypeError"),
    (None, "expected a function"),
])
def test_vit_parameters_check_names_the_mistake(capsys, fn, message):
    from attnbook.exercises import check_vit_parameters

    result, line = verdict(capsys, check_vit_parameters, fn)
    assert result is False and message in line, line


# ---------------------------------------------------------------- counting a variant's FLOPs (§7.1)

def test_flops_check_accepts_the_atlas_and_hand_written_formulas(capsys):
    from attnbook.atlas import VARIANTS, flops
    from attnbook.exercises import check_flops

    by_hand = {
        "window": lambda n, d, dv, w: 2 * n * (2 * w + 1) * (d + dv),
        "naive": lambda n, d, dv: 2 * n * n * d + 2 * n * n * dv,
        "linformer": lambda n, d, dv, k: 2 * k * n * (d + dv) + 2 * n * k * (d + dv),
        "nystrom": lambda n, d, dv, m: (4 * m * n * d + 4 * n * m * d + 2 * m * m * d + 48 * m ** 3
                                        + 2 * m * n * dv + 2 * m * m * dv + 2 * n * m * dv),
        "axial": lambda n, d, dv, h: 2 * (h * (n // h) ** 2 + (n // h) * h * h) * (d + dv),
        "linear": lambda n, d, dv: float(4 * n * d * dv + 2 * n * d),        # a whole float is fine
    }
    for name, fn in by_hand.items():
        result, line = verdict(capsys, check_flops, fn, name)
        assert result and "right for all 4 sizes" in line, line
    for name, v in VARIANTS.items():
        atlas = lambda n, d, dv, *s, name=name, keys=v.sizes: flops(name, n, d, dv, **dict(zip(keys, s)))  # noqa: E731
        assert verdict(capsys, check_flops, atlas, name, seed=3)[0], name


@pytest.mark.parametrize("name, fn, message", [
    ("window", lambda n, d, dv, w: n * (2 * w + 1) * (d + dv), "counted multiply-adds"),
    ("window", lambda n, d, dv, w: 4 * n * (2 * w + 1) * (d + dv), "not four"),
    ("window", lambda n, d, dv, w: 2 * n * 2 * w * (d + dv), "2w + 1 keys: w on each side and itself"),
    ("window", lambda n, d, dv, w: 2 * n * w * (d + dv), "keys on each side: 2w + 1 keys in all"),
    ("window", lambda n, d, dv, w: 2 * (d + dv) * sum(min(i, w) + min(n - 1 - i, w) + 1 for i in range(n)),
     "only the keys inside the sequence"),
    ("window", lambda n, d, dv, w: 2 * n * (2 * w + 1) * d, "only the scores"),
    ("window", lambda n, d, dv, w: 2 * n * (2 * w + 1) * 2 * d, "own width dv"),
    ("window", lambda n, d, dv, w: 2 * n * n * (d + dv), "cost of full attention"),
    ("window", lambda n, d, dv, w: 2 * n * (2 * w + 1) * (d + dv) + 1, "expected 489,888 FLOPs, got 489,889"),
    ("window", lambda n, d, dv, w: 2 * n * (2 * w + 1) * (d + dv) + 0.5, "expected a whole number of FLOPs"),
    ("window", lambda n, d, dv, w: str(n), "expected a whole number of FLOPs, got '324'"),
    ("window", lambda n, d, dv: 0, "raised TypeError"),
    ("window", 7, "expected a function"),
    ("naive", lambda n, d, dv: 2 * n * n * d, "only the scores"),
    ("linformer", lambda n, d, dv, k: 2 * n * k * (d + dv), "add the projections E K and E V"),
    ("nystrom", lambda n, d, dv, m: 8 * n * m * d + 4 * n * m * dv + 2 * m * m * (d + dv), "pseudo-inverse"),
    ("nystrom", lambda n, d, dv, m: 4 * n * m * d + 4 * n * m * dv + 2 * m * m * (d + dv) + 48 * m ** 3,
     "segment means computed as a product"),
    ("linear", lambda n, d, dv: 4 * n * dv * d + 2 * n * dv, "d and dv are swapped"),
])
def test_flops_check_names_the_mistake(capsys, name, fn, message):
    from attnbook.exercises import check_flops

    result, line = verdict(capsys, check_flops, fn, name)
    assert result is False and message in line, line


def test_flops_check_refuses_an_unknown_variant():
    from attnbook.exercises import check_flops

    with pytest.raises(ValueError, match="variant must be one of"):
        check_flops(lambda n, d, dv: 0, "flash")


# ---------------------------------------------------------------- patchify (§4.4)

def _patchify(x, p, *, order="row", layout="chw"):
    """Patches by a brute-force loop over the grid, with switches for the usual mistakes."""
    b, c, h, w = x.shape
    cells = [(r, k) for r in range(h // p) for k in range(w // p)]
    if order == "column":
        cells = sorted(cells, key=lambda rc: (rc[1], rc[0]))
    tokens = []
    for r, k in cells:
        block = x[:, :, r * p:(r + 1) * p, k * p:(k + 1) * p]
        tokens.append((block if layout == "chw" else block.permute(0, 2, 3, 1)).reshape(b, -1))
    return torch.stack(tokens, dim=1)


@pytest.mark.parametrize("seed", [0, 2])
def test_patchify_check_accepts_correct_solutions(capsys, seed):
    from attnbook.exercises import check_patchify
    from attnbook.vision import patchify

    unfold = lambda x, p: torch.nn.functional.unfold(x, p, stride=p).transpose(1, 2)  # noqa: E731
    for fn in (patchify, _patchify, unfold):
        assert verdict(capsys, check_patchify, fn, seed=seed) == (True, "✅ patchify is correct")


@pytest.mark.parametrize("fn, message", [
    (lambda x, p: _patchify(x, p, order="column"), "column-major order"),
    (lambda x, p: _patchify(x, p, layout="hwc"), "channel last"),
    (lambda x, p: torch.nn.functional.unfold(x, p, stride=p), "axes are swapped"),
    (lambda x, p: x.reshape(len(x), -1, 3 * p * p), "reshape alone"),
    (lambda x, p: _patchify(x, p)[:, :-1], "expected shape"),
    (lambda x, p: _patchify(x, p) + 0.1, "differ from the reference"),
    (lambda x, p: _patchify(x, p).tolist(), "expected a torch.Tensor"),
    (lambda x, p: x.unfold(5, p, p), "your function raised"),
])
def test_patchify_check_names_the_mistake(capsys, fn, message):
    from attnbook.exercises import check_patchify

    result, line = verdict(capsys, check_patchify, fn)
    assert result is False and message in line, line


@pytest.mark.parametrize("fn, ok, message", [
    (lambda h, m: __import__("attnbook.minilm").minilm.mean_pool(h, m), True, "embeddings match"),
    (lambda h, m: torch.nn.functional.normalize((h * m[..., None]).sum(1) / m.sum(1, keepdim=True), dim=-1),
     True, "embeddings match"),
    (lambda h, m: torch.nn.functional.normalize(h.mean(1), dim=-1), False, "averaged over the [PAD]"),
    (lambda h, m: (h * m[..., None]).sum(1) / m.sum(1, keepdim=True), False, "not normalised"),
    (lambda h, m: (h * m[..., None]).sum(1) / h.shape[1], False, "not by L"),
    (lambda h, m: torch.nn.functional.normalize((h * ~m[..., None]).sum(1), dim=-1), False, "True means a real"),
    (lambda h, m: torch.nn.functional.normalize(
        (torch.nn.functional.normalize(h, dim=-1) * m[..., None]).sum(1), dim=-1), False, "pool first"),
    (lambda h, m: torch.nn.functional.normalize(h[:, 0], dim=-1), False, "[CLS]"),
    (lambda h, m: h.mean(), False, "expected shape (3, 5)"),
    (lambda h: h, False, "raised TypeError"),
])
def test_mean_pooling_check_names_the_mistake(capsys, fn, ok, message):
    from attnbook.exercises import check_mean_pooling

    result, line = verdict(capsys, check_mean_pooling, fn)
    assert result is ok and message in line, line


# ---------------------------------------------------------------- RMSNorm (§4.2)

def _rms(x, w, eps):
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("fn, ok, message", [
    (_rms, True, "RMSNorm is correct"),
    (lambda x, w, eps: torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps), True, "RMSNorm is correct"),
    (lambda x, w, eps: torch.nn.functional.layer_norm(x, (x.shape[-1],), w, None, eps), False, "this is LayerNorm"),
    (lambda x, w, eps: _rms(x, 1.0, eps), False, "the gain is missing"),
    (lambda x, w, eps: w * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps), False, "ε is added after"),
    (lambda x, w, eps: _rms(x, w, 0.0), False, "ε is missing"),
    (lambda x, w, eps: w * x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps), False, "Σ x² / d"),
    (lambda x, w, eps: w * x / torch.sqrt(x.var(-1, keepdim=True) + eps), False, "standard deviation"),
    (lambda x, w, eps: w * x / torch.sqrt(x.pow(2).mean(-2, keepdim=True) + eps), False, "wrong axis"),
    (lambda x, w, eps: w * x * torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps), False, "divide by it"),
    (lambda x, w, eps: _rms(x, w, eps)[..., :3], False, "expected shape (2, 5, 6)"),
    (lambda x, w, eps: _rms(x, w, eps) + 0.1, False, "values differ"),
    (lambda x, w: x, False, "raised TypeError"),
])
def test_rms_norm_check_names_the_mistake(capsys, fn, ok, message):
    from attnbook.exercises import check_rms_norm

    result, line = verdict(capsys, check_rms_norm, fn)
    assert result is ok and message in line, line


# ---------------------------------------------------------------- check_skew (§4.5)

def _skew(qe, pad=(1, 0), rows=slice(1, None)):
    import torch.nn.functional as F

    L = qe.shape[-1]
    return F.pad(qe, pad).reshape(*qe.shape[:-2], L + 1, L)[..., rows, :]


def test_skew_check_accepts_the_reference_and_the_library():
    from attnbook.audio import relative_logits
    from attnbook.exercises import check_skew

    assert check_skew(_skew) is True
    eye = torch.eye(6, dtype=torch.float64)                            # Q = I: relative_logits(I, E) skews Eᵀ
    assert check_skew(lambda qe: relative_logits(eye.expand(*qe.shape[:-2], 6, 6).contiguous(),
                                                 qe.transpose(-2, -1))) is True


@pytest.mark.parametrize("fn, message", [
    (lambda qe: qe, "nothing is skewed"),
    (lambda qe: _skew(qe, pad=(0, 1), rows=slice(0, 6)), "goes on the left"),
    (lambda qe: _skew(qe, rows=slice(0, 6)), "keep the last L rows"),
    (lambda qe: _skew(qe.flip(-1)), "read backwards"),
    (lambda qe: _skew(qe, rows=slice(None)), "drop the first row"),
    (lambda qe: _skew(qe) + 1, "values differ"),
    (lambda qe: qe.sum(), "expected shape"),
    (lambda qe: 1 / 0, "raised ZeroDivisionError"),
])
def test_skew_check_names_the_mistake(capsys, fn, message):
    from attnbook.exercises import check_skew

    result, line = verdict(capsys, check_skew, fn)
    assert result is False and message in line, line


# ---------------------------------------------------------------- greedy decoding with a KV cache (§4.1)

def _greedy(model, src, steps, position=lambda t: t, fresh=False, keep_bos=False):
    """A student's greedy decoder with a KV cache, with optional mistakes."""
    from attnbook.transformer import KVCache
    from attnbook.translation import BOS

    memory, _ = model.encode(src)
    cache, token = KVCache(model.decoder.num_layers), torch.full((src.shape[0], 1), BOS)
    tokens, logits = [token] if keep_bos else [], []
    for t in range(steps):
        cache = KVCache(model.decoder.num_layers) if fresh else cache
        y, _ = model.decoder.forward_step(model.embed_target(token, start=position(t)), memory, cache,
                                          memory_mask=model.source_mask(src))
        logits.append(model.out(y[:, -1]))
        token = logits[-1].argmax(-1, keepdim=True)
        tokens.append(token)
    return torch.cat(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize("seed", [0, 3])
def test_greedy_check_accepts_a_cached_decoder_and_the_library(capsys, seed):
    from attnbook.exercises import check_greedy_decode

    assert verdict(capsys, check_greedy_decode, _greedy, seed=seed)[0]
    assert verdict(capsys, check_greedy_decode, lambda m, s, n: m.greedy(s, n)[:2], seed=seed)[0]


@pytest.mark.parametrize("fn, message", [
    (lambda m, s, n: _greedy(m, s, n, position=lambda t: 0), "embedded at position 0"),
    (lambda m, s, n: _greedy(m, s, n, fresh=True), "empty cache"),
    (lambda m, s, n: _greedy(m, s, n, position=lambda t: t + 1), "off by one"),
    (lambda m, s, n: _greedy(m, s, n, keep_bos=True), "without the BOS"),
    (lambda m, s, n: m.greedy(s, 11)[:2], "expected shape (3, 7, 14), got (3, 11, 14)"),
    (lambda m, s, n: (m.greedy(s, n)[0].float(), m.greedy(s, n)[1]), "long tensor of ids"),
    (lambda m, s, n: m.greedy(s, n)[1], "expected a pair"),
    (lambda m, s, n: (m.greedy(s, n)[0], m.greedy(s, n)[1] + 0.1), "from step 0 on"),
    (lambda m, s, n: 1 / 0, "raised ZeroDivisionError"),
])
def test_greedy_check_names_the_mistake(capsys, fn, message):
    from attnbook.exercises import check_greedy_decode

    result, line = verdict(capsys, check_greedy_decode, fn)
    assert result is False and message in line, line


def _symmetric_cross_entropy(logits):
    target = torch.arange(len(logits))
    return (torch.nn.functional.cross_entropy(logits, target)
            + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def _info_nce(x, t, tau):
    import torch.nn.functional as F
    return _symmetric_cross_entropy(F.normalize(x, dim=-1) @ F.normalize(t, dim=-1).T / tau)


def test_info_nce_check_accepts_the_reference():
    from attnbook.exercises import check_info_nce

    assert check_info_nce(_info_nce) is True


@pytest.mark.parametrize("fn, message", [
    (lambda x, t, tau: _symmetric_cross_entropy(x @ t.T / tau), "not normalised"),
    (lambda x, t, tau: torch.nn.functional.cross_entropy(
        torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T / tau,
        torch.arange(6)), "only the image → text"),
    (lambda x, t, tau: _info_nce(x, t, 1 / tau), "multiplied by the temperature"),
    (lambda x, t, tau: _info_nce(x, t, 1.0), "temperature is missing"),
    (lambda x, t, tau: 2 * _info_nce(x, t, tau), "not halved"),
    (lambda x, t, tau: 6 * _info_nce(x, t, tau), "summed over the pairs"),
    (lambda x, t, tau: _info_nce(x, t, tau) + 0.1, "values differ"),
    (lambda x, t, tau: _info_nce(x, t, tau).expand(2), "expected shape"),
    (lambda x, t, tau: x.foo, "raised AttributeError"),
])
def test_info_nce_check_names_the_mistake(capsys, fn, message):
    from attnbook.exercises import check_info_nce

    result, line = verdict(capsys, check_info_nce, fn)
    assert result is False and message in line, line


def test_modality_gap_check_accepts_the_reference():
    from attnbook.exercises import check_modality_gap

    assert check_modality_gap(lambda f, t: (f.mean(0) - t.mean(0)).norm()) is True
    assert check_modality_gap(lambda f, t: float((f.mean(0) - t.mean(0)).norm())) is True


@pytest.mark.parametrize("fn, message", [
    (lambda f, t: (f.mean(0) - t.mean(0)).pow(2).sum(), "squared distance"),
    (lambda f, t: (f[:, None] - t[None]).norm(dim=-1).mean(), "all image-text pairs"),
    (lambda f, t: (f[:4] - t).norm(dim=-1).mean(), "one to one"),
    (lambda f, t: (f.mean(0) / f.mean(0).norm() - t.mean(0) / t.mean(0).norm()).norm(), "normalised"),
    (lambda f, t: (f.sum(0) - t.sum(0)).norm(), "summed"),
    (lambda f, t: (f.mean(0) - t.mean(0)).norm() + 0.1, "expected"),
    (lambda f, t: "gap", "expected a number"),
    (lambda f, t: f @ t, "raised RuntimeError"),
])
def test_modality_gap_check_names_the_mistake(capsys, fn, message):
    from attnbook.exercises import check_modality_gap

    result, line = verdict(capsys, check_modality_gap, fn)
    assert result is False and message in line, line
