"""attnbook.adaptive_span (§6.4): the ramp mask, span softmax, key counts, the lag task and the model."""
import math

import pytest
import torch
import torch.nn.functional as F
from support import DTYPES, randn, tol

from attnbook.adaptive_span import (IGNORE, LagBatch, SpanModel, adaptive_span_attention, distances,
                                    keys_in_span, lag_task, span_loss, span_mask, span_report,
                                    span_softmax)
from attnbook.attention import attention
from attnbook.masks import causal_mask, sliding_window_mask


def _ramp_loop(span, lk, ramp):
    """m_ij by the formula, one entry at a time (span (Lq,))."""
    lq = span.shape[0]
    out = torch.zeros(lq, lk, dtype=span.dtype)
    for i in range(lq):
        for j in range(lk):
            d = (lk - lq + i) - j
            if d >= 0:
                out[i, j] = min(1.0, max(0.0, (ramp + span[i].item() - d) / ramp))
    return out


# ---------------------------------------------------------------- distances and the mask

@pytest.mark.parametrize("lq, lk", [(4, 4), (3, 7), (1, 5)])
def test_distances_put_the_queries_at_the_end(lq, lk):
    d = distances(lq, lk)
    assert d.shape == (lq, lk) and d.dtype == torch.int64
    for i in range(lq):
        for j in range(lk):
            assert d[i, j].item() == (lk - lq + i) - j
    assert torch.equal(d >= 0, causal_mask(lq, lk, offset=lk - lq))


def test_distances_reject_more_queries_than_keys():
    with pytest.raises(ValueError, match="lq=5 queries"):
        distances(5, 3)


@pytest.mark.parametrize("ramp", [1.0, 2.5, 4.0])
def test_span_mask_matches_the_formula_on_non_square_shapes(ramp):
    span = torch.tensor([0.0, 1.3, 2.0, 5.7, 0.4], dtype=torch.float64)
    got = span_mask(span, 9, ramp=ramp)
    torch.testing.assert_close(got, _ramp_loop(span, 9, ramp))
    batched = span_mask(torch.stack([span, span.flip(0)]), 9, ramp=ramp)   # (2, Lq) -> (2, Lq, Lk)
    torch.testing.assert_close(batched[1], _ramp_loop(span.flip(0), 9, ramp))


def test_span_mask_is_one_inside_zero_outside_and_differentiable_on_the_ramp():
    span = torch.full((8,), 3.2, dtype=torch.float64, requires_grad=True)
    m = span_mask(span, 8, ramp=2.0)
    d = distances(8, 8)
    assert (m[(d >= 0) & (d <= 3)] == 1).all()             # inside the span
    assert (m[d >= 6] == 0).all() and (m[d < 0] == 0).all()  # beyond span + ramp, and the future
    assert torch.allclose(m[d == 4], torch.tensor(0.6, dtype=torch.float64))
    m.sum().backward()
    # dm/dz = 1/R for each reachable key on the ramp, d = 4 and d = 5; zero elsewhere
    expected = torch.tensor([0.0] * 4 + [0.5] + [1.0] * 3, dtype=torch.float64)
    torch.testing.assert_close(span.grad, expected)


@pytest.mark.parametrize("bad, error, message", [
    (torch.tensor([1.0, -0.5]), ValueError, "≥ 0"),
    (torch.tensor([1.0, float("nan")]), ValueError, "finite"),
    (torch.tensor([1, 2]), TypeError, "floating-point"),
])
def test_span_mask_rejects_bad_spans(bad, error, message):
    with pytest.raises(error, match=message):
        span_mask(bad, 4)


def test_span_mask_rejects_a_bad_ramp_and_too_few_keys():
    with pytest.raises(ValueError, match="ramp"):
        span_mask(torch.ones(3), 5, ramp=0.0)
    with pytest.raises(ValueError, match="lq=3 queries"):
        span_mask(torch.ones(3), 2)


# ---------------------------------------------------------------- the span softmax and attention

@pytest.mark.parametrize("dtype", DTYPES)
def test_span_softmax_matches_a_loop(dtype):
    scores = randn(2, 4, 7, seed=1, dtype=dtype)
    span = torch.tensor([[0.5, 2.0, 3.2, 0.0], [6.0, 1.0, 0.2, 4.5]], dtype=dtype)
    got = span_softmax(scores, span, ramp=1.5)
    want = torch.zeros_like(scores)
    for b in range(2):
        m = _ramp_loop(span[b].double(), 7, 1.5).to(dtype)
        for i in range(4):
            e = m[i] * torch.exp(scores[b, i] - scores[b, i].max())
            want[b, i] = e / e.sum()
    torch.testing.assert_close(got, want, **tol(dtype))
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 4, dtype=dtype), **tol(dtype))


def test_span_softmax_broadcasts_a_span_per_head():
    scores = randn(3, 2, 5, 5, seed=2)                       # (B, h, Lq, Lk)
    per_head = torch.tensor([[1.0], [3.0]], dtype=torch.float64)   # (h, 1)
    got = span_softmax(scores, per_head, ramp=2.0)
    for h, z in enumerate((1.0, 3.0)):
        torch.testing.assert_close(got[:, h], span_softmax(scores[:, h], torch.full((5,), z, dtype=torch.float64),
                                                           ramp=2.0))


def test_span_softmax_rejects_a_span_that_does_not_fit():
    with pytest.raises(ValueError, match="last dimension"):
        span_softmax(randn(2, 4, 6), torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="Lq ≤ Lk"):
        span_softmax(randn(5, 3), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_long_span_is_causal_attention_as_in_torch(dtype):
    q, k, v = randn(2, 3, 5, 8, seed=3, dtype=dtype), randn(2, 3, 9, 8, seed=4, dtype=dtype), \
        randn(2, 3, 9, 6, seed=5, dtype=dtype)
    out, w = adaptive_span_attention(q, k, v, torch.tensor(20.0, dtype=dtype), ramp=2.0)
    mask = causal_mask(5, 9, offset=4)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **tol(dtype))
    torch.testing.assert_close(w, attention(q, k, v, mask)[1], **tol(dtype))


@pytest.mark.parametrize("window", [0, 1, 3])
def test_a_sharp_ramp_is_a_causal_sliding_window(window):
    q, k, v = randn(7, 4, seed=6), randn(7, 4, seed=7), randn(7, 3, seed=8)
    out, w = adaptive_span_attention(q, k, v, window + 0.5, ramp=1e-6)
    ref, ref_w = attention(q, k, v, sliding_window_mask(7, window=window, causal=True))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(w, ref_w)


def test_adaptive_span_attention_checks_its_inputs():
    with pytest.raises(ValueError, match="width"):
        adaptive_span_attention(randn(3, 4), randn(5, 3), randn(5, 2), 1.0)
    with pytest.raises(ValueError, match="scale"):
        adaptive_span_attention(randn(3, 4), randn(5, 4), randn(5, 2), 1.0, scale=-1.0)


# ---------------------------------------------------------------- counting keys

@pytest.mark.parametrize("lq, lk, ramp", [(6, 6, 4.0), (4, 10, 2.5), (3, 3, 0.5)])
def test_keys_in_span_count_the_non_zero_mask_entries(lq, lk, ramp):
    g = torch.Generator().manual_seed(lq + lk)
    span = 8 * torch.rand(5, lq, generator=g, dtype=torch.float64)
    span[0, 0] = 2.0                                          # an integer z + R: the boundary key is out
    counts = keys_in_span(span, lk, ramp=ramp)
    assert counts.dtype == torch.int64
    assert torch.equal(counts, (span_mask(span, lk, ramp=ramp) > 0).sum(-1))


def test_keys_in_span_never_exceed_the_causal_count():
    counts = keys_in_span(torch.full((5,), 100.0), 8)
    assert counts.tolist() == [4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="only lk = 3 keys"):
        keys_in_span(torch.ones(5), 3)


# ---------------------------------------------------------------- the task

@pytest.mark.parametrize("batch, length, vocab, lags", [(5, 12, 4, (1, 3, 7)), (3, 6, 2, (2,)), (2, 9, 6, (8, 1))])
def test_lag_task_targets_by_brute_force(batch, length, vocab, lags):
    data = lag_task(batch, length, vocab=vocab, lags=lags, generator=torch.Generator().manual_seed(0))
    assert isinstance(data, LagBatch)
    assert data.tokens.shape == data.cues.shape == data.targets.shape == (batch, length)
    assert data.tokens.max() < vocab and data.cues.max() < len(lags)
    for b in range(batch):
        for i in range(length):
            lag = lags[data.cues[b, i]]
            want = data.tokens[b, i - lag].item() if i >= lag else IGNORE
            assert data.targets[b, i].item() == want


def test_lag_task_is_reproducible_and_uses_every_cue():
    a = lag_task(200, 16, generator=torch.Generator().manual_seed(1))
    b = lag_task(200, 16, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert set(a.cues.flatten().tolist()) == {0, 1, 2}


@pytest.mark.parametrize("kwargs, message", [
    (dict(lags=(1, 16)), "smaller than length"),
    (dict(lags=()), "non-empty"),
    (dict(lags=(0, 2)), "≥ 1"),
    (dict(vocab=1), "vocab"),
])
def test_lag_task_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lag_task(2, 16, **kwargs)


# ---------------------------------------------------------------- the model

def _batch(seed=0, batch=3, length=10):
    return lag_task(batch, length, lags=(1, 3, 6), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["full", "head", "dynamic"])
def test_span_model_shapes_and_causality(mode):
    model = SpanModel(vocab=8, cues=3, length=12, embed_dim=16, num_heads=2, mode=mode, max_span=8.0, ramp=2.0)
    data = _batch()
    logits, w, z = model(data.tokens, data.cues)
    assert logits.shape == (3, 10, 8) and w.shape == (3, 2, 10, 10)
    assert (w.triu(1) == 0).all(), "no weight on future tokens"
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 10))
    if mode == "full":
        assert z is None
    else:
        assert z.shape == (3, 2, 10) and (z >= 0).all() and (z <= 8).all()
        reach = span_mask(z, 10, ramp=2.0) > 0
        assert (w[~reach] == 0).all(), "no weight beyond the span and its ramp"


def test_head_spans_are_shared_by_all_tokens_and_dynamic_spans_are_not():
    data = _batch()
    head = SpanModel(length=12, mode="head", num_heads=2, embed_dim=16)
    _, _, z = head(data.tokens, data.cues)
    assert torch.equal(z, z[:1, :, :1].expand_as(z))
    dynamic = SpanModel(length=12, mode="dynamic", num_heads=2, embed_dim=16)
    with torch.no_grad():
        dynamic.span_proj.weight.normal_()
    _, _, z = dynamic(data.tokens, data.cues)
    assert z.std(-1).min() > 0


def test_the_span_penalty_reaches_the_span_parameters():
    data = _batch()
    for mode, name in (("head", "span_logit"), ("dynamic", "span_proj.bias")):
        model = SpanModel(length=12, mode=mode, embed_dim=16)
        span_loss(model, data, penalty=1.0).backward()
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and (grad > 0).all(), "a larger span must cost more"


def test_span_report_counts_keys_and_accuracy_by_cue():
    data = _batch(batch=6, length=12)
    model = SpanModel(length=12, mode="full", embed_dim=16)
    report = span_report(model, data)
    logits, _, _ = model(data.tokens, data.cues)
    for c in range(3):
        where = (data.targets != IGNORE) & (data.cues == c)
        right = (logits.argmax(-1) == data.targets)[where].float().mean()
        assert math.isclose(report.accuracy[c].item(), right.item(), rel_tol=1e-6)
        positions = torch.arange(12).expand(6, 12)[data.cues == c]          # keys: every token of the cue
        assert math.isclose(report.keys[c].item(), (positions + 1).float().mean().item(), rel_tol=1e-6)
    assert torch.isnan(report.spans).all()
    dynamic = SpanModel(length=12, mode="dynamic", embed_dim=16, num_heads=2)
    report = span_report(dynamic, data)
    _, _, z = dynamic(data.tokens, data.cues)
    keys = keys_in_span(z, 12, ramp=dynamic.ramp).sum(1)
    assert math.isclose(report.keys[2].item(), keys[data.cues == 2].float().mean().item(), rel_tol=1e-6)
    assert report.spans.shape == (3, 2)


def test_span_model_and_loss_reject_bad_input():
    with pytest.raises(ValueError, match="mode"):
        SpanModel(mode="sparse")
    with pytest.raises(ValueError, match="init_span"):
        SpanModel(init_span=1.5)
    model = SpanModel(length=8, embed_dim=16)
    data = _batch(length=10)
    with pytest.raises(ValueError, match="length 10"):
        model(data.tokens, data.cues)
    with pytest.raises(ValueError, match="one shape"):
        model(data.tokens[:, :5], data.cues[:, :6])
    with pytest.raises(TypeError, match="LagBatch"):
        span_loss(model, (data.tokens, data.cues, data.targets))
    with pytest.raises(ValueError, match="penalty"):
        span_loss(model, _batch(length=8), penalty=-1.0)
