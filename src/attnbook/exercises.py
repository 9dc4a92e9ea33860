"""Checks for the book's exercises: pass your function, learn whether it is right.

Each check runs the student's function against the library's reference on fresh random
inputs with non-square shapes and says what is wrong (type, shape, masking, scale, …)
instead of only "wrong". A check prints its verdict and returns True or False.
"""
import math

import torch

from .attention import attention
from .masks import causal_mask, padding_mask
from .scores import scaled_dot_scores
from .softmax import masked_softmax


def _report(ok, message):
    print(("✅ " if ok else "❌ ") + message)
    return ok


class _Raised(Exception):
    """The student's function raised: carries the sentence to report."""


def _run(fn, *args):
    """Call the student's ``fn``; an exception becomes a verdict, not a traceback."""
    if not callable(fn):
        raise _Raised(f"expected a function, got {type(fn).__name__}")
    try:
        return fn(*args)
    except Exception as error:  # noqa: BLE001 - any error of the student's code is reported
        shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
        raise _Raised(f"your function raised {type(error).__name__}: {error} (inputs of shapes {shapes})")


def _compare(got, want, what):
    """None when ``got`` equals ``want``, else (kind, sentence) saying how it differs.

    kind is "values" when only the values differ, so that a check can look for the
    usual mistakes behind wrong values; "type", "shape" or "nan" otherwise.
    """
    if not isinstance(got, torch.Tensor):
        return "type", f"{what}: expected a torch.Tensor, got {type(got).__name__}"
    if got.shape != want.shape:
        return "shape", f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}"
    if torch.isnan(got).any():
        return "nan", f"{what}: the result contains NaN"
    if not torch.allclose(got.to(want.dtype), want, atol=1e-5, rtol=1e-4):
        err = (got.to(want.dtype) - want).abs().max().item()
        return "values", f"{what}: values differ from the reference by up to {err:.3g}"
    return None


def _compare_result(got, output, weights, what="output"):
    """Compare a result that is ``output`` or ``(output, weights)`` with the reference.

    Returns (the student's output, the first problem found or None); the weights are checked
    only when the student returned them.
    """
    problem = None
    if isinstance(got, tuple):
        got, got_weights = got[0], (got[1] if len(got) > 1 else None)
        if got_weights is not None:
            problem = _compare(got_weights, weights, "weights")
    return got, _compare(got, output, what) or problem


def _verdict(problem, diagnoses, success):
    """Report ``problem`` (or success); when only values differ, name the first matching mistake."""
    if problem is None:
        return _report(True, success)
    kind, message = problem
    if kind == "values":
        message = next((why for matches, why in diagnoses if matches()), message)
    return _report(False, message)


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, 7, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    return q, k, v


def _close(got, want):
    return _compare(got, want, "") is None


def check_scaled_scores(fn, seed=0):
    """Check ``fn(query, key)`` = Q Kᵀ / √d on query (2, 5, 8), key (2, 7, 8). §2.2."""
    q, k, _ = _inputs(seed)
    try:
        got = _run(fn, q, k)
    except _Raised as raised:
        return _report(False, str(raised))
    raw = q @ k.transpose(-2, -1)
    return _verdict(_compare(got, scaled_dot_scores(q, k), "scores"), [
        (lambda: _close(got, raw), "scores are Q Kᵀ without the 1/√d scale"),
        (lambda: _close(got, raw / 8), "scores are divided by d instead of √d"),
        (lambda: _close(got, raw * 8 ** 0.5), "scores are multiplied by √d instead of divided"),
    ], "scaled dot-product scores are correct")


def check_masked_softmax(fn, seed=0):
    """Check ``fn(scores, mask)`` = softmax over allowed keys (mask True = may attend). §2.3."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    mask = causal_mask(5, 7) & padding_mask([7, 4], 7)
    try:
        got = _run(fn, scores, mask)
    except _Raised as raised:
        return _report(False, str(raised))
    return _verdict(_compare(got, masked_softmax(scores, mask), "weights"), [
        (lambda: _close(got, masked_softmax(scores, ~mask)),
         "the mask is inverted: True must mean 'may attend'"),
        (lambda: (got[~mask.expand_as(got)].abs() > 1e-9).any().item(),
         "some masked positions got a non-zero weight"),
        (lambda: not torch.allclose(got.sum(-1), torch.ones(2, 5, dtype=got.dtype)),
         "the weights of a row do not sum to 1 (did the softmax run over the last dimension?)"),
    ], "masked softmax is correct")


def check_attention(fn, seed=0):
    """Check ``fn(query, key, value)`` = softmax(Q Kᵀ / √d) V on non-square shapes. §2.4.

    ``fn`` returns the output, or (output, weights), in which case the weights are checked too.
    """
    q, k, v = _inputs(seed)
    try:
        got = _run(fn, q, k, v)
    except _Raised as raised:
        return _report(False, str(raised))
    out, weights = attention(q, k, v)
    got, problem = _compare_result(got, out, weights, "output")
    return _verdict(problem, [
        (lambda: _close(got, attention(q, k, v, scale=1.0)[0]),
         "the output matches attention without the 1/√d scale"),
        (lambda: _close(got, attention(q, k, v, scale=1 / 8)[0]),
         "the scores are divided by d instead of √d"),
        (lambda: _close(got, torch.softmax(scaled_dot_scores(q, k), dim=-2) @ v),
         "the softmax runs over the queries (dim -2); it must run over the keys"),
    ], "attention is correct")


def check_value(got, want, *, name="answer", tol=1e-2):
    """Check a number the student computed against the reference ``want`` (relative ``tol``)."""
    try:
        got = float(got)
    except (TypeError, ValueError):
        return _report(False, f"{name}: expected a number, got {got!r}")
    ok = math.isclose(got, float(want), rel_tol=tol, abs_tol=tol * 1e-3)
    return _report(ok, f"{name} is correct" if ok else f"{name}: {got:.4g} is not right; try again")


def check_column_attention(fn, seed=0):
    """Check ``fn(x)`` = column attention of an image x (2, 5, 7, 4), q = k = v = x. §3.4.

    y[r, c] = Σ_r' softmax_r'(x[r, c]·x[r', c] / √C) x[r', c]: each of the W = 7 columns is a
    sequence of H = 5 pixels. ``fn`` returns the output (2, 5, 7, 4), or (output, weights).
    """
    from .axial import column_attention, row_attention

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 7, 4, generator=g, dtype=torch.float64)
    try:
        got = _run(fn, x)
    except _Raised as raised:
        return _report(False, str(raised))
    if isinstance(got, tuple) and got:
        got = got[0]
    want = column_attention(x)[0]
    if isinstance(got, torch.Tensor) and got.shape == x.transpose(-3, -2).shape != x.shape:
        return _report(False, f"output: expected shape {tuple(want.shape)} (..., H, W, C), got "
                              f"{tuple(got.shape)}: transpose the columns back to (..., H, W, C)")
    cols = x.transpose(-3, -2)                       # (2, W, H, C): each column a sequence
    over_queries = torch.softmax(cols @ cols.mT / 2.0, dim=-2) @ cols
    return _verdict(_compare(got, want, "output"), [
        (lambda: _close(got, row_attention(x)[0]),
         "your function attends along the rows; column attention mixes the H pixels of a column (axis -3)"),
        (lambda: _close(got, column_attention(x, scale=1.0)[0]),
         "the output matches column attention without the 1/√C scale"),
        (lambda: _close(got, over_queries.transpose(-3, -2)),
         "the softmax runs over the queries; it must run over the keys r' of each column"),
    ], "column attention is correct")


def check_sliding_window_mask(fn):
    """Check ``fn(lq, lk, window)`` = the mask m_ij = (|i − j| ≤ window), True = may attend. §3.5.

    Runs ``fn`` on square and non-square sizes (Lq ≠ Lk both ways) and windows 0 to 3 and
    compares with :func:`attnbook.masks.sliding_window_mask`; names the usual mistakes
    (an inverted mask, < instead of ≤, a one-sided window, swapped axes, a non-boolean mask).
    """
    from .masks import sliding_window_mask

    cases = [(6, 6, 1), (5, 8, 2), (8, 5, 1), (7, 7, 0), (4, 9, 3)]
    for lq, lk, window in cases:
        where = f"lq={lq}, lk={lk}, window={window}"
        if not callable(fn):
            return _report(False, f"expected a function, got {type(fn).__name__}")
        try:
            got = fn(lq, lk, window)
        except Exception as error:  # noqa: BLE001 - any error of the student's code is reported
            return _report(False, f"your function raised {type(error).__name__}: {error} (called with {where})")
        want = sliding_window_mask(lq, lk, window=window)
        if not isinstance(got, torch.Tensor):
            return _report(False, f"{where}: expected a torch.Tensor, got {type(got).__name__}")
        if got.shape != want.shape:
            swapped = " (rows must be queries, columns keys)" if got.shape == want.shape[::-1] else ""
            return _report(False, f"{where}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}{swapped}")
        if got.dtype != torch.bool:
            return _report(False, f"{where}: expected a boolean mask (True = may attend), got dtype {got.dtype}")
        if torch.equal(got, want):
            continue
        offset = torch.arange(lq)[:, None] - torch.arange(lk)
        mistakes = [
            (~want, "the mask is inverted: True must mean 'may attend'"),
            (offset.abs() < window, "the window is too narrow: use |i − j| ≤ window, not <"),
            (offset.abs() <= window + 1, "the window is too wide by one: use |i − j| ≤ window"),
            ((offset >= 0) & (offset <= window), "the window is one-sided (causal): keys after i are missing"),
            ((offset <= 0) & (offset >= -window), "the window is one-sided: keys before i are missing"),
        ]
        why = next((message for mask, message in mistakes if torch.equal(got, mask)), None)
        wrong = int((got != want).sum())
        return _report(False, f"{where}: {why or f'{wrong} entries differ from |i − j| ≤ window'}")
    return _report(True, f"sliding-window mask is correct on {len(cases)} sizes, square and non-square")


def check_cross_attention(fn, seed=0):
    """Check ``fn(target, source, w_q, w_k, w_v)`` = softmax((Y W_Q)(X W_K)ᵀ / √d) (X W_V). §3.2.

    Queries come from the target Y (2, 5, 6), keys and values from the source X (2, 7, 4);
    w_q (6, 8), w_k (4, 8), w_v (4, 3): the output must be (2, 5, 3), one row per target
    position, and the weights (if returned as a second value) (2, 5, 7).
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    x = torch.randn(2, 7, 4, generator=g, dtype=torch.float64)
    w_q, w_k = (torch.randn(n, 8, generator=g, dtype=torch.float64) for n in (6, 4))
    w_v = torch.randn(4, 3, generator=g, dtype=torch.float64)
    try:
        got = _run(fn, y, x, w_q, w_k, w_v)
    except _Raised as raised:
        return _report(False, str(raised))
    q, k, v = y @ w_q, x @ w_k, x @ w_v
    out, weights = attention(q, k, v)
    got, problem = _compare_result(got, out, weights, "output")
    if problem is not None and problem[0] == "shape" and tuple(got.shape) == (2, 7, 3):
        problem = ("shape", "output has one row per *source* position (2, 7, 3): the queries must come "
                            "from the target, giving one row per target position (2, 5, 3)")
    return _verdict(problem, [
        (lambda: _close(got, attention(q, k, v, scale=1.0)[0]),
         "the output matches cross-attention without the 1/√d scale"),
        (lambda: _close(got, attention(q, k, v, scale=1 / 8)[0]),
         "the scores are divided by d instead of √d"),
        (lambda: _close(got, torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5, dim=-2) @ v),
         "the softmax runs over the queries (dim -2); it must run over the source positions (dim -1)"),
    ], "cross-attention is correct")


def check_reinforce_loss(fn, seed=0):
    """Check ``fn(log_prob, reward, baseline)`` = −mean((R − b)·log p), R and b held constant. §3.1.

    log_prob and reward have shape (4, 3) and both require a gradient; baseline is a number.
    The loss must be a scalar whose gradient reaches log_prob only.
    """
    from .hard import reinforce_loss

    g = torch.Generator().manual_seed(seed)
    log_prob = (torch.rand(4, 3, generator=g, dtype=torch.float64) * 0.9 + 0.05).log().requires_grad_()
    reward = (torch.rand(4, 3, generator=g, dtype=torch.float64) < 0.5).double().requires_grad_()
    baseline = 0.3
    try:
        got = _run(fn, log_prob, reward, baseline)
    except _Raised as raised:
        return _report(False, str(raised))
    want = reinforce_loss(log_prob, reward, baseline)
    problem = _compare(got, want, "loss")
    grads = (None, None)
    if problem is None and got.requires_grad:
        grads = torch.autograd.grad(got, (log_prob, reward), allow_unused=True)
    if problem is None and grads[0] is None:
        problem = ("grad", "the loss has no gradient: keep log_prob in the graph (do not detach it)")
    elif problem is None and grads[1] is not None and grads[1].abs().max() > 0:
        problem = ("grad", "the gradient also flows into the reward: the reward is a constant "
                           "weight, use reward.detach()")
    elif problem is None and not _close(grads[0], -(reward.detach() - baseline) / reward.numel()):
        problem = ("grad", "the gradient with respect to log_prob is not −(R − b)/N")
    with torch.no_grad():
        return _verdict(problem, [
            (lambda: _close(got, -want), "the sign is flipped: the loss is −(R − b)·log p, so that "
                                         "minimising it raises the probability of good samples"),
            (lambda: _close(got, reinforce_loss(log_prob, reward)), "the baseline is not subtracted"),
            (lambda: _close(got, want * log_prob.numel()), "the loss is a sum: take the mean"),
            (lambda: _close(got, -((reward + baseline) * log_prob).mean()),
             "the baseline is added: use R − b"),
        ], "REINFORCE loss is correct")


def check_bahdanau_scores(fn, seed=0):
    """Check ``fn(state, keys, W, U, v)`` = e_j = vᵀ tanh(W s + U h_j), Bahdanau's score. §1.2.

    state s (2, 5), keys h (2, 7, 6), W (4, 5), U (4, 6), v (4,) -> scores (2, 7); the
    sizes differ so that a transposed weight or a swapped argument fails loudly.
    """
    from .scores import additive_scores

    g = torch.Generator().manual_seed(seed)
    s, h = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((2, 5), (2, 7, 6)))
    w, u, v = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((4, 5), (4, 6), (4,)))
    try:
        got = _run(fn, s, h, w, u, v)
    except _Raised as raised:
        return _report(False, str(raised))
    want = additive_scores(s[:, None], h, w, u, v)[:, 0]
    ws, uh = (s @ w.T)[:, None], h @ u.T
    return _verdict(_compare(got, want, "scores"), [
        (lambda: _close(got, torch.softmax(want, dim=-1)),
         "these are the weights softmax_j(e_j); return the scores e_j before the softmax"),
        (lambda: _close(got, (ws + uh) @ v), "the tanh is missing: e_j = vᵀ tanh(W s + U h_j)"),
        (lambda: _close(got, (torch.tanh(ws) + torch.tanh(uh)) @ v),
         "tanh is applied to W s and U h_j separately; apply it to their sum"),
        (lambda: _close(got, torch.tanh((ws + uh) @ v)), "v must come after the tanh: vᵀ tanh(...)"),
    ], "Bahdanau scores are correct")


def check_split_heads(split, merge=None, seed=0):
    """Check ``split(x, heads)``: (B, L, h·d) -> (B, h, L, d), head i holding the features
    i·d .. (i+1)·d - 1 of every position, on x (2, 5, 12) with h = 3 (so d = 4). With ``merge``
    also check ``merge(heads)``: (B, h, L, d) -> (B, L, h·d), the inverse. §3.3."""
    from .multihead import merge_heads, split_heads

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 12, generator=g, dtype=torch.float64)
    want = split_heads(x, 3)
    try:
        got = _run(split, x, 3)
    except _Raised as raised:
        return _report(False, str(raised))
    if isinstance(got, torch.Tensor) and got.shape == (2, 5, 3, 4):
        return _report(False, "split: shape (2, 5, 3, 4) is (B, L, h, d); move the head axis before "
                              "the positions, e.g. with .transpose(1, 2), to get (B, h, L, d)")
    ok = _verdict(_compare(got, want, "split"), [
        (lambda: _close(got, x.reshape(2, 3, 5, 4)),
         "split: x.reshape(B, h, L, d) cuts the flat memory into blocks that mix positions; "
         "reshape to (B, L, h, d) first, then swap the L and h axes"),
        (lambda: _close(got, x.unflatten(-1, (4, 3)).permute(0, 3, 1, 2)),
         "split: your head i takes every h-th feature (i, i + h, …); it must take the "
         "contiguous block i·d .. (i+1)·d - 1"),
    ], "split_heads is correct")
    if not ok or merge is None:
        return ok
    try:
        merged = _run(merge, want)
    except _Raised as raised:
        return _report(False, str(raised))
    return _verdict(_compare(merged, merge_heads(want), "merge"), [
        (lambda: _close(merged, want.reshape(2, 5, 12)),
         "merge: reshaping (B, h, L, d) straight to (B, L, h·d) mixes positions; swap the h and L "
         "axes first (and call .contiguous() or use .reshape)"),
    ], "split_heads and merge_heads are correct: merge(split(x)) == x")


def check_attention_pool(fn, seed=0):
    """Check ``fn(x, scores, mask)`` = (Σ_i a_i x_i, a) with a = softmax of the allowed scores. §1.1.

    x (3, 7, 5), scores (3, 7), mask (3, 7) boolean (True = may attend), one row fully
    masked (its weights and output must be zero). ``fn`` returns (pooled (3, 5), weights (3, 7))
    or only the pooled vectors.
    """
    from .pooling import attention_pool

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    scores = torch.randn(3, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 7, generator=g) > 0.3
    mask[:2, 0] = True
    mask[2] = False
    try:
        got = _run(fn, x, scores, mask)
    except _Raised as raised:
        return _report(False, str(raised))
    pooled, weights = attention_pool(x, scores, mask)
    got, problem = _compare_result(got, pooled, weights, "pooled output")
    if problem and problem[0] == "nan" and _close(got[:2], pooled[:2]):
        problem = ("nan", "row 2 has no allowed position and came out NaN: give it zero weights "
                          "and a zero output")
    e = torch.exp(scores) * mask
    return _verdict(problem, [
        (lambda: _close(got[:2], attention_pool(x, scores, ~mask)[0][:2]),
         "the mask is inverted: True must mean 'may attend'"),
        (lambda: _close(got[:2], attention_pool(x, scores)[0][:2]),
         "the mask is ignored: masked positions must get weight 0"),
        (lambda: _close(got[:2], (e.unsqueeze(-1) * x).sum(1)[:2]),
         "the weights are not normalised: divide by their sum so that they add up to 1"),
        (lambda: _close(got[:2], attention_pool(x, torch.zeros_like(scores), mask)[0][:2]),
         "this is the plain (masked) average: the weights must come from the scores"),
        (lambda: _close(got[:2], (torch.softmax(scores.masked_fill(~mask, float("-inf")), 0)
                                  .nan_to_num().unsqueeze(-1) * x).sum(1)[:2]),
         "the softmax runs over the batch (dim 0); it must run over the positions (dim -1)"),
    ], "attention pooling is correct, including the fully masked row")


def check_timeline_query(fn):
    """Check ``fn(table, field, first, last)`` = the short names of the milestones of ``field``
    dated first <= year <= last, in chronological order (by year, then month). §1.3.

    ``table`` is a list of :class:`attnbook.history.Milestone`: a shuffled copy of
    :data:`attnbook.history.MILESTONES`, so that the table's own order cannot stand in for
    sorting. Runs five fields and ranges, one with no milestone (the answer is then []),
    and names the usual mistakes (an end of the range left out, the field or the years
    ignored, objects instead of names, the wrong order).
    """
    from .history import MILESTONES, Milestone

    order = torch.randperm(len(MILESTONES), generator=torch.Generator().manual_seed(0)).tolist()
    table = [MILESTONES[i] for i in order]
    when = {m.name: (m.year, m.month) for m in MILESTONES}

    def names(keep):
        return sorted(m.name for m in table if keep(m))

    cases = [("vision", 2017, 2019), ("language", 2014, 2017), ("efficiency", 2020, 2020),
             ("speech", 2016, 2017), ("multimodal", 2014, 2023)]
    for field, first, last in cases:
        where = f"field={field!r}, first={first}, last={last}"
        if not callable(fn):
            return _report(False, f"expected a function, got {type(fn).__name__}")
        try:
            got = fn(list(table), field, first, last)
        except Exception as error:  # noqa: BLE001 - any error of the student's code is reported
            return _report(False, f"your function raised {type(error).__name__}: {error} (called with {where})")
        want = names(lambda m: m.field == field and first <= m.year <= last)
        if isinstance(got, (list, tuple)) and any(isinstance(g, Milestone) for g in got):
            return _report(False, f"{where}: return the short names (m.name), not the Milestone objects")
        if not isinstance(got, (list, tuple)) or not all(isinstance(g, str) for g in got):
            return _report(False, f"{where}: expected a list of names (strings), got {type(got).__name__}"
                                  + ("" if not isinstance(got, (list, tuple)) else " holding other things"))
        if len(set(got)) != len(got):
            return _report(False, f"{where}: some names appear more than once")
        if sorted(got) == want:
            dates = [when[n] for n in got]
            if dates != sorted(dates):
                return _report(False, f"{where}: the names are not in chronological order: sort the "
                                      "milestones by (year, month)")
            continue
        mistakes = [
            (lambda m: m.field == field and first <= m.year < last,
             "the last year is left out: the range includes both ends, first <= year <= last"),
            (lambda m: m.field == field and first < m.year <= last,
             "the first year is left out: the range includes both ends, first <= year <= last"),
            (lambda m: first <= m.year <= last, "milestones of other fields are included: keep m.field == field"),
            (lambda m: m.field == field, "the years are ignored: keep first <= m.year <= last"),
        ]
        why = next((message for keep, message in mistakes if sorted(got) == names(keep)), None)
        if why is None:
            missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
            why = f"missing {missing}, unexpected {extra}"
        return _report(False, f"{where}: {why}")
    return _report(True, f"timeline query is correct on {len(cases)} fields and ranges, one of them empty")


def check_squeeze_excitation(fn, seed=0):
    """Check ``fn(x, w1, b1, w2, b2)`` = squeeze-and-excitation: y = x · s, s = σ(W₂ ReLU(W₁ z + b₁) + b₂). §3.6.

    z (B, C) is the mean of each channel over H and W (global average pooling). The check
    uses x (2, 6, 5, 7), so C = 6, H = 5, W = 7, and a bottleneck of C/r = 3 units:
    w1 (3, 6), b1 (3,), w2 (6, 3), b2 (6,) with the layout of ``torch.nn.Linear`` (out, in).
    ``fn`` returns y (2, 6, 5, 7), or (y, s) with the gate s (2, 6), which is checked too.
    Names the usual mistakes: max instead of mean pooling, a missing ReLU or sigmoid, a
    softmax over the channels, missing biases, adding the gate instead of multiplying.
    """
    from .vision import SqueezeExcitation

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64) + 0.5
    w1, b1 = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    w2, b2 = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    try:
        got = _run(fn, x, w1, b1, w2, b2)
    except _Raised as raised:
        return _report(False, str(raised))
    block = SqueezeExcitation(6, reduction=2).double()
    with torch.no_grad():
        for param, value in ((block.reduce.weight, w1), (block.reduce.bias, b1),
                             (block.expand.weight, w2), (block.expand.bias, b2)):
            param.copy_(value)
        want = block(x)
    gate = block.last_weights

    def se(pool=lambda t: t.mean(dim=(-2, -1)), hidden=torch.relu, squash=torch.sigmoid, bias=True,
           combine=lambda t, s: t * s[:, :, None, None]):
        z = pool(x)
        s = squash((hidden(z @ w1.T + b1 * bias)) @ w2.T + b2 * bias)
        return combine(x, s)

    problem = None
    if isinstance(got, tuple):
        got, got_gate = got[0], (got[1] if len(got) > 1 else None)
        if got_gate is not None:
            problem = _compare(got_gate, gate, "gate s")
    if isinstance(got, torch.Tensor) and got.shape == gate.shape:
        return _report(False, "output: this has the shape (B, C) of the gate s; return the rescaled "
                              "feature map y = x · s[:, :, None, None], shape (2, 6, 5, 7)")
    problem = _compare(got, want, "output") or problem
    return _verdict(problem, [
        (lambda: _close(got, se(pool=lambda t: t.amax(dim=(-2, -1)))),
         "the squeeze takes the maximum of each channel; SE takes the mean (global average pooling)"),
        (lambda: _close(got, se(hidden=lambda t: t)), "the ReLU between the two linear maps is missing"),
        (lambda: _close(got, se(squash=lambda t: t)), "the sigmoid is missing: the gates must lie in (0, 1)"),
        (lambda: _close(got, se(squash=lambda t: torch.softmax(t, dim=-1))),
         "the gates come from a softmax over the channels; SE uses an independent sigmoid per channel"),
        (lambda: _close(got, se(bias=False)), "the biases b1 and b2 are missing"),
        (lambda: _close(got, se(combine=lambda t, s: t + s[:, :, None, None])),
         "the gate is added to x; SE multiplies each channel by its gate"),
    ], "squeeze-and-excitation is correct")


def _same_ratio(got, want):
    """True when the student's acc / l equals the reference's (whatever their m, l, acc)."""
    try:
        return _close(got[2] / got[1], want[2] / want[1])
    except Exception:  # noqa: BLE001 - shapes that do not divide: not the same
        return False


def check_online_softmax_step(fn, seed=0):
    """Check ``fn(state, scores_block, value_block)`` -> (m, l, acc), one online softmax step. §5.3.

    m' = max(m, rowmax S), l' = e^{m−m'} l + rowsum e^{S−m'}, acc' = e^{m−m'} acc + e^{S−m'} V,
    with state None before the first block. Folds scores (2, 5, 11) and values (2, 11, 3) in
    blocks of 4, 3 and 4 keys (the second block raises the running max of some rows), feeding
    your state back to your function; compares the state after every block with
    :func:`attnbook.flash.online_softmax_step` and acc / l at the end with softmax(S) V.
    Names the usual mistakes (a missing or inverted rescaling, the block's max instead of the
    running max, a state that does not keep the last dimension).
    """
    from .flash import online_softmax_step

    if not callable(fn):
        return _report(False, f"expected a function, got {type(fn).__name__}")
    g = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(2, 5, 11, generator=g, dtype=torch.float64)
    scores[:, :3, 4:7] += 4.0                       # rows 0-2: the max rises in the second block
    values = torch.randn(2, 11, 3, generator=g, dtype=torch.float64)
    state = None
    for n, (a, b) in enumerate([(0, 4), (4, 7), (7, 11)], start=1):
        block, vals = scores[..., a:b], values[..., a:b, :]
        try:
            got = _run(fn, state, block.clone(), vals)
        except _Raised as raised:
            hint = (" (the first call gets state=None: start from m = rowmax S, l = rowsum e^{S−m}, "
                    "acc = e^{S−m} V)") if state is None else ""
            return _report(False, f"block {n}: {raised}{hint}")
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            what = (f"a {type(got).__name__} of {len(got)} values" if isinstance(got, (tuple, list))
                    else type(got).__name__)
            return _report(False, f"block {n}: return the new state as a tuple (m, l, acc), got {what}")
        want = online_softmax_step(state, block.clone(), vals)
        for name, mine, ref in zip(("m", "l", "acc"), got, want):
            problem = _compare(mine, ref, f"{name} after block {n}")
            if problem is None:
                continue
            if problem[0] == "shape" and isinstance(mine, torch.Tensor) and mine.shape == ref.shape[:-1]:
                return _report(False, f"{problem[1]}: keep the last dimension (keepdim=True), so that "
                                      f"{name} broadcasts against the (…, Lq, b) block")
            if problem[0] != "values" or state is None:
                return _report(False, problem[1])
            m, l, acc = state
            m_new = torch.maximum(m, block.amax(-1, keepdim=True))
            p, r = torch.exp(block - m_new), torch.exp(m - m_new)
            mistakes = [
                ("m", block.amax(-1, keepdim=True),
                 "m must be the running max max(m, rowmax S), not the max of this block alone"),
                ("l", p.sum(-1, keepdim=True) + l,
                 "l is not rescaled: multiply the old l by e^{m − m'} before adding the new sum"),
                ("acc", p @ vals + acc,
                 "acc is not rescaled: multiply the old acc by e^{m − m'} before adding e^{S − m'} V"),
                ("l", p.sum(-1, keepdim=True) + l / r,
                 "the rescaling is inverted: the factor is e^{m − m'} (≤ 1), not e^{m' − m}"),
                ("acc", p @ vals + acc / r,
                 "the rescaling is inverted: the factor is e^{m − m'} (≤ 1), not e^{m' − m}"),
            ]
            why = next((w for which, wrong, w in mistakes if which == name and _close(mine, wrong)), None)
            if why is None and name != "m" and _same_ratio(got, want):
                why = (f"acc / l is right but {name} is not relative to the running max m: "
                       "use e^{S − m'} and rescale by e^{m − m'}")
            return _report(False, f"{problem[1]}: {why}" if why else problem[1])
        state = got
    out = state[2] / state[1]
    return _verdict(_compare(out, torch.softmax(scores, -1) @ values, "acc / l after the last block"),
                    [], "online softmax step is correct: after 3 blocks acc / l = softmax(S) V")


def check_rope(fn, seed=0):
    """Check ``fn(x, positions)`` = RoPE: the pair (x_2i, x_2i+1) at position m turned by m·θ_i. §5.1.

    (x_2i, x_2i+1) -> (x_2i cos mθ_i − x_2i+1 sin mθ_i, x_2i sin mθ_i + x_2i+1 cos mθ_i), with
    θ_i = 10000^(−2i/d), as :func:`attnbook.positions.apply_rope`. Runs on x (2, 3, 5, 8)
    (batch, heads, L = 5, d = 8) with positions (5,): distinct random integers below 100, not
    0 … L − 1, so that ignoring them shows. Names the usual mistakes: no rotation, the opposite
    angle, the GPT-NeoX pairing (i with i + d/2), θ_i = base^(−i/d), positions ignored or
    counted from 1, a map that changes the length of a pair.
    """
    from .positions import apply_rope

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64)
    positions = torch.randperm(100, generator=g)[:5]
    try:
        got = _run(fn, x, positions)
    except _Raised as raised:
        return _report(False, str(raised))
    pairs_of = torch.stack((torch.arange(4), torch.arange(4) + 4), -1).flatten()   # 0, 4, 1, 5, 2, 6, 3, 7

    def neox():                                      # pairs (i, i + d/2) rotated by m·θ_i
        out = torch.empty_like(x)
        out[..., pairs_of] = apply_rope(x[..., pairs_of], positions)
        return out

    def pair_lengths(t):
        return t.to(x.dtype).unflatten(-1, (4, 2)).norm(dim=-1)

    return _verdict(_compare(got, apply_rope(x, positions), "output"), [
        (lambda: _close(got, x), "nothing is rotated: the output equals the input"),
        (lambda: _close(got, apply_rope(x, -positions)),
         "the pairs turn the wrong way (by −m·θ_i): use (x cos − y sin, x sin + y cos)"),
        (lambda: _close(got, neox()),
         "you pair feature i with feature i + d/2 (the GPT-NeoX layout); this book pairs "
         "neighbours (x_2i, x_2i+1), as the RoFormer paper"),
        (lambda: _close(got, apply_rope(x, positions, base=100.0)),
         "the frequencies are base^(−i/d); use θ_i = base^(−2i/d), i = 0 … d/2 − 1"),
        (lambda: _close(got, apply_rope(x)),
         "the positions are ignored: token j must turn by positions[j]·θ_i, not by j·θ_i"),
        (lambda: _close(got, apply_rope(x, positions + 1)), "the positions are off by one: use them as given"),
        (lambda: not torch.allclose(pair_lengths(got), pair_lengths(x)),
         "the length of some pair (x_2i, x_2i+1) changed: a rotation keeps every pair's length"),
    ], "RoPE is correct: every pair turns by m·θ_i")


def check_causal_linear_attention(fn, seed=0):
    """Check ``fn(query, key, value)`` = causal linear attention with φ(x) = elu(x) + 1. §5.2.

    out_i = φ(q_i)ᵀ S_i / φ(q_i)ᵀ z_i with the running sums S_i = Σ_{j≤i} φ(k_j) v_jᵀ and
    z_i = Σ_{j≤i} φ(k_j), as :func:`attnbook.linear.linear_attention` with causal=True. Runs on
    query, key (2, 6, 4) and value (2, 6, 3). Names the usual mistakes: every key seen (no
    causality), the current key left out (j < i), the future instead of the past, no
    denominator, softmax instead of the feature map, no feature map, a 1/√d scale.
    """
    import torch.nn.functional as F

    from .linear import linear_attention

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    k = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    v = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    try:
        got = _run(fn, q, k, v)
    except _Raised as raised:
        return _report(False, str(raised))
    if isinstance(got, tuple) and got:
        got = got[0]

    def weighted(phi_q, phi_k, keep, normalise=True):
        s = (phi_q @ phi_k.transpose(-2, -1)) * keep
        return (s / s.sum(-1, keepdim=True) if normalise else s) @ v

    phi = lambda x: F.elu(x) + 1  # noqa: E731
    past = torch.ones(6, 6, dtype=torch.bool).tril()
    strict = past.tril(-1)
    problem = _compare(got, linear_attention(q, k, v, causal=True), "output")
    if problem is not None and problem[0] == "nan" and isinstance(got, torch.Tensor) \
            and _close(got[..., 1:, :], weighted(phi(q), phi(k), strict)[..., 1:, :]):
        return _report(False, "query i leaves out its own key: the sums run over j ≤ i, including j = i "
                              "(and the first query, which would see no key, gets NaN)")
    return _verdict(problem, [
        (lambda: _close(got, linear_attention(q, k, v)),
         "every query sees every key: under the causal mask query i may only use keys j ≤ i "
         "(running sums S_i, z_i)"),
        (lambda: _close(got[..., 1:, :], weighted(phi(q), phi(k), strict)[..., 1:, :]),
         "query i leaves out its own key: the sums run over j ≤ i, including j = i"),
        (lambda: _close(got, weighted(phi(q), phi(k), past.T)),
         "query i uses the keys j ≥ i (the future); causal attention uses j ≤ i"),
        (lambda: _close(got, weighted(phi(q), phi(k), past, normalise=False)),
         "the output is not normalised: divide φ(q_i)ᵀ S_i by φ(q_i)ᵀ z_i"),
        (lambda: _close(got, attention(q, k, v, is_causal=True)[0]),
         "this is causal softmax attention; linear attention replaces exp(q·k/√d) by φ(q)ᵀφ(k) "
         "with φ(x) = elu(x) + 1"),
        (lambda: _close(got, weighted(q, k, past)),
         "the feature map is missing: use φ(q) and φ(k) with φ(x) = elu(x) + 1, not q and k"),
        (lambda: any(_close(got, weighted(phi(q / 2), phi(k / c), past)) for c in (1, 2)),
         "the features take q and k as they are: linear attention has no 1/√d scale"),
    ], "causal linear attention is correct: out_i = φ(q_i)ᵀS_i / φ(q_i)ᵀz_i over the keys j ≤ i")


# ---------------------------------------------------------------- integrated gradients (§5.4)

def _ig_network(seed):
    """A small fixed network: inputs (B, 2, 5) -> scores (B, 4), smooth and far from linear."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(10, 8, generator=g, dtype=torch.float64)
    b1 = torch.randn(8, generator=g, dtype=torch.float64)
    w2 = torch.randn(8, 4, generator=g, dtype=torch.float64)
    return lambda x: torch.tanh(x.flatten(1) @ w1 + b1) @ w2


def _path_average(model_fn, x, target, baseline, alphas, weights):
    """Σ_k w_k ∂y_t(x' + α_k (x − x'))/∂x, each example's own target score differentiated."""
    total = torch.zeros_like(x)
    for alpha, weight in zip(alphas, weights):
        point = (baseline + alpha * (x - baseline)).requires_grad_(True)
        score = model_fn(point)
        picked = score.gather(1, target[:, None]).sum() if target is not None else score.sum()
        (grad,) = torch.autograd.grad(picked, point)
        total += weight * grad
    return total


def check_integrated_gradients(fn, seed=0):
    """Check ``fn(model_fn, inputs, target, baseline, steps)`` = integrated gradients. §5.4.

    IG(x) = (x − x') ⊙ (1/m) Σ_k ∂y_t(x' + α_k (x − x'))/∂x: the gradients of each example's
    target score, averaged along the straight path from the baseline x' to x by a Riemann sum
    of m = ``steps`` intervals (right α_k = k/m, left (k − 1)/m, midpoint (k − ½)/m or the
    trapezoid rule: each is accepted). Runs on a small fixed network, inputs (3, 2, 5), four
    classes, targets (3,), a non-zero baseline (2, 5) and steps = 16. Names the usual mistakes:
    gradient × input, the gradient at x only, no (x − x') factor, x instead of x − x', a sum
    instead of a mean, a zero baseline, all classes at once, the sign of x' − x.
    """
    g = torch.Generator().manual_seed(seed + 1)
    model_fn = _ig_network(seed)
    x = torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    baseline = 0.5 * torch.randn(2, 5, generator=g, dtype=torch.float64)
    target = torch.tensor([2, 0, 3])
    steps = 16
    try:
        got = _run(fn, model_fn, x.clone(), target.clone(), baseline.clone(), steps)
    except _Raised as raised:
        return _report(False, str(raised))
    start = baseline.expand_as(x)
    ks = [k / steps for k in range(steps + 1)]
    rules = {
        "right": (ks[1:], [1 / steps] * steps),
        "left": (ks[:-1], [1 / steps] * steps),
        "midpoint": ([(k + 0.5) / steps for k in range(steps)], [1 / steps] * steps),
        "trapezoid": (ks, [(0.5 if k in (0, steps) else 1.0) / steps for k in range(steps + 1)]),
    }
    means = {name: _path_average(model_fn, x, target, start, *rule) for name, rule in rules.items()}
    answers = {name: (x - start) * mean for name, mean in means.items()}
    matching = next((name for name, want in answers.items() if _close(got, want)), None)
    want = answers[matching or "right"]
    problem = None if matching else _compare(got, want, "attributions")

    def any_rule(make):
        return any(_close(got, make(name)) for name in rules)

    at_x = _path_average(model_fn, x, target, start, [1.0], [1.0])
    zero = torch.zeros_like(x)
    with torch.no_grad():
        change = model_fn(x).gather(1, target[:, None])[:, 0] - model_fn(start).gather(1, target[:, None])[:, 0]
    gap = (want.flatten(1).sum(1) - change).abs().max().item()
    return _verdict(problem, [
        (lambda: _close(got, x * at_x),
         "this is gradient × input: average the gradients at points x' + α(x − x') of the path instead"),
        (lambda: _close(got, (x - start) * at_x),
         "you used the gradient at x only: average the gradients along the path from x' to x"),
        (lambda: any_rule(lambda name: means[name]),
         "these are the averaged gradients: multiply them by (x − x')"),
        (lambda: any_rule(lambda name: x * means[name]),
         "multiply by x − x', not by x: the baseline here is not zero"),
        (lambda: any_rule(lambda name: answers[name] * steps) or _close(got, answers["trapezoid"] * steps),
         "you summed the gradients of the steps: take their mean (divide by the number of steps)"),
        (lambda: any_rule(lambda name: x * _path_average(model_fn, x, target, zero, *rules[name])),
         "you used a zero baseline: start the path at the baseline given"),
        (lambda: any_rule(lambda name: (x - start) * _path_average(model_fn, x, None, start, *rules[name])),
         "you differentiated the sum of all classes' scores: take each example's target class"),
        (lambda: any_rule(lambda name: -answers[name]),
         "the sign is reversed: multiply by (x − x'), not (x' − x)"),
    ], f"integrated gradients are correct ({matching} Riemann sum); they sum to y_t(x) − y_t(x') "
       f"up to {gap:.0e}")


# ---------------------------------------------------------------- the longest sequence that fits (§6.1)

def check_max_length(fn):
    """Check ``fn(cap_bytes, heads, itemsize)`` = the longest n with 4 · heads · n² · itemsize ≤ cap. §6.1.

    Naive attention holds four n × n matrices per head at its peak (scores, logits, shifted
    logits, exponentials), so the answer is ⌊√(cap / (4 · heads · itemsize))⌋, an integer.
    Runs on several caps, head counts and item sizes, one of them a cap that the answer's
    memory meets exactly. Names the usual mistakes: one matrix instead of four, the heads or
    the item size left out, bits instead of bytes, rounding up, < instead of ≤, a float.
    (:func:`attnbook.budget.max_length` also counts 3·n numbers per row and may be one lower.)
    """
    cases = [(10**9, 12, 2), (6 * 10**8, 1, 4), (16_000_000, 1, 4), (2**34, 8, 2), (123_456_789, 3, 4)]
    for cap, heads, itemsize in cases:
        where = f"cap_bytes={cap:,}, heads={heads}, itemsize={itemsize}"
        try:
            got = _run(fn, cap, heads, itemsize)
        except _Raised as raised:
            return _report(False, f"{raised} (called with {where})")
        want = math.isqrt(cap // (4 * heads * itemsize))
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return _report(False, f"{where}: expected a number of tokens, got {type(got).__name__}")
        if isinstance(got, float) and not got.is_integer():
            return _report(False, f"{where}: {got:.2f} is not a whole number of tokens: round down "
                                  f"(math.isqrt or int(...))")
        got = int(got)
        if got == want:
            continue

        def near(divisor):
            return abs(got - math.isqrt(cap // divisor)) <= 1

        need = 4 * heads * got * got * itemsize
        mistakes = [
            (got == want + 1 and need > cap,
             f"n = {got} does not fit: 4·heads·n²·itemsize = {need:,} > {cap:,} bytes; round down"),
            (got == want - 1 and 4 * heads * want * want * itemsize == cap,
             f"n = {want} uses exactly the cap, and that still fits: use ≤, not <"),
            (near(heads * itemsize),
             "you counted one n × n matrix per head; naive attention holds four at its peak"),
            (heads > 1 and near(4 * itemsize), "the heads are missing: each head holds its own matrices"),
            (itemsize > 1 and near(4 * heads), "you counted numbers, not bytes: multiply by itemsize"),
            (near(32 * heads * itemsize), "itemsize is already in bytes: do not multiply it by 8"),
        ]
        why = next((message for matches, message in mistakes if matches), None)
        return _report(False, f"{where}: {why or f'expected n = {want:,}, got {got:,}'}")
    return _report(True, f"the longest length is right for all {len(cases)} budgets, the exact fit included")


# ---------------------------------------------------------------- adaptive span (§6.4)

def check_span_mask(fn, seed=0):
    """Check ``fn(span, lk, ramp)`` = the adaptive-span ramp m_ij = clamp((R + z_i − d_ij)/R, 0, 1). §6.4.

    d_ij = (Lk − Lq + i) − j is how far key j lies behind query i (the queries are the last Lq
    positions) and future keys (d < 0) get 0. Runs ``fn`` on spans (2, 5) and (3,), with lk = 8
    and ramp 2.5, and compares with :func:`attnbook.adaptive_span.span_mask`; names the usual
    mistakes: no clamp at 1, future keys not masked, distances counted from the first key
    (top-left alignment), a ramp that starts at 0 instead of z, a hard window, a boolean mask.
    """
    from .adaptive_span import distances, span_mask

    g = torch.Generator().manual_seed(seed)
    cases = [(6 * torch.rand(2, 5, generator=g, dtype=torch.float64), 8, 2.5),
             (torch.tensor([0.0, 1.5, 3.25], dtype=torch.float64), 3, 1.0)]
    for span, lk, ramp in cases:
        where = f"span of shape {tuple(span.shape)}, lk={lk}, ramp={ramp}"
        try:
            got = _run(fn, span.clone(), lk, ramp)
        except _Raised as raised:
            return _report(False, f"{raised} ({where})")
        lq = span.shape[-1]
        if isinstance(got, torch.Tensor) and got.dtype == torch.bool:
            return _report(False, f"{where}: the mask must hold numbers in [0, 1] (a soft ramp), not booleans")
        d = distances(lq, lk).double()
        top_left = (torch.arange(lq)[:, None] - torch.arange(lk)).double()
        z = span[..., None]
        ramp_of = lambda dist, lo=0.0, hi=1.0, start=ramp: ((start + z - dist) / ramp).clamp(lo, hi)  # noqa: E731
        problem = _compare(got, span_mask(span, lk, ramp=ramp), f"mask ({where})")
        if problem is None:
            continue
        return _verdict(problem, [
            (lambda: _close(got, ramp_of(d, hi=math.inf) * (d >= 0)),
             f"{where}: some weights exceed 1: clamp the ramp to at most 1 inside the span"),
            (lambda: _close(got, ramp_of(d)),
             f"{where}: future keys (d < 0, j after the query) must get 0"),
            (lambda: _close(got, ramp_of(top_left) * (top_left >= 0)),
             f"{where}: measure the distance from the query's own position Lk − Lq + i, not from i"),
            (lambda: _close(got, ramp_of(d, start=0.0) * (d >= 0)),
             f"{where}: the ramp starts at 0 instead of at the span z: use (R + z − d) / R"),
            (lambda: _close(got, ((d <= z) & (d >= 0)).double()) or _close(got, ((d < z + ramp) & (d >= 0)).double()),
             f"{where}: this is a hard window; the mask must fall linearly from 1 at d = z to 0 at d = z + R"),
        ], "")
    return _report(True, "the span mask is correct: 1 up to z, a linear ramp over R positions, 0 beyond and in the future")


# ---------------------------------------------------------------- counting a ViT's parameters (§6.2)

def _vit_count(size, patch, channels, classes, embed, depth, ratio, *, bias=True, norms=True, final_norm=True,
               cls=True, cls_position=True, positions=True, hidden=None, projections=4, use_channels=True,
               use_depth=True, grid=True, head=True):
    """The parameters of attnbook.vision.ViT, with one part counted wrongly when a flag says so."""
    b, e = int(bias), embed
    n = (size // patch) ** 2 if grid else size // patch
    h = round(embed * ratio) if hidden is None else hidden
    total = (channels if use_channels else 1) * patch * patch * e + b * e          # patch projection
    total += e * cls                                                              # class token
    total += positions * (n + (cls and cls_position)) * e                        # position embeddings
    block = projections * (e * e + b * e) + (e * h + b * h) + (h * e + b * e) + norms * 4 * e
    total += block * (depth if use_depth else 1)
    total += norms * final_norm * 2 * e                                           # final LayerNorm
    return total + head * (e * classes + b * classes)


def check_vit_parameters(fn):
    """Check ``fn(image_size, patch_size, channels, classes, embed_dim, depth, mlp_ratio)`` = the
    number of parameters of the ViT of §4.4 and §6.2 (:class:`attnbook.vision.ViT`). §6.2.

    With N = (S/P)² patches and h = round(E·r) hidden units: C·P²·E + E (patch projection),
    E (class token), (N + 1)·E (positions), per block 4(E² + E) (attention) + E·h + h + h·E + E
    (MLP) + 4E (two LayerNorms), 2E (final LayerNorm), E·K + K (head). Runs four sizes, one
    with three channels and one deeper, against the count of a built model, and names the
    usual mistakes: biases, LayerNorms, the class token or its position, the positions, the
    MLP width, the output projection, the channels, the depth, the grid, the head. (A missing
    final LayerNorm and a missing class token both lose 2E: the check names both.)
    """
    from .vision import ViT

    cases = [(8, 2, 1, 10, 16, 1, 2.0), (8, 4, 1, 10, 16, 1, 2.0), (12, 3, 3, 7, 24, 2, 1.5),
             (32, 8, 3, 100, 40, 3, 4.0)]
    answers, wants = [], []
    for case in cases:
        size, patch, channels, classes, embed, depth, ratio = case
        where = (f"image_size={size}, patch_size={patch}, channels={channels}, classes={classes}, "
                 f"embed_dim={embed}, depth={depth}, mlp_ratio={ratio}")
        try:
            got = _run(fn, *case)
        except _Raised as raised:
            return _report(False, f"{raised} (called with {where})")
        if isinstance(got, bool) or not isinstance(got, (int, float)) or (isinstance(got, float) and not got.is_integer()):
            return _report(False, f"{where}: expected a whole number of parameters, got {got!r}")
        model = ViT(size, patch, channels, classes, embed, depth, heads=4, mlp_ratio=ratio)
        answers.append((where, int(got)))
        wants.append(sum(p.numel() for p in model.parameters()))
    wrong = [(where, got, want) for (where, got), want in zip(answers, wants) if got != want]
    if not wrong:
        return _report(True, f"the parameter count is right for all {len(cases)} ViTs "
                             f"({wants[0]:,} for the digits' ViT)")
    mistakes = [
        (dict(bias=False), "the biases are missing: the patch projection, the four attention "
                           "projections, both MLP layers and the head each have one per output"),
        (dict(norms=False), "the LayerNorms are missing: each has a scale and a shift (2E), "
                            "two per block and one before the head"),
        (dict(final_norm=False), "2E parameters are missing: the final LayerNorm before the head (2E), "
                                 "or the class token (E) with its own position (E)"),
        (dict(cls_position=False), "the class token has a position embedding too: there are N + 1 positions"),
        (dict(positions=False), "the position embeddings, (N + 1)·E learned numbers, are missing"),
        ("hidden", "the MLP's hidden layer has round(mlp_ratio·E) units, not E"),
        (dict(projections=3), "attention has four E × E projections with biases: queries, keys, "
                              "values and the output"),
        (dict(use_channels=False), "a patch holds C·P² numbers: multiply by the channels"),
        (dict(use_depth=False), "count the blocks depth times: every block has its own weights"),
        (dict(grid=False), "there are (S/P)² patches on the grid, not S/P"),
        (dict(head=False), "the classification head, E·K weights and K biases, is missing"),
    ]

    def matches(flags):   # the mistake explains every answer, right or wrong
        return all(_vit_count(*case, **({"hidden": case[4]} if flags == "hidden" else flags)) == got
                   for case, (_, got) in zip(cases, answers))

    where, got, want = wrong[0]
    why = next((message for flags, message in mistakes if matches(flags)), None)
    return _report(False, f"{where}: {why or f'expected {want:,} parameters, got {got:,}'}")


# ---------------------------------------------------------------- counting what a variant costs (§7.1)

def _flop_cases(name, seed):
    """Four sizes for variant ``name``: n, d ≠ dv and the variant's own sizes, valid and seeded."""
    from .atlas import variant

    g = torch.Generator().manual_seed(seed)

    def draw(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=g))

    cases = []
    for _ in range(4):
        height, width = draw(8, 30), draw(8, 30)
        n = height * width                               # 64 ≤ n ≤ 900, an image for axial attention
        d = draw(2, 12) * 4
        dv = d - 4 * draw(1, 6) if d > 28 and draw(0, 1) else d + 4 * draw(1, 6)   # never equal to d
        sizes = {"window": draw(2, min(20, n // 4)), "block": draw(4, 40), "chunk": draw(4, 40),
                 "n_buckets": 2 * draw(1, 16), "n_hashes": draw(1, 4), "height": height, "top": draw(1, 3),
                 "samples": draw(1, 4), "landmarks": draw(3, 40), "rank": draw(3, 40), "features": draw(8, 100),
                 "block_q": draw(16, 128), "block_k": draw(16, 128)}
        cases.append((n, d, dv, {key: sizes[key] for key in variant(name).sizes}))
    return cases


def check_flops(fn, variant="window", seed=0):
    """Check ``fn(n, d, dv, *sizes)`` = the FLOPs of the matrix products of one attention variant. §7.1.

    The reference is :func:`attnbook.atlas.flops` (2 FLOPs per multiply-add, as torch's
    FlopCounterMode counts the library's kernel); ``sizes`` are the variant's own sizes, in the
    order of ``VARIANTS[variant].sizes``. For the sliding window,
    ``fn(n, d, dv, window)`` = 2·n·(2w + 1)·(d + dv): the kernel gathers 2w + 1 keys for every
    query, padding beyond the ends of the sequence, and computes every one of them. Runs four
    seeded sizes with d ≠ dv (and w well below n); names the usual mistakes: multiply-adds
    instead of FLOPs, d in place of dv, d and dv swapped, the cost of full attention, and for
    the window, Linformer, Nyström and exact attention their own (2w keys, w keys, only the keys
    inside the sequence, only the scores, the projections or the pseudo-inverse left out).
    """
    import numbers

    from .atlas import flops, pairs
    from .atlas import variant as find

    label = find(variant).label
    cases = _flop_cases(variant, seed)
    answers = []
    for n, d, dv, sizes in cases:
        where = ", ".join(f"{k}={v}" for k, v in {"n": n, "d": d, "dv": dv, **sizes}.items())
        try:
            got = _run(fn, n, d, dv, *sizes.values())
        except _Raised as raised:
            return _report(False, f"{raised} (called with {where})")
        if isinstance(got, bool) or not isinstance(got, numbers.Real) or not float(got).is_integer():
            return _report(False, f"{where}: expected a whole number of FLOPs, got {got!r}")
        answers.append((where, int(got)))
    wants = [flops(variant, n, d, dv, **sizes) for n, d, dv, sizes in cases]
    wrong = [(where, got, want) for (where, got), want in zip(answers, wants) if got != want]
    if not wrong:
        n, d, dv, sizes = cases[0]
        return _report(True, f"the FLOPs of {label} are right for all {len(cases)} sizes "
                             f"({wants[0]:,} at n = {n}, d = {d}, dv = {dv})")

    def window_keys(n, d, dv, s, keys):
        return 2 * n * keys * (d + dv)

    own = {
        "window": [
            (lambda n, d, dv, s: window_keys(n, d, dv, s, 2 * s["window"]),
             "each query sees 2w + 1 keys: w on each side and itself"),
            (lambda n, d, dv, s: window_keys(n, d, dv, s, s["window"]),
             "w is the number of keys on each side: 2w + 1 keys in all"),
            (lambda n, d, dv, s: 2 * (d + dv) * pairs("window", n, **s),
             "you counted only the keys inside the sequence; the kernel gathers 2w + 1 keys for every "
             "query (padding beyond the ends) and computes them all"),
            (lambda n, d, dv, s: 2 * n * (2 * s["window"] + 1) * d,
             "only the scores: add the weighted sum of the values, 2·dv FLOPs per (query, key) pair"),
        ],
        "naive": [(lambda n, d, dv, s: 2 * n * n * d,
                   "only the scores: add the weighted sum of the values, 2·dv FLOPs per pair")],
        "linformer": [(lambda n, d, dv, s: 2 * n * s["rank"] * (d + dv),
                       "add the projections E K and E V to k positions: 2·k·n·(d + dv) FLOPs")],
        "nystrom": [(lambda n, d, dv, s: flops("nystrom", n, d, dv, **s) - 48 * s["landmarks"] ** 3,
                     "add the pseudo-inverse: 6 iterations of 4 products of m × m matrices, 48·m³ FLOPs"),
                    (lambda n, d, dv, s: flops("nystrom", n, d, dv, **s) - 4 * n * s["landmarks"] * d,
                     "the landmarks are segment means computed as a product P X: 2·m·n·d FLOPs for "
                     "the queries' and again for the keys'")],
    }
    mistakes = own.get(variant, []) + [
        (lambda n, d, dv, s: flops(variant, n, d, dv, **s) // 2,
         "you counted multiply-adds: each is two FLOPs, a multiplication and an addition"),
        (lambda n, d, dv, s: 2 * flops(variant, n, d, dv, **s),
         "twice too many: a multiply-add is two FLOPs, not four"),
        (lambda n, d, dv, s: flops(variant, n, d, d, **s),
         "the values have their own width dv: the products with V cost dv per term, not d"),
        (lambda n, d, dv, s: flops(variant, n, dv, d, **s), "d and dv are swapped: d is the width of the "
                                                             "queries and keys, dv that of the values"),
        (lambda n, d, dv, s: flops("naive", n, d, dv),
         f"this is the cost of full attention, 2n²(d + dv); {label} computes fewer products"),
    ]

    def matches(formula):   # the mistake explains every answer, right or wrong
        return all(formula(n, d, dv, sizes) == got for (n, d, dv, sizes), (_, got) in zip(cases, answers))

    where, got, want = wrong[0]
    why = next((message for formula, message in mistakes if matches(formula)), None)
    return _report(False, f"{where}: {why or f'expected {want:,} FLOPs, got {got:,}'}")


def check_patchify(fn, seed=0):
    """Check ``fn(images, patch_size)`` cuts images into the flattened patch tokens of a ViT. §4.4.

    images (B, C, H, W) -> (B, N, C·P·P), N = (H/P)·(W/P) patches in row-major order (patch
    (r, c) of the grid is token r·W/P + c), each flattened channel first, as
    ``torch.flatten`` flattens a (C, P, P) block: the layout of
    :func:`attnbook.vision.patchify`, for which a linear map with weight
    ``conv.weight.flatten(1)`` equals a convolution with kernel and stride P. The check uses
    images (2, 3, 6, 8) and P = 2 (a 3 × 4 grid of 12 tokens of 12 numbers). Names the usual
    mistakes: patches in column-major order, pixels flattened channel last, the token and
    feature axes swapped (the layout of ``F.unfold``), a reshape without a permute.
    """
    from .vision import patchify

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 6, 8, generator=g, dtype=torch.float64)
    p = 2
    try:
        got = _run(fn, x, p)
    except _Raised as raised:
        return _report(False, str(raised))
    want = patchify(x, p)
    blocks = x.unflatten(-1, (4, p)).unflatten(-3, (3, p))                # (B, C, rows, P, cols, P)
    if isinstance(got, torch.Tensor) and got.shape == (2, 12, 12) and got.dtype == want.dtype:
        if torch.allclose(got, want.transpose(1, 2)):
            return _report(False, "the token and feature axes are swapped (the layout of F.unfold); "
                                  "return (B, N, C·P·P) = (2, 12, 12) with one row per patch")
    return _verdict(_compare(got, want, "patches"), [
        (lambda: _close(got, blocks.permute(0, 4, 2, 1, 3, 5).reshape(2, 12, 12)),
         "the patches are in column-major order; number them row by row: patch (r, c) is token r·W/P + c"),
        (lambda: _close(got, blocks.permute(0, 2, 4, 3, 5, 1).reshape(2, 12, 12)),
         "each patch is flattened channel last (P, P, C); flatten it channel first (C, P, P), like a "
         "convolution's weight"),
        (lambda: _close(got, x.reshape(2, 12, 12)),
         "a reshape alone does not cut patches: split H and W into (rows, P) and (cols, P), then permute"),
    ], "patchify is correct")


def check_mean_pooling(fn, seed=0):
    """Check ``fn(hidden, mask)``: sentence embeddings by masked mean pooling, then L2 normalisation (§4.3).

    hidden (B, L, E), mask (B, L) bool (True = a real token, False = [PAD]) -> (B, E) with
    e_b = m_b / ‖m_b‖, m_b = Σ_i mask_bi hidden_bi / Σ_i mask_bi: the pooling of all-MiniLM-L6-v2.
    Runs it on B = 3 sentences of 6, 4 and 1 real tokens padded to L = 7, E = 5, with large
    values at the padded positions, and names the usual mistakes.
    """
    import torch.nn.functional as F

    from .minilm import mean_pool

    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 4, 1])
    mask = torch.arange(7)[None, :] < lengths[:, None]                        # (3, 7)
    hidden = torch.randn(3, 7, 5, generator=g) + 0.5
    hidden = torch.where(mask[..., None], hidden, 10 + 5 * torch.rand(3, 7, 5, generator=g))
    want = mean_pool(hidden, mask)
    try:
        got = _run(fn, hidden.clone(), mask.clone())
    except _Raised as raised:
        return _report(False, str(raised))
    m = mask[..., None].float()
    masked_mean = (hidden * m).sum(1) / m.sum(1)
    diagnoses = [
        (lambda: _close(got, F.normalize(hidden.mean(1), dim=-1)),
         "you averaged over the [PAD] positions too: weight each token by the mask and divide by the "
         "number of real tokens"),
        (lambda: _close(got, masked_mean),
         "the masked mean is right, but not normalised: divide each embedding by its L2 norm"),
        (lambda: _close(got, (hidden * m).sum(1) / hidden.shape[1]),
         "divide by the number of real tokens (mask.sum), not by L, and then normalise to unit length"),
        (lambda: _close(got, F.normalize((hidden * ~mask[..., None]).sum(1), dim=-1)),
         "you kept the padding and dropped the real tokens: in the mask True means a real token"),
        (lambda: _close(got, F.normalize((F.normalize(hidden, dim=-1) * m).sum(1), dim=-1)),
         "you normalised every token before pooling: pool first, then normalise the mean once"),
        (lambda: _close(got, F.normalize(hidden, dim=-1)[:, 0]) or _close(got, F.normalize(hidden[:, 0], dim=-1)),
         "that is the first token ([CLS]) only: all-MiniLM-L6-v2 averages all real tokens"),
    ]
    problem = _compare(got, want, "embeddings")
    return _verdict(problem, diagnoses,
                    "mean pooling over the real tokens, then unit length: the embeddings match")


def check_rms_norm(fn, seed=0):
    """Check ``fn(x, weight, eps)`` = RMSNorm: g ⊙ x / √(mean_i x_i² + ε) over the last axis. §4.2.

    Runs on x (2, 5, 6) with a non-zero mean (so that LayerNorm differs), a random gain g (6,)
    and ε = 0.01 (so that where ε goes shows). Names the usual mistakes: LayerNorm (the mean
    subtracted), no gain, ε outside the square root or missing, the sum instead of the mean,
    the standard deviation instead of the root mean square, the wrong axis, multiplying by the
    RMS instead of dividing.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 6, generator=g, dtype=torch.float64) + 0.7
    weight = 1 + 0.5 * torch.randn(6, generator=g, dtype=torch.float64)
    eps = 0.01
    try:
        got = _run(fn, x, weight, eps)
    except _Raised as raised:
        return _report(False, str(raised))
    mean_sq = x.pow(2).mean(-1, keepdim=True)
    want = weight * x / torch.sqrt(mean_sq + eps)
    return _verdict(_compare(got, want, "output"), [
        (lambda: _close(got, torch.nn.functional.layer_norm(x, (6,), weight, None, eps)),
         "this is LayerNorm: RMSNorm does not subtract the mean, it divides by √(mean x² + ε)"),
        (lambda: _close(got, x / torch.sqrt(mean_sq + eps)), "the gain is missing: multiply by weight"),
        (lambda: _close(got, weight * x / (torch.sqrt(mean_sq) + eps)),
         "ε is added after the square root; it belongs inside: √(mean x² + ε)"),
        (lambda: _close(got, weight * x / torch.sqrt(mean_sq)), "ε is missing: √(mean x² + ε)"),
        (lambda: _close(got, weight * x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps)),
         "you divided by √(Σ x² + ε): use the mean of the squares, Σ x² / d"),
        (lambda: _close(got, weight * x / torch.sqrt(x.var(-1, keepdim=True) + eps))
         or _close(got, weight * x / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps)),
         "you divided by the standard deviation; RMSNorm uses the root mean square, mean x², "
         "without subtracting the mean"),
        (lambda: _close(got, weight * x / torch.sqrt(x.pow(2).mean(-2, keepdim=True) + eps)),
         "the mean runs over the wrong axis: normalise each vector over its features (the last axis)"),
        (lambda: _close(got, weight * x * torch.sqrt(mean_sq + eps)),
         "you multiplied by the RMS: divide by it"),
    ], "RMSNorm is correct: g ⊙ x / √(mean x² + ε)")


def check_greedy_decode(fn, seed=0):
    """Check ``fn(model, src, steps)`` -> (tokens (B, steps), logits (B, steps, V)): greedy decoding
    of a :class:`~attnbook.translation.DateTranslator` with a KV cache. §4.1.

    The reference re-runs the decoder on the whole prefix at every step (no cache), so any
    correct incremental decoder matches it. The model is a small random one in float64, the
    source 3 written dates; steps = 7 (fewer than a full date, to catch a hard-coded 11).
    """
    from .transformer import KVCache
    from .translation import BOS, DateTranslator, date_batch

    torch.manual_seed(seed)
    model = DateTranslator(dim=16, heads=2, layers=2, hidden=32).double().eval()
    src = date_batch(3, generator=torch.Generator().manual_seed(seed)).src
    steps = 7
    try:
        got = _run(fn, model, src, steps)
    except _Raised as raised:
        return _report(False, str(raised))
    want_tokens, want_logits, _ = model.greedy(src, steps, cache=False)

    def variant(position, fresh_cache=False):
        """Greedy decoding with a mistake: the new token at ``position(t)``, or a new cache per step."""
        with torch.no_grad():
            memory, _ = model.encode(src)
            cache, token, logits = KVCache(2), torch.full((3, 1), BOS), []
            for t in range(steps):
                cache = KVCache(2) if fresh_cache else cache
                y, _ = model.decoder.forward_step(model.embed_target(token, start=position(t)), memory, cache,
                                                  memory_mask=model.source_mask(src))
                logits.append(model.out(y[:, -1]))
                token = logits[-1].argmax(-1, keepdim=True)
        return torch.stack(logits, 1)

    if not isinstance(got, tuple) or len(got) != 2:
        return _report(False, f"expected a pair (tokens, logits), got {type(got).__name__}")
    tokens, logits = got
    if isinstance(tokens, torch.Tensor) and tuple(tokens.shape) == (3, steps + 1):
        return _report(False, f"tokens have shape (3, {steps + 1}): return the {steps} generated tokens, "
                              "without the BOS you started from")
    problem = _compare(tokens, want_tokens, "tokens") if isinstance(tokens, torch.Tensor) and \
        tokens.dtype == torch.long else ("type", f"tokens: expected a long tensor of ids, got "
                                                 f"{getattr(tokens, 'dtype', type(tokens).__name__)}")
    problem = _compare(logits, want_logits, "logits") or problem
    if problem is not None and problem[0] == "values" and logits.shape == want_logits.shape:
        first_wrong = int(((logits - want_logits).abs().amax(-1) > 1e-6).any(0).float().argmax())
        problem = ("values", f"{problem[1]}, from step {first_wrong} on")
    return _verdict(problem, [
        (lambda: _close(logits, variant(lambda t: 0)),
         "every new token is embedded at position 0: give the token of step t its position t "
         "(embed_target(token, start=t), t = cache.length)"),
        (lambda: _close(logits, variant(lambda t: t, fresh_cache=True)),
         "each step starts from an empty cache, so a token sees only itself: create one KVCache "
         "before the loop and pass the same one to every step"),
        (lambda: _close(logits, variant(lambda t: t + 1)),
         "positions are off by one: the BOS of step 0 sits at position 0"),
    ], f"greedy decoding with the cache is correct: same {steps} tokens and logits as re-running the decoder")


def check_skew(fn, seed=0):
    """Check ``fn(qe)`` = Huang et al.'s skewing: (..., L, L) -> S_rel with S_rel[i, j] = qe[i, j − i + L − 1]. §4.5.

    qe = Q Eᵀ holds q_i · E_r at [i, r], where row r of the table E is the offset r − (L − 1).
    The skew pads one zero column on the left, reshapes to (..., L + 1, L) and drops the first
    row. Runs on qe (2, 3, 6, 6) and compares the causal part j ≤ i (what lies above the
    diagonal is masked in attention and not checked). Names the usual mistakes: no skew, the
    zero column on the right, the last row dropped instead of the first, the table read in
    the wrong order (offset i − j), the padded shape returned.
    """
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    L = 6
    qe = torch.randn(2, 3, L, L, generator=g, dtype=torch.float64)
    try:
        got = _run(fn, qe.clone())
    except _Raised as raised:
        return _report(False, str(raised))
    i, j = torch.arange(L)[:, None], torch.arange(L)[None]
    lower = j <= i
    want = qe[..., i, (j - i + L - 1).clamp(0, L - 1)] * lower

    def skew(x, pad=(1, 0), rows=slice(1, None)):
        padded = F.pad(x, pad)
        return padded.reshape(*x.shape[:-2], L + 1, L)[..., rows, :]

    if isinstance(got, torch.Tensor) and got.shape == (2, 3, L + 1, L):
        return _report(False, f"expected shape {(2, 3, L, L)}, got {tuple(got.shape)}: after the reshape to "
                              "(L + 1, L), drop the first row")
    causal = got * lower if isinstance(got, torch.Tensor) and got.shape == want.shape else got
    return _verdict(_compare(causal, want, "S_rel (j ≤ i)"), [
        (lambda: _close(causal, qe * lower), "nothing is skewed: qe[i, r] is still indexed by the table row r, "
                                             "not by the key j = r + i − (L − 1)"),
        (lambda: _close(causal, skew(qe, pad=(0, 1), rows=slice(0, L)) * lower),
         "the zero column goes on the left of qe (F.pad(qe, (1, 0))), not on the right"),
        (lambda: _close(causal, skew(qe, rows=slice(0, L)) * lower),
         "keep the last L rows after the reshape (drop the first), not the first L"),
        (lambda: _close(causal, skew(qe.flip(-1)) * lower),
         "the table is read backwards: row r is the offset r − (L − 1), so the last row is offset 0"),
    ], "skewing is correct: S_rel[i, j] = q_i · E[j − i + L − 1] for every j ≤ i")


def check_info_nce(fn, seed=0):
    """Check ``fn(image_features, text_features, temperature)`` = the symmetric InfoNCE loss of CLIP. §4.6.

    With f_i = x_i/‖x_i‖, g_j = t_j/‖t_j‖ and S_ij = ⟨f_i, g_j⟩ / τ, the loss is
    ½ [CE(S, diag) + CE(Sᵀ, diag)]: pair i is the right answer of row i (image → text) and of
    column i (text → image), each cross-entropy averaged over the B pairs. Runs on B = 6 pairs
    of D = 5 features (float64) with τ = 0.1 and τ = 0.5; the reference is
    :func:`attnbook.multimodal.info_nce`. Names the usual mistakes: no normalisation, one
    direction only, multiplying by τ, summing instead of averaging, not halving the sum.
    """
    import torch.nn.functional as F

    from .multimodal import info_nce

    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = 0.5 * torch.randn(6, 5, generator=g, dtype=torch.float64) + 0.3 * x
    target = torch.arange(6)
    for tau in (0.1, 0.5):
        try:
            got = _run(fn, x, t, tau)
        except _Raised as raised:
            return _report(False, str(raised))
        cos = F.normalize(x, dim=-1) @ F.normalize(t, dim=-1).T
        want = info_nce(cos / tau)
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.dim() > 0:
            got = got.reshape(())
        problem = _compare(got, want, f"loss (τ = {tau})")
        if problem is not None:
            break
    return _verdict(problem, [
        (lambda: _close(got, info_nce(x @ t.T / tau)),
         "the features are not normalised: divide each row by its length before the dot products"),
        (lambda: _close(got, F.cross_entropy(cos / tau, target)),
         "only the image → text direction: add the cross-entropy of the columns (text → image) and halve"),
        (lambda: _close(got, F.cross_entropy(cos.T / tau, target)),
         "only the text → image direction: add the cross-entropy of the rows (image → text) and halve"),
        (lambda: _close(got, info_nce(cos * tau)),
         "the similarities are multiplied by the temperature; divide by it (a small τ sharpens)"),
        (lambda: _close(got, info_nce(cos)), "the temperature is missing: divide the similarities by τ"),
        (lambda: _close(got, 2 * want), "the two cross-entropies are added but not halved"),
        (lambda: _close(got, 6 * want), "the cross-entropies are summed over the pairs; average them"),
    ], "the symmetric InfoNCE loss is correct for both temperatures")


def check_modality_gap(fn, seed=0):
    """Check ``fn(image_emb, text_emb)`` = ‖mean_i f_i − mean_j g_j‖, the modality gap. §6.3.

    image_emb (7, 5) and text_emb (4, 5): unit vectors in two separate cones, with different
    numbers of images and texts (so the centroids must be taken separately). The answer may be
    a float or a 0-d tensor. Names the usual mistakes: the squared distance, the mean distance
    of all pairs or of matched pairs, normalised centroids, sums instead of means.
    """
    import numbers

    import torch.nn.functional as F

    from .alignment import modality_gap

    g = torch.Generator().manual_seed(seed)
    axis = F.normalize(torch.randn(5, generator=g, dtype=torch.float64), dim=0)
    f = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64) + 2 * axis, dim=-1)
    t = F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64) - 2 * axis, dim=-1)
    try:
        got = _run(fn, f, t)
    except _Raised as raised:
        return _report(False, str(raised))
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        return _report(False, f"expected a number (or a 0-d tensor), got {type(got).__name__}")
    want = modality_gap(f, t)
    if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
        return _report(True, f"the modality gap is correct ({want:.4f} for these embeddings)")
    diff = f.mean(0) - t.mean(0)
    mistakes = [
        (diff.pow(2).sum().item(), "this is the squared distance: take the square root"),
        ((f[:, None] - t[None]).norm(dim=-1).mean().item(),
         "this is the mean distance of all image-text pairs; the gap is the distance between the two centroids"),
        ((f[:4] - t).norm(dim=-1).mean().item(),
         "this pairs images with texts one to one; take each modality's centroid separately"),
        ((F.normalize(f.mean(0), dim=0) - F.normalize(t.mean(0), dim=0)).norm().item(),
         "the centroids were normalised; the gap is measured between the plain means, inside the sphere"),
        ((f.sum(0) - t.sum(0)).norm().item(), "the embeddings were summed; average each modality"),
    ]
    why = next((message for value, message in mistakes if math.isclose(got, value, rel_tol=1e-6)), None)
    return _report(False, why or f"expected {want:.4f}, got {got:.4f}")
