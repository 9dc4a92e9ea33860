"""Activation checkpointing: trade compute for memory in the backward pass (§5.3).

Backpropagation needs the activations of the forward pass, so by default autograd keeps
every tensor an operation saved for its backward: memory grows with depth × sequence length.
Checkpointing (Chen et al. 2016) keeps only the input of a checkpointed block and recomputes
the block's activations when the backward pass reaches it: one extra forward pass of each
block for memory O(inputs of the blocks + activations of one block). Checkpointing every
√n-th layer of an n-layer network gives the O(√n) memory of the paper's title.

Reference (book/references.bib): ``chen2016training``.
"""
import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _check_callable(fn, name):
    if not callable(fn):
        raise TypeError(
            f"{name} must be a callable (a function or an nn.Module), got {type(fn).__name__}"
        )
    return fn


class Checkpointed(nn.Module):
    """A module whose forward saves only its inputs; backward recomputes its activations.

    Checkpointed(module)(*args) = module(*args), with the same outputs and gradients (the
    random state is restored, so dropout draws the same mask twice). Uses
    ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``. Cost: one more forward
    pass of ``module`` during backward; activation memory O(size of the inputs) instead of
    all of ``module``'s intermediate tensors. Explained in §5.3.
    """

    def __init__(self, module):
        super().__init__()
        self.module = _check_callable(module, "module")

    def forward(self, *args, **kwargs):
        """module(*args, **kwargs), recomputed during the backward pass."""
        return checkpoint(self.module, *args, use_reentrant=False, **kwargs)


def checkpointed(module_or_fn):
    """The checkpointed version of a module (a :class:`Checkpointed`) or of a function.

    checkpointed(f)(*args) = f(*args); the activations of f are recomputed in the backward
    pass instead of being stored: one more forward pass of f, memory O(size of the inputs)
    for what f saves. Explained in §5.3.
    """
    _check_callable(module_or_fn, "module_or_fn")
    if isinstance(module_or_fn, nn.Module):
        return Checkpointed(module_or_fn)

    @functools.wraps(module_or_fn)
    def run(*args, **kwargs):
        return checkpoint(module_or_fn, *args, use_reentrant=False, **kwargs)

    return run


def _is_parameter_like(t):
    """True for a leaf tensor that requires grad (a parameter) or a view of one (weight.T)."""
    base = t._base if t._base is not None else t
    return base.is_leaf and base.requires_grad


def activation_memory(fn, *inputs):
    """Bytes = Σ size of the distinct tensors that fn(*inputs) saves for its backward pass.

    Runs fn(*inputs) once with gradients on and sums, over the tensors that autograd saves
    (``torch.autograd.graph.saved_tensors_hooks``), the bytes of their distinct storages —
    a tensor saved by two operations, or a view of it, counts once. The inputs and the
    parameters (leaves that require grad, and their views) are not counted: they are kept
    in memory anyway. Deterministic: it adds up shapes, it does not ask the allocator.
    For a plain stack it grows like depth × sequence length; checkpointed blocks save only
    their inputs. Returns an int. Cost: one forward pass of fn. Explained in §5.3.
    """
    _check_callable(fn, "fn")
    held = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    saved = {}  # data pointer -> (bytes, storage); holding the storage keeps its pointer unique

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in held and not _is_parameter_like(t):
            saved[storage.data_ptr()] = (storage.nbytes(), storage)
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(size for size, _ in saved.values())
