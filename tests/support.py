"""Shared helpers of the unit tests: devices, dtypes, tolerances, seeded inputs, a memory tracer.

Import with `from support import DEVICES, DTYPES, tol, randn` (pytest puts tests/ on sys.path).
"""
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Every kernel runs on the CPU and, when one is present, on CUDA.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    """Tolerances for comparing against a reference computed in the same dtype."""
    return {
        torch.float64: dict(atol=1e-10, rtol=1e-8),
        torch.float32: dict(atol=1e-5, rtol=1e-4),
        torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    }[dtype]


def randn(*shape, seed=0, dtype=torch.float64, device="cpu", grad=False):
    """A reproducible standard-normal tensor (its own generator: independent of test order)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return x.requires_grad_(grad)


class LiveTensors(TorchDispatchMode):
    """An independent reference: the peak bytes of tensors alive at once during a call
    (every operator's outputs are recorded until they are freed; the inputs are not counted)."""

    def __init__(self, inputs):
        super().__init__()
        self.live = self.peak = 0
        self.seen = {}
        self.held = {t.untyped_storage().data_ptr() for t in inputs}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in self.held or key in self.seen or storage.nbytes() == 0:
                    continue
                self.seen[key] = storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, key)
        return out

    def _free(self, key):
        self.live -= self.seen.pop(key, 0)
