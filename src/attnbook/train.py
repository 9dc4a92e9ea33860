"""A tiny training loop shared by every chapter that trains a model (Parts 1, 3 and 4).

The models of the book are small and train in seconds on synthetic data. What they share is
kept here, so that a notebook shows only what is specific to its experiment: the model, the
data and the loss.
"""
import random

import numpy as np
import torch

from . import _checks


def seed_everything(seed):
    """Seed Python's, NumPy's and torch's generators with ``seed``; returns a torch.Generator
    seeded the same way, for data that should not depend on the model's draws."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def fit(model, batch_fn, loss_fn, *, steps, lr=3e-3, clip=1.0, weight_decay=0.0, log_every=0):
    """Train ``model`` with Adam(W) for ``steps`` steps; returns the list of losses.

    Each step draws ``batch = batch_fn(step)``, computes ``loss = loss_fn(model, batch)`` (a
    scalar tensor), clips the gradient norm to ``clip`` (None: no clipping) and takes one
    AdamW step with learning rate ``lr``, decayed by a cosine to lr/10 at the last step.
    ``log_every`` > 0 prints the mean loss of each window of that many steps.
    Cost: ``steps`` forward and backward passes. Used from §1.2 on.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, fn in (("batch_fn", batch_fn), ("loss_fn", loss_fn)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    _checks.positive(steps, "steps", integer=True)
    _checks.positive(lr, "lr")
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=lr / 10)
    model.train()
    losses = []
    for step in range(steps):
        loss = loss_fn(model, batch_fn(step))
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1:>5}: loss {np.mean(losses[-log_every:]):.4f}")
    model.eval()
    return losses
