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
    problem = None
    if isinstance(got, tuple):
        got, got_weights = got[0], (got[1] if len(got) > 1 else None)
        if got_weights is not None:
            problem = _compare(got_weights, weights, "weights")
    problem = _compare(got, out, "output") or problem
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
