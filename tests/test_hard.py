"""Hard attention with REINFORCE and hybrid coarse-to-fine attention (§3.1)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from support import DEVICES, DTYPES, randn, tol

from attnbook.attention import attention
from attnbook.hard import (MovingAverageBaseline, hybrid_attention, hard_attention, reinforce_loss,
                           sample_positions)

FAST = settings(max_examples=20, deadline=None)


def sdpa(q, k, v, mask=None, scale=None):
    """The reference: torch's fused attention (a fully masked row is zeroed by hand)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if mask is not None:
        out = out.masked_fill(~mask.expand(*out.shape[:-1], k.shape[-2]).any(-1, keepdim=True), 0)
    return out


# ---------------------------------------------------------------- sampling

def test_sample_frequencies_match_the_weights():
    weights = torch.softmax(randn(2, 3, 5, seed=4), -1)
    weights[0, 1, 2] = 0
    weights[1] *= 3  # unnormalised rows sample the same distribution
    n = 10000
    indices, log_probs = sample_positions(weights, n, generator=torch.Generator().manual_seed(0))
    assert indices.shape == log_probs.shape == (2, 3, n) and indices.dtype == torch.int64
    probs = weights / weights.sum(-1, keepdim=True)
    for row, p in zip(indices.reshape(-1, n), probs.reshape(-1, 5)):
        counts = torch.bincount(row, minlength=5).double()
        assert (counts[p == 0] == 0).all()
        expected = n * p[p > 0]
        chi2 = ((counts[p > 0] - expected) ** 2 / expected).sum()
        assert chi2 < 25  # far above the 99.9% point of χ² with ≤ 4 degrees of freedom (18.5)
    torch.testing.assert_close(log_probs, probs.log().gather(-1, indices))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_hot_weights_always_return_that_key(device, dtype):
    lq, lk = 4, 6
    keep = torch.randint(0, lk, (2, lq), generator=torch.Generator().manual_seed(3)).to(device)
    mask = F.one_hot(keep, lk).bool()
    q, k, v = (randn(2, lq, 3, seed=1, dtype=dtype, device=device), randn(2, lk, 3, seed=2, dtype=dtype,
               device=device), randn(2, lk, 5, seed=3, dtype=dtype, device=device))
    output, weights, indices, log_prob = hard_attention(q, k, v, mask, k=7)
    assert (indices == keep.unsqueeze(-1)).all()
    assert (log_prob == 0).all() and torch.equal(weights, mask.to(dtype))
    check = v.gather(-2, keep.unsqueeze(-1).expand(2, lq, 5))
    torch.testing.assert_close(output, check, **tol(dtype))
    idx, lp = sample_positions(mask.to(dtype), 3)
    assert (idx == keep.unsqueeze(-1)).all() and (lp == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_attention_reads_the_sampled_values_of_the_soft_distribution(device, dtype):
    q = randn(2, 3, 4, 8, seed=1, dtype=dtype, device=device)  # (B, h, Lq, d)
    k = randn(2, 3, 6, 8, seed=2, dtype=dtype, device=device)
    v = randn(2, 3, 6, 5, seed=3, dtype=dtype, device=device)
    mask = (torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(4)) > 0.3).to(device)
    mask[0, 0, 1] = False
    output, weights, indices, log_prob = hard_attention(q, k, v, mask, k=3, scale=0.3)
    assert output.shape == (2, 3, 4, 5) and indices.shape == (2, 3, 4, 3) and log_prob.shape == (2, 3, 4)
    torch.testing.assert_close(weights @ v, sdpa(q, k, v, mask, scale=0.3), **tol(dtype))
    for b in range(2):
        for h in range(3):
            for i in range(4):
                row = indices[b, h, i].tolist()
                if not mask[b, 0, i].any():
                    assert row == [-1] * 3 and log_prob[b, h, i] == 0 and (output[b, h, i] == 0).all()
                    continue
                want = sum(v[b, h, j] for j in row) / 3
                torch.testing.assert_close(output[b, h, i], want, **tol(dtype))
                lp = sum(math.log(weights[b, h, i, j].item()) for j in row)
                assert abs(log_prob[b, h, i].item() - lp) < 1e-4


def test_hard_attention_is_unbiased_for_soft_attention():
    q, k, v = randn(2, 3, 4, seed=1), randn(2, 5, 4, seed=2), randn(2, 5, 2, seed=3)
    n = 20000
    g = torch.Generator().manual_seed(1)
    output, weights, indices, _ = hard_attention(q, k, v, k=n, generator=g)
    soft = attention(q, k, v)[0]
    spread = (v.unsqueeze(1) - soft.unsqueeze(-2)).pow(2).mul(weights.unsqueeze(-1)).sum(-2).sqrt()
    assert ((output - soft).abs() < 5 * spread / math.sqrt(n)).all()


def test_fully_masked_query_samples_nothing():
    q, k, v = randn(1, 3, 4, seed=1, grad=True), randn(1, 5, 4, seed=2), randn(1, 5, 2, seed=3)
    mask = torch.ones(1, 3, 5, dtype=torch.bool)
    mask[0, 1] = False
    output, weights, indices, log_prob = hard_attention(q, k, v, mask, k=2)
    assert (indices[0, 1] == -1).all() and (output[0, 1] == 0).all() and log_prob[0, 1] == 0
    reinforce_loss(log_prob, torch.ones_like(log_prob)).backward()
    assert torch.isfinite(q.grad).all()


def test_logits_of_1e4_stay_finite():
    q, k, v = randn(2, 3, 4, seed=1) * 100, randn(2, 5, 4, seed=2) * 100, randn(2, 5, 2, seed=3)
    for result in (hard_attention(q, k, v, scale=1.0), hybrid_attention(q, k, v, block=2, scale=1.0)):
        assert all(torch.isfinite(t.double()).all() for t in result)


# ---------------------------------------------------------------- REINFORCE

def reinforce_problem(n, seed):
    """A query attends to 4 keys; the reward is 10 − ‖output − target‖².

    Returns the exact ∇E[R] with respect to (query, keys), flattened, computed by enumerating
    the keys, and a function giving n per-sample REINFORCE estimates of it (n, 3 + 12) and the
    rewards: each sample has its own copy of the query and keys, so its gradient is visible.
    """
    d, lk = 3, 4
    q, k = randn(1, 1, d, seed=1, grad=True), randn(1, lk, d, seed=2, grad=True)
    v, target = randn(1, lk, 2, seed=3), randn(2, seed=4)

    def reward(output):
        return 10 - (output - target).pow(2).sum(-1)

    weights = torch.softmax((q @ k.mT) / math.sqrt(d), -1)[0, 0]
    expected = (weights * reward(v[0])).sum()  # E[R] = Σ_j a_j R(v_j)
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(expected, (q, k))])

    def estimate(baseline):
        qs = q.detach().repeat(n, 1, 1).requires_grad_(True)
        ks = k.detach().repeat(n, 1, 1).requires_grad_(True)
        out, _, _, log_prob = hard_attention(qs, ks, v.expand(n, lk, 2),
                                             generator=torch.Generator().manual_seed(seed))
        r = reward(out)
        reinforce_loss(log_prob, r, baseline).backward()
        return -n * torch.cat([qs.grad.reshape(n, -1), ks.grad.reshape(n, -1)], 1), r
    return exact, estimate


def close_in_mean(samples, exact):
    """The mean of the samples lies within 4 standard errors of ``exact``, everywhere."""
    stderr = samples.std(0) / math.sqrt(samples.shape[0])
    return ((samples.mean(0) - exact).abs() < 4 * stderr).all()


def test_reinforce_gradient_approaches_the_exact_gradient_and_the_baseline_cuts_variance():
    n = 20000
    exact, estimate = reinforce_problem(n, seed=0)
    plain, reward = estimate(None)
    assert exact.abs().max() > 10 * plain.std(0).max() / math.sqrt(n)  # +g and −g are told apart
    assert close_in_mean(plain, exact)

    baseline = MovingAverageBaseline(0.9)
    baseline.update(reward[: n // 10])  # from earlier samples, not those it corrects
    assert abs(baseline.value - reward.mean().item()) < 0.5
    _, estimate_next = reinforce_problem(n, seed=1)
    with_b, _ = estimate_next(baseline.value)
    without_b, _ = estimate_next(None)
    assert with_b.var(0).sum() < 0.2 * without_b.var(0).sum()
    assert close_in_mean(with_b, exact) and close_in_mean(without_b, exact)


def test_reinforce_loss_is_the_score_function_surrogate():
    log_prob = randn(4, 3, seed=1, grad=True)
    reward = randn(4, 1, seed=2, grad=True)
    baseline = randn(1, 1, seed=3, grad=True)
    loss = reinforce_loss(log_prob, reward, baseline)
    torch.testing.assert_close(loss, -((reward - baseline) * log_prob).mean())
    loss.backward()
    assert reward.grad is None and baseline.grad is None
    torch.testing.assert_close(log_prob.grad, -(reward - baseline).detach().expand(4, 3) / 12)
    torch.testing.assert_close(reinforce_loss(log_prob, reward, 0.5),
                               -((reward - 0.5) * log_prob).mean())


def test_moving_average_baseline_follows_its_formula():
    rewards = [randn(8, seed=s) + s for s in range(5)]
    baseline = MovingAverageBaseline(0.7)
    assert baseline.value == 0.0
    b = None
    for r in rewards:
        b = r.mean().item() if b is None else 0.7 * b + 0.3 * r.mean().item()
        assert math.isclose(baseline.update(r), b) and math.isclose(baseline.value, b)
    assert math.isclose(MovingAverageBaseline(0).update(3.0), 3.0)


# ---------------------------------------------------------------- hybrid attention

def block_mask(chosen, block, lk):
    """(..., Lq, Lk) bool: True on the keys of the chosen blocks."""
    blocks = torch.arange(lk, device=chosen.device) // block
    return (blocks == chosen.unsqueeze(-1)).any(-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
def test_hybrid_with_every_block_is_exact_attention(device, dtype, masked):
    q = randn(2, 3, 4, 8, seed=1, dtype=dtype, device=device)
    k = randn(2, 3, 7, 8, seed=2, dtype=dtype, device=device)
    v = randn(2, 3, 7, 5, seed=3, dtype=dtype, device=device)
    mask = None
    if masked:
        mask = (torch.rand(2, 1, 4, 7, generator=torch.Generator().manual_seed(4)) > 0.4).to(device)
        mask[1, 0, 2] = False
    output, weights, chosen = hybrid_attention(q, k, v, mask, block=3, top=3)
    assert output.shape == (2, 3, 4, 5) and weights.shape == (2, 3, 4, 7)
    assert chosen.shape == (2, 3, 4, 3)
    torch.testing.assert_close(output, sdpa(q, k, v, mask), **tol(dtype))
    torch.testing.assert_close(weights, attention(q, k, v, mask)[1], **tol(dtype))
    capped = hybrid_attention(q, k, v, mask, block=3, top=10)
    assert capped[2].shape == (2, 3, 4, 3)
    torch.testing.assert_close(capped[0], output)


def test_bfloat16_runs_close_to_float64():
    q, k, v = randn(2, 4, 8, seed=1), randn(2, 7, 8, seed=2), randn(2, 7, 5, seed=3)
    low = [t.bfloat16() for t in (q, k, v)]
    out, weights, _ = hybrid_attention(*low, block=3, top=3)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), attention(q, k, v)[0], **tol(torch.bfloat16))
    hard, soft, _, _ = hard_attention(*low, k=2)
    assert hard.dtype == soft.dtype == torch.bfloat16
    torch.testing.assert_close(soft.double(), attention(q, k, v)[1], **tol(torch.bfloat16))


def loop_coarse(q, k, block, scale, allowed):
    """Block scores q·mean(block keys)·scale by loops, −inf for a block with no allowed key."""
    lq, lk = q.shape[0], k.shape[0]
    starts = range(0, lk, block)
    scores = torch.full((lq, len(starts)), float("-inf"), dtype=torch.float64)
    for i in range(lq):
        for b, s in enumerate(starts):
            keys = k[s:s + block].double()
            if allowed[i, s:s + block].any():
                scores[i, b] = q[i].double() @ keys.mean(0) * scale
    return scores


@FAST
@given(st.integers(1, 4), st.integers(1, 11), st.integers(1, 5), st.integers(1, 3),
       st.sampled_from(DTYPES), st.booleans(), st.integers(0, 2**31))
def test_hybrid_attends_exactly_inside_the_best_blocks(lq, lk, block, top, dtype, masked, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, lq, 4, generator=g, dtype=dtype)
    k = torch.randn(2, lk, 4, generator=g, dtype=dtype)
    v = torch.randn(2, lk, 3, generator=g, dtype=dtype)
    mask = torch.rand(2, lq, lk, generator=g) > 0.3 if masked else None
    output, weights, chosen = hybrid_attention(q, k, v, mask, block=block, top=top)
    blocks = -(-lk // block)
    assert chosen.shape == (2, lq, min(top, blocks))
    allowed = torch.ones(2, lq, lk, dtype=torch.bool) if mask is None else mask
    for b in range(2):
        coarse = loop_coarse(q[b], k[b], block, 0.5, allowed[b])
        best = coarse.topk(chosen.shape[-1], -1).values
        got = coarse.gather(-1, chosen[b])
        assert torch.equal(got.isinf(), best.isinf())
        torch.testing.assert_close(got[~got.isinf()], best[~best.isinf()], **tol(dtype))
    inside = block_mask(chosen, block, lk) & allowed
    assert (weights[~inside] == 0).all()
    torch.testing.assert_close(weights.sum(-1), inside.any(-1).to(dtype))
    torch.testing.assert_close(output, sdpa(q, k, v, inside), **tol(dtype))
    torch.testing.assert_close(weights @ v, output, **tol(dtype))


def test_hybrid_gradients_are_finite():
    q, k = randn(2, 5, 4, seed=1, grad=True), randn(2, 9, 4, seed=2, grad=True)
    v = randn(2, 9, 3, seed=3, grad=True)
    mask = torch.ones(2, 5, 9, dtype=torch.bool)
    mask[0, 2] = False
    output, _, _ = hybrid_attention(q, k, v, mask, block=4, top=2)
    assert (output[0, 2] == 0).all()
    (output * randn(*output.shape, seed=5)).sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


# ---------------------------------------------------------------- bad input

def test_bad_input_names_the_argument():
    q, k, v = randn(2, 3, 4, seed=1), randn(2, 5, 4, seed=2), randn(2, 5, 2, seed=3)
    w = torch.softmax(randn(3, 5, seed=4), -1)
    cases = [
        (ValueError, "k", lambda: sample_positions(w, 0)),
        (TypeError, "k", lambda: sample_positions(w, 1.5)),
        (ValueError, "weights", lambda: sample_positions(-w, 1)),
        (ValueError, "weights", lambda: sample_positions(w * math.nan, 1)),
        (ValueError, "weights", lambda: sample_positions(w[:, :0], 1)),
        (TypeError, "weights", lambda: sample_positions(w.tolist(), 1)),
        (ValueError, "key", lambda: hard_attention(q, k[..., :3], v)),
        (ValueError, "value", lambda: hard_attention(q, k, v[:, :4])),
        (ValueError, "mask", lambda: hard_attention(q, k, v, torch.ones(3, 6, dtype=torch.bool))),
        (ValueError, "scale", lambda: hard_attention(q, k, v, scale=0)),
        (ValueError, "k", lambda: hard_attention(q, k, v, k=0)),
        (ValueError, "reward", lambda: reinforce_loss(w[0], w)),
        (TypeError, "reward", lambda: reinforce_loss(w, 1.0)),
        (ValueError, "baseline", lambda: reinforce_loss(w, w, w[:, :2])),
        (TypeError, "baseline", lambda: reinforce_loss(w, w, "mean")),
        (ValueError, "momentum", lambda: MovingAverageBaseline(1.0)),
        (ValueError, "momentum", lambda: MovingAverageBaseline(-0.1)),
        (TypeError, "momentum", lambda: MovingAverageBaseline("0.9")),
        (ValueError, "reward", lambda: MovingAverageBaseline().update(torch.tensor([math.inf]))),
        (ValueError, "block", lambda: hybrid_attention(q, k, v, block=0)),
        (TypeError, "block", lambda: hybrid_attention(q, k, v, block=2.0)),
        (ValueError, "top", lambda: hybrid_attention(q, k, v, block=2, top=0)),
        (ValueError, "scale", lambda: hybrid_attention(q, k, v, block=2, scale=math.inf)),
        (TypeError, "mask", lambda: hybrid_attention(q, k, v, torch.zeros(3, 5), block=2)),
        (ValueError, "mask",
         lambda: hybrid_attention(q, k, v, torch.ones(4, 5, dtype=torch.bool), block=2)),
        (ValueError, "key", lambda: hybrid_attention(q, k[:, :0], v[:, :0], block=2)),
        (ValueError, "query", lambda: hybrid_attention(q[:1], k, v, block=2)),
        (TypeError, "key", lambda: hybrid_attention(q, k.float(), v, block=2)),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()
