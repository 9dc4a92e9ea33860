"""The find-one-item task, soft and hard retrievers, gradient estimators, windowed local-p (§3.1)."""
import math

import pytest
import torch
from support import randn

from attnbook.needle import (NeedleBatch, NeedleRetriever, accuracy, estimator_statistics, gradient_estimates,
                             gradient_variance, hard_reward, local_weights_dense, needle_batch,
                             soft_loss, windowed_local_attention)
from attnbook.rnn import LuongLocalAttention


def retriever(query, classes):
    model = NeedleRetriever(query.shape[-1], classes).double()
    with torch.no_grad():
        model.query.copy_(query)
    return model


# ---------------------------------------------------------------- the task

def test_each_sequence_marks_exactly_one_item_and_the_target_is_its_label():
    batch = needle_batch((3, 5), 7, dim=4, classes=3, signal=2.5, generator=torch.Generator().manual_seed(0))
    assert batch.items.shape == (3, 5, 7, 4) and batch.labels.shape == (3, 5, 7)
    assert batch.position.shape == batch.target.shape == (3, 5)
    marker = batch.items[..., 0]
    assert ((marker != 0).sum(-1) == 1).all()
    for idx in torch.cartesian_prod(torch.arange(3), torch.arange(5)).tolist():
        n = int(batch.position[tuple(idx)])
        assert marker[tuple(idx)][n] == 2.5
        assert batch.target[tuple(idx)] == batch.labels[tuple(idx)][n]
    assert batch.labels.min() >= 0 and batch.labels.max() <= 2


def test_batches_are_deterministic_and_positions_cover_the_sequence():
    one = needle_batch(400, 6, generator=torch.Generator().manual_seed(3))
    two = needle_batch(400, 6, generator=torch.Generator().manual_seed(3))
    other = needle_batch(400, 6, generator=torch.Generator().manual_seed(4))
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    assert not torch.equal(one.items, other.items)
    counts = torch.bincount(one.position, minlength=6)
    assert (counts > 400 / 6 / 2).all()  # every position is drawn, roughly uniformly
    assert one.items.dtype == torch.float32
    assert needle_batch(2, 3, dtype=torch.float64).items.dtype == torch.float64


@pytest.mark.parametrize("kwargs, error", [
    (dict(batch=0, length=4), ValueError), (dict(batch=2, length=0), ValueError),
    (dict(batch=(), length=4), TypeError), (dict(batch=2.0, length=4), TypeError),
    (dict(batch=2, length=4, dim=1), ValueError), (dict(batch=2, length=4, classes=1), ValueError),
    (dict(batch=2, length=4, signal=-1.0), ValueError), (dict(batch=2, length=4, generator=3), TypeError),
])
def test_bad_task_arguments_are_refused(kwargs, error):
    with pytest.raises(error):
        needle_batch(**kwargs)


# ---------------------------------------------------------------- the retrievers

def test_soft_read_is_the_expected_reward_computed_by_a_loop():
    batch = needle_batch(4, 9, dim=3, classes=5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model = retriever(randn(3, seed=2), 5)
    read, weights = model.soft(batch)
    assert read.shape == (4, 5) and weights.shape == (4, 9)
    for b in range(4):
        a = torch.softmax(batch.items[b] @ model.query.detach() / math.sqrt(3), -1)
        torch.testing.assert_close(weights[b], a)
        expected = sum(a[j] for j in range(9) if batch.labels[b, j] == batch.target[b])
        torch.testing.assert_close(read[b, batch.target[b]], expected)
    torch.testing.assert_close(soft_loss(model, batch),
                               -read.gather(-1, batch.target[:, None]).log().mean())


def test_hard_read_is_the_label_at_the_sampled_position():
    batch = needle_batch(6, 8, dim=4, classes=3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model = retriever(randn(4, seed=3), 3)
    read, weights, index, log_prob = model.hard(batch, generator=torch.Generator().manual_seed(0))
    assert read.shape == (6, 3) and index.shape == log_prob.shape == (6,)
    for b in range(6):
        j = int(index[b])
        assert read[b].argmax() == batch.labels[b, j] and read[b].sum() == 1
        torch.testing.assert_close(log_prob[b], weights[b, j].log())
        assert hard_reward(read, batch.target)[b] == float(batch.labels[b, j] == batch.target[b])


def test_a_query_on_the_marker_finds_every_needle_and_a_blind_one_does_not():
    batch = needle_batch(200, 10, dim=4, classes=4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    sharp = retriever(torch.tensor([40.0, 0, 0, 0], dtype=torch.float64), 4)
    for mode in ("soft", "greedy", "sample"):
        assert accuracy(sharp, batch, mode=mode, generator=torch.Generator().manual_seed(0)) == 1.0
    blind = retriever(torch.tensor([-40.0, 0, 0, 0], dtype=torch.float64), 4)
    assert accuracy(blind, batch, mode="sample") < 0.5
    with pytest.raises(ValueError, match="mode"):
        accuracy(sharp, batch, mode="argmax")


def test_retriever_refuses_batches_that_do_not_fit():
    model = NeedleRetriever(4, 3)
    with pytest.raises(ValueError, match="dim=4"):
        model.soft(needle_batch(2, 5, dim=5, classes=3))
    with pytest.raises(ValueError, match="classes=3"):
        model.soft(needle_batch(2, 5, dim=4, classes=6, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(TypeError, match="NeedleBatch"):
        model.soft(torch.zeros(2, 5, 4))


# ---------------------------------------------------------------- gradient estimators

def enumerated_gradient(query, items, labels, target):
    """∇_q Σ_j a_j R_j = Σ_j R_j a_j (x_j − Σ_i a_i x_i)/√d, by enumerating the positions."""
    d = items.shape[-1]
    a = torch.softmax(items @ query / math.sqrt(d), -1)
    mean_x = (a[:, None] * items).sum(0)
    return sum(float(labels[j] == target) * a[j] * (items[j] - mean_x) / math.sqrt(d)
               for j in range(items.shape[0]))


@pytest.mark.parametrize("baseline", [0.0, 0.6])
def test_reinforce_is_unbiased_for_the_enumerated_gradient(baseline):
    """Tiny case (L = 3, d = 2): the mean of many REINFORCE estimates is the exact gradient."""
    items = torch.tensor([[1.0, 0.5], [0.0, -1.0], [2.0, 0.3]], dtype=torch.float64)
    labels, target = torch.tensor([1, 0, 1]), torch.tensor(1)
    query = torch.tensor([0.3, -0.8], dtype=torch.float64)
    exact = enumerated_gradient(query, items, labels, target)
    n = 200_000
    batch = NeedleBatch(items.expand(n, 1, 3, 2), labels.expand(n, 1, 3), torch.zeros(n, 1, dtype=torch.long),
                        target.expand(n, 1))
    model = retriever(query, 2)
    estimates = gradient_estimates(model, batch, estimator="reinforce", baseline=baseline,
                                   generator=torch.Generator().manual_seed(7))
    assert estimates.shape == (n, 2)
    error = estimates.mean(0) - exact
    standard_error = estimates.std(0) / math.sqrt(n)
    assert (error.abs() < 4 * standard_error).all(), (error, standard_error)
    assert (exact.abs() > 50 * standard_error).all()  # precise enough to tell a wrong mean apart
    few = gradient_estimates(model, NeedleBatch(*(t[:5] for t in batch)), estimator="exact")
    torch.testing.assert_close(few, exact.expand(5, 2))  # the exact estimator has no noise


def test_exact_estimates_match_enumeration_on_non_square_draws():
    batch = needle_batch((3, 4), 6, dim=5, classes=3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    model = retriever(randn(5, seed=9), 3)
    got = gradient_estimates(model, batch, estimator="exact")
    for n in range(3):
        want = sum(enumerated_gradient(model.query.detach(), batch.items[n, b], batch.labels[n, b],
                                       batch.target[n, b]) for b in range(4)) / 4
        torch.testing.assert_close(got[n], want)
    assert model.query.grad is None  # the estimates leave the model's own gradient alone


def test_gradient_variance_is_the_trace_of_the_covariance():
    x = randn(50, 4, seed=1)
    torch.testing.assert_close(torch.tensor(gradient_variance(x), dtype=torch.float64),
                               torch.cov(x.T, correction=0).trace())
    assert gradient_variance(torch.ones(7, 3)) == 0.0
    with pytest.raises(ValueError, match="N ≥ 2"):
        gradient_variance(torch.ones(1, 3))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        gradient_variance(torch.ones(3))


def test_bad_estimator_arguments_are_refused():
    model = NeedleRetriever(4, 3)
    batch = needle_batch((2, 3), 5, dim=4, classes=3)
    with pytest.raises(ValueError, match="estimator"):
        gradient_estimates(model, batch, estimator="score")
    with pytest.raises(TypeError, match="baseline"):
        gradient_estimates(model, batch, estimator="reinforce", baseline="mean")
    with pytest.raises(ValueError, match=r"\(N, B, L, d\)"):
        gradient_estimates(model, needle_batch(3, 5, dim=4, classes=3), estimator="exact")


# ---------------------------------------------------------------- windowed local attention

@pytest.mark.parametrize("window", [1, 2, 4])
def test_windowed_local_p_equals_the_dense_luong_module(window):
    torch.manual_seed(0)
    attn = LuongLocalAttention(4, 4, window=window, score="dot").double()
    with torch.no_grad():
        attn.v_position.weight.mul_(8)  # spread the predicted positions, edges included
    q, k, v = randn(2, 5, 4, seed=1), randn(2, 11, 4, seed=2), randn(2, 11, 3, seed=3)
    context, dense, p = attn(q, k, v)
    out, weights, positions = windowed_local_attention(q, k, v, p, window, scale=1.0)
    assert weights.shape == positions.shape == (2, 5, 2 * window + 1)
    torch.testing.assert_close(local_weights_dense(weights, positions, 11), dense)
    torch.testing.assert_close(out, context)
    # the Gaussian carries the same gradient to the position network
    probe = randn(2, 5, 3, seed=4)
    mine = torch.autograd.grad((out * probe).sum(), list(attn.parameters()))
    theirs = torch.autograd.grad((attn(q, k, v)[0] * probe).sum(), list(attn.parameters()))
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b)


def test_windowed_local_m_equals_the_module_with_given_positions():
    attn = LuongLocalAttention(4, 4, window=2, score="dot").double()
    q, k, v = randn(2, 3, 4, seed=5), randn(2, 7, 4, seed=6), randn(2, 7, 2, seed=7)
    p = torch.tensor([[0.0, 3.5, 6.9], [-1.0, 2.0, 9.5]], dtype=torch.float64)
    context, dense, _ = attn(q, k, v, positions=p)
    out, weights, positions = windowed_local_attention(q, k, v, p, 2, gaussian=False, scale=1.0)
    torch.testing.assert_close(local_weights_dense(weights, positions, 7), dense)
    torch.testing.assert_close(out, context)
    assert (weights[1, 2] == 0).all() and (out[1, 2] == 0).all()  # window entirely past the end


def test_bad_local_arguments_are_refused():
    q, k, v = randn(2, 3, 4), randn(2, 7, 4), randn(2, 7, 2)
    with pytest.raises(ValueError, match=r"centers has shape \(2, 4\)"):
        windowed_local_attention(q, k, v, torch.zeros(2, 4, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="window"):
        windowed_local_attention(q, k, v, torch.zeros(2, 3, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="finite"):
        windowed_local_attention(q, k, v, torch.full((2, 3), math.nan, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="positions"):
        local_weights_dense(torch.ones(2, 5), torch.zeros(2, 4, dtype=torch.long), 7)


# ---------------------------------------------------------------- the exercise check

def test_check_reinforce_loss_accepts_the_library_and_names_each_mistake(capsys):
    from attnbook.exercises import check_reinforce_loss
    from attnbook.hard import reinforce_loss

    assert check_reinforce_loss(reinforce_loss)
    mistakes = {
        "sign is flipped": lambda lp, r, b: ((r - b) * lp).mean(),
        "baseline is not subtracted": lambda lp, r, b: -(r * lp).mean(),
        "is a sum": lambda lp, r, b: -((r - b) * lp).sum(),
        "flows into the reward": lambda lp, r, b: -((r - b) * lp).mean(),
        "no gradient": lambda lp, r, b: -((r.detach() - b) * lp.detach()).mean(),
        "expected shape ()": lambda lp, r, b: -((r.detach() - b) * lp),
        "raised ZeroDivisionError": lambda lp, r, b: 1 / 0,
    }
    for message, fn in mistakes.items():
        capsys.readouterr()
        assert not check_reinforce_loss(fn)
        assert message in capsys.readouterr().out


# ---------------------------------------------------------------- enumerated statistics

def test_estimator_statistics_match_a_loop_over_sequences_and_positions():
    batch = needle_batch(5, 6, dim=3, classes=4, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    model = retriever(randn(3, seed=12), 4)
    b = 0.4
    stats = estimator_statistics(model, batch, baseline=b)
    exact, second, positive, negative, expected = [], 0.0, torch.zeros(3, dtype=torch.float64), 0.0, 0.0
    for n in range(5):
        x, q = batch.items[n], model.query.detach()
        a = torch.softmax(x @ q / math.sqrt(3), -1)
        exact.append(enumerated_gradient(q, x, batch.labels[n], batch.target[n]))
        for j in range(6):
            r = float(batch.labels[n, j] == batch.target[n])
            g = (r - b) * (x[j] - (a[:, None] * x).sum(0)) / math.sqrt(3)
            second += a[j].item() * g.pow(2).sum().item() / 5
            positive = positive + a[j] * (g > 0).double() / 5
            negative = negative + a[j] * (g < 0).double() / 5
            expected += a[j].item() * r / 5
    exact = torch.stack(exact)
    mean = exact.mean(0)
    torch.testing.assert_close(stats.mean, mean)
    assert math.isclose(stats.exact_variance, (exact - mean).pow(2).sum(-1).mean().item(), rel_tol=1e-9)
    assert math.isclose(stats.reinforce_variance, second - mean.pow(2).sum().item(), rel_tol=1e-9)
    torch.testing.assert_close(stats.exact_positive, (exact > 0).double().mean(0))
    torch.testing.assert_close(stats.reinforce_positive, positive)
    torch.testing.assert_close(stats.reinforce_negative, negative)
    torch.testing.assert_close(stats.exact_negative, (exact < 0).double().mean(0))
    assert math.isclose(stats.expected_reward, expected, rel_tol=1e-9)
    assert (stats.reinforce_positive + stats.reinforce_negative <= 1 + 1e-12).all()


def test_estimator_statistics_agree_with_sampled_estimates():
    batch = needle_batch(4000, 5, dim=3, classes=2, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    model = retriever(randn(3, seed=14), 2)
    stats = estimator_statistics(model, batch, baseline=0.3)
    draws = NeedleBatch(*(t.unsqueeze(1) for t in batch))  # N = 4000 draws of B = 1 sequence
    sampled = gradient_estimates(model, draws, estimator="reinforce", baseline=0.3,
                                 generator=torch.Generator().manual_seed(1))
    assert abs(gradient_variance(sampled) / stats.reinforce_variance - 1) < 0.1
    exact = gradient_estimates(model, draws, estimator="exact")
    assert math.isclose(gradient_variance(exact), stats.exact_variance, rel_tol=1e-9)
    with pytest.raises(ValueError, match=r"\(N, L, d\)"):
        estimator_statistics(model, draws)
    with pytest.raises(TypeError, match="baseline"):
        estimator_statistics(model, batch, baseline=None)
