"""Shared helpers of the unit tests: devices, dtypes, tolerances, seeded inputs.

Import with `from support import DEVICES, DTYPES, tol, randn` (pytest puts tests/ on sys.path).
"""
import torch

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
