"""Argument checks shared by every kernel: clear errors instead of NaNs or silent broadcasts."""
import math
import numbers

import torch


def tensor(x, name, *, min_dim=1, floating=True):
    """Return ``x`` if it is a tensor of at least ``min_dim`` dimensions, else raise.

    A ``TypeError`` names the argument when it is not a tensor or not floating point,
    a ``ValueError`` when it has too few dimensions.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}"
        )
    return x


def positive(value, name, *, integer=False):
    """Return ``value`` if it is a finite number > 0 (an int when ``integer``), else raise."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def same_kind(tensors):
    """Raise unless every tensor in the dict ``{name: tensor}`` has one dtype and device."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def mask_for(mask, scores_shape, name="mask", dtype=None):
    """Check that ``mask`` may be applied to scores of ``scores_shape``; return it.

    A mask is boolean (True = may attend) or floating (added to the scores). It must
    broadcast to the scores without enlarging them: a mask that would change the shape
    of the scores is an error, not a silent broadcast. A float mask must have ``dtype``.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} must be boolean (True = may attend) or floating (added to the scores), "
            f"got dtype {mask.dtype}"
        )
    if dtype is not None and mask.is_floating_point() and mask.dtype != dtype:
        raise TypeError(f"a float {name} must have the dtype of the scores, {dtype}, got {mask.dtype}")
    shape = tuple(scores_shape)
    # broadcasts without enlarging: each trailing dimension is 1 or the scores' own
    ok = mask.dim() <= len(shape) and all(m in (1, s) for m, s in zip(reversed(mask.shape), reversed(shape)))
    if not ok:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but the scores are {shape}; "
            f"a mask must broadcast to (..., Lq, Lk) = {shape}"
        )
    return mask


def at_least(value, name, minimum):
    """Return int(``value``) if it is an integer > 0 and ≥ ``minimum``, else raise."""
    positive(value, name, integer=True)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def count(value, name):
    """Return int(``value``) if it is an integer ≥ 0 (a count, a window, an offset), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer ≥ 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an integer ≥ 0, got {value}")
    return int(value)


def integer(value, name, minimum=0):
    """Return int(``value``) if it is an integer ≥ ``minimum`` (zero and negatives allowed by ``minimum``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def generator(value, *, default_seed=None):
    """Return ``value`` if it is a torch.Generator (or None), else raise a TypeError naming it.

    With ``default_seed``, None becomes a fresh generator seeded with it (reproducible by default).
    """
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(value).__name__}")
    if value is None and default_seed is not None:
        return torch.Generator().manual_seed(default_seed)
    return value
