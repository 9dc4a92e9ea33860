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


def _compare(got, want, what):
    """None when ``got`` equals ``want``, else a sentence saying how it differs."""
    if not isinstance(got, torch.Tensor):
        return f"{what}: expected a torch.Tensor, got {type(got).__name__}"
    if got.shape != want.shape:
        return f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}"
    if torch.isnan(got).any():
        return f"{what}: the result contains NaN"
    if not torch.allclose(got.to(want.dtype), want, atol=1e-5, rtol=1e-4):
        err = (got.to(want.dtype) - want).abs().max().item()
        return f"{what}: values differ from the reference by up to {err:.3g}"
    return None


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, 7, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    return q, k, v


def check_scaled_scores(fn, seed=0):
    """Check ``fn(query, key)`` = Q Kᵀ / √d on query (2, 5, 8), key (2, 7, 8). §2.2."""
    q, k, _ = _inputs(seed)
    got = fn(q, k)
    problem = _compare(got, scaled_dot_scores(q, k), "scores")
    if problem and isinstance(got, torch.Tensor) and got.shape == (2, 5, 7):
        ratio = (got / (q @ k.transpose(-2, -1))).median().item()
        if math.isclose(ratio, 1.0, rel_tol=1e-3):
            problem = "scores are Q Kᵀ without the 1/√d scale"
        elif math.isclose(ratio, 1 / 8, rel_tol=1e-3):
            problem = "scores are divided by d instead of √d"
    return _report(problem is None, problem or "scaled dot-product scores are correct")


def check_masked_softmax(fn, seed=0):
    """Check ``fn(scores, mask)`` = softmax over allowed keys (mask True = may attend). §2.3."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    mask = causal_mask(5, 7) & padding_mask([7, 4], 7)
    got = fn(scores, mask)
    problem = _compare(got, masked_softmax(scores, mask), "weights")
    if problem and isinstance(got, torch.Tensor) and got.shape == scores.shape:
        if (got[~mask.expand_as(got)].abs() > 1e-9).any():
            problem = "some masked positions got a non-zero weight (True must mean 'may attend')"
        elif not torch.allclose(got.sum(-1), torch.ones(2, 5, dtype=got.dtype)):
            problem = "the weights of a row do not sum to 1"
    return _report(problem is None, problem or "masked softmax is correct")


def check_attention(fn, seed=0):
    """Check ``fn(query, key, value)`` = softmax(Q Kᵀ / √d) V on non-square shapes. §2.4.

    ``fn`` returns the output, or (output, weights), in which case the weights are checked too.
    """
    q, k, v = _inputs(seed)
    got = fn(q, k, v)
    out, weights = attention(q, k, v)
    got_weights = None
    if isinstance(got, tuple):
        got, got_weights = got[0], (got[1] if len(got) > 1 else None)
    problem = _compare(got, out, "output")
    if problem is None and got_weights is not None:
        problem = _compare(got_weights, weights, "weights")
    if problem and isinstance(got, torch.Tensor) and got.shape == (2, 5, 3):
        if _compare(got, attention(q, k, v, scale=1.0)[0], "output") is None:
            problem = "the output matches attention without the 1/√d scale"
        elif _compare(got, torch.softmax(scaled_dot_scores(q, k), dim=-2) @ v, "output") is None:
            problem = "the softmax runs over the queries (dim -2); it must run over the keys"
    return _report(problem is None, problem or "attention is correct")


def check_value(got, want, *, name="answer", tol=1e-2):
    """Check a number the student computed against the reference ``want`` (relative ``tol``)."""
    try:
        got = float(got)
    except (TypeError, ValueError):
        return _report(False, f"{name}: expected a number, got {got!r}")
    ok = math.isclose(got, float(want), rel_tol=tol, abs_tol=tol * 1e-3)
    return _report(ok, f"{name} is correct" if ok else f"{name}: {got:.4g} is not right; try again")
