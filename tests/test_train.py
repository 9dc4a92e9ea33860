import pytest
import torch

from attnbook.train import fit, seed_everything


def test_seed_everything_repeats_draws():
    g = seed_everything(3)
    a, b = torch.rand(3), torch.rand(3, generator=g)
    g = seed_everything(3)
    assert torch.equal(a, torch.rand(3)) and torch.equal(b, torch.rand(3, generator=g))


def test_fit_solves_least_squares_and_is_deterministic():
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3

    def run():
        seed_everything(0)
        model = torch.nn.Linear(3, 1)
        losses = fit(model, lambda step: (x, y), lambda m, b: ((m(b[0]).squeeze(-1) - b[1]) ** 2).mean(),
                     steps=300, lr=0.05)
        return model, losses

    model, losses = run()
    assert losses[-1] < 1e-3 * losses[0]
    torch.testing.assert_close(model.weight.detach().squeeze(), torch.tensor([1.0, -2.0, 0.5]), atol=0.02, rtol=0)
    assert not model.training
    assert run()[1] == losses


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=2, lr=-1.0), ValueError, "lr"),
    (dict(steps=2, loss_fn=lambda m, b: m(b).sum(-1)), ValueError, "scalar"),
    (dict(steps=2, batch_fn=3), TypeError, "batch_fn"),
])
def test_fit_rejects_bad_arguments(kwargs, error, words):
    model = torch.nn.Linear(2, 1)
    args = dict(batch_fn=lambda s: torch.ones(4, 2), loss_fn=lambda m, b: m(b).mean())
    args.update(kwargs)
    with pytest.raises(error, match=words):
        fit(model, **args)


def test_fit_stops_on_a_nan_loss():
    with pytest.raises(FloatingPointError, match="step 0"):
        fit(torch.nn.Linear(2, 1), lambda s: None, lambda m, b: torch.tensor(float("nan")), steps=3)
