"""Tests of attnbook.scaling: the measurements behind the 1/√d_k scale (§2.2)."""
import math

import pytest
import torch

from attnbook import scaling


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- random_logits: against a brute-force loop over the same draws ---------------------------

def test_random_logits_match_a_loop_of_dot_products():
    d, n_keys, n = 12, 5, 3  # non-square: n_keys != n != d
    z = scaling.random_logits(d, n_keys, n, gen(3))
    g = gen(3)
    q = torch.randn(n, 1, d, generator=g)
    k = torch.randn(n, n_keys, d, generator=g)
    qs, ks = q.double().tolist(), k.double().tolist()
    want = torch.tensor([[sum(qs[s][0][i] * ks[s][j][i] for i in range(d)) for j in range(n_keys)]
                         for s in range(n)], dtype=torch.float64)
    assert z.shape == (n, n_keys) and z.dtype == torch.float64
    torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scaling.random_logits(d, n_keys, n, gen(3), scaled=True),
                               want / math.sqrt(d), rtol=1e-5, atol=1e-5)


# --- logit_variance: Var(q·k) = d_k, Var(q·k/√d_k) = 1 ---------------------------------------

@pytest.mark.parametrize("d", [4, 64, 1024])
def test_unscaled_variance_is_d_and_scaled_variance_is_one(d):
    # relative standard error of the sample variance is about sqrt(2/n) ≈ 2.2 % for n = 4096
    unscaled = scaling.logit_variance(d, 4096, gen(d))
    scaled = scaling.logit_variance(d, 4096, gen(d), scaled=True)
    assert unscaled == pytest.approx(d, rel=0.12)
    assert scaled == pytest.approx(1.0, rel=0.12)  # a scale of 1/d or 1 would miss by far


def test_variance_uses_the_global_generator_when_none_is_given():
    torch.manual_seed(5)
    a = scaling.logit_variance(16, 256)
    torch.manual_seed(5)
    assert scaling.logit_variance(16, 256) == a


# --- softmax_saturation -------------------------------------------------------------------

def test_saturation_agrees_with_a_direct_softmax():
    d, n_keys, n = 32, 10, 7
    got = scaling.softmax_saturation(d, n_keys, n, gen(1))
    a = torch.softmax(scaling.random_logits(d, n_keys, n, gen(1)), dim=-1)
    assert got["max_weight"] == pytest.approx(float(a.max(-1).values.mean()), rel=1e-9)
    want_h = float(-(a * a.log()).sum(-1).mean())
    assert got["entropy"] == pytest.approx(want_h, rel=1e-9)


def test_saturation_grows_with_d_unscaled_and_stays_flat_scaled():
    dims = [4, 64, 1024]
    unscaled = [scaling.softmax_saturation(d, 64, 128, gen())["max_weight"] for d in dims]
    scaled = [scaling.softmax_saturation(d, 64, 128, gen(), scaled=True)["max_weight"]
              for d in dims]
    assert unscaled[0] < unscaled[1] < unscaled[2]
    assert unscaled[2] > 0.8  # nearly one-hot
    assert max(scaled) < 0.2 and max(scaled) - min(scaled) < 0.05  # 1/64 ≈ 0.016 is uniform
    ent = scaling.softmax_saturation(1024, 64, 128, gen())["entropy"]
    ent_scaled = scaling.softmax_saturation(1024, 64, 128, gen(), scaled=True)["entropy"]
    assert ent < 0.5 < 3.0 < ent_scaled <= math.log(64)


# --- gradients ------------------------------------------------------------------------------

def test_softmax_gradient_matches_autograd():
    s = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, 4, 6, dtype=torch.float64)
    (want,) = torch.autograd.grad((torch.softmax(s, -1) * u).sum(), s)
    torch.testing.assert_close(scaling.softmax_gradient(s.detach(), u), want)


def test_softmax_gradient_vanishes_when_saturated():
    s = torch.tensor([[0.0, 60.0, 1.0, -3.0]], dtype=torch.float64)
    u = torch.randn(1, 4, dtype=torch.float64)
    assert scaling.softmax_gradient(s, u).abs().max() < 1e-20
    assert scaling.softmax_gradient(s / 60, u).abs().max() > 1e-3


def test_gradient_norm_matches_the_closed_form():
    d, n_keys, n = 16, 9, 5
    g = gen(2)
    q = torch.randn(n, 1, d, generator=g)
    k = torch.randn(n, n_keys, d, generator=g)
    u = torch.randn(n, n_keys, generator=g, dtype=torch.float64)
    s = (q @ k.transpose(-2, -1)).squeeze(-2).double() / math.sqrt(d)
    grad_s = scaling.softmax_gradient(s, u)
    norms = grad_s.norm(dim=-1)
    got = scaling.score_gradient_norm(d, n_keys, n, gen(2), scaled=True)
    assert got["mean"] == pytest.approx(float(norms.mean()), rel=1e-5)
    assert got["median"] == pytest.approx(float(norms.median()), rel=1e-5)
    # the query gradient: ∂L/∂q = (1/√d) Σ_j (∂L/∂s_j) k_j
    grad_q = (grad_s.unsqueeze(-1) * k.double()).sum(1) / math.sqrt(d)
    got_q = scaling.score_gradient_norm(d, n_keys, n, gen(2), scaled=True, wrt="query")
    assert got_q["mean"] == pytest.approx(float(grad_q.norm(dim=-1).mean()), rel=1e-5)


def test_gradient_shrinks_with_d_unscaled_and_not_scaled():
    def median(d, scaled):
        return scaling.score_gradient_norm(d, 64, 128, gen(), scaled=scaled)["median"]

    unscaled = [median(d, False) for d in (16, 256, 1024)]
    scaled = [median(d, True) for d in (16, 256, 1024)]
    assert unscaled[0] > unscaled[1] > unscaled[2]
    assert unscaled[2] < 0.01 * scaled[2]
    assert max(scaled) < 1.5 * min(scaled)


# --- the study ------------------------------------------------------------------------------

def test_study_is_deterministic_and_consistent():
    dims = (4, 64)
    a = scaling.scaling_study(dims, n_keys=16, n_samples=32, seed=7, variance_samples=256)
    b = scaling.scaling_study(list(dims), n_keys=16, n_samples=32, seed=7, variance_samples=256)
    c = scaling.scaling_study(dims, n_keys=16, n_samples=32, seed=8, variance_samples=256)
    assert a == b and a != c
    assert a["d_k"] == [4, 64]
    for name in ("variance", "max_weight", "entropy", "grad_mean", "grad_median"):
        for tag in ("unscaled", "scaled"):
            assert len(a[f"{name}_{tag}"]) == 2
    # same seed -> same q and k, so the scaled variance is exactly the unscaled one over d
    for d, v, vs in zip(a["d_k"], a["variance_unscaled"], a["variance_scaled"]):
        assert vs == pytest.approx(v / d, rel=1e-5)
    sat = scaling.softmax_saturation(64, 16, 32, gen(7))
    assert a["max_weight_unscaled"][1] == sat["max_weight"]


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, name", [
    (lambda: scaling.logit_variance(0), ValueError, "d_k"),
    (lambda: scaling.logit_variance(-4), ValueError, "d_k"),
    (lambda: scaling.logit_variance(4.0), TypeError, "d_k"),
    (lambda: scaling.logit_variance(4, 0), ValueError, "n_samples"),
    (lambda: scaling.logit_variance(4, 1), ValueError, "n_samples"),
    (lambda: scaling.logit_variance(4, "10"), TypeError, "n_samples"),
    (lambda: scaling.logit_variance(4, 10, generator=0), TypeError, "generator"),
    (lambda: scaling.logit_variance(4, 10, scaled="yes"), TypeError, "scaled"),
    (lambda: scaling.softmax_saturation(4, 0), ValueError, "n_keys"),
    (lambda: scaling.softmax_saturation(True), TypeError, "d_k"),
    (lambda: scaling.score_gradient_norm(4, n_samples=-1), ValueError, "n_samples"),
    (lambda: scaling.score_gradient_norm(4, wrt="keys"), ValueError, "wrt"),
    (lambda: scaling.softmax_gradient([1.0], torch.ones(1)), TypeError, "scores"),
    (lambda: scaling.softmax_gradient(torch.ones(2, 3), torch.ones(3, 2)), ValueError, "upstream"),
    (lambda: scaling.scaling_study(64), TypeError, "dims"),
    (lambda: scaling.scaling_study([]), ValueError, "dims"),
    (lambda: scaling.scaling_study([4, 0]), ValueError, "dims"),
    (lambda: scaling.scaling_study([4], seed=1.5), TypeError, "seed"),
    (lambda: scaling.scaling_study([4], n_samples=0), ValueError, "n_samples"),
])
def test_bad_input_names_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()
