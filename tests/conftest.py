"""Shared set-up of the unit tests: a headless matplotlib, a fixed seed, closed figures."""
import os

# The notebooks' kernels (nbval) inherit this environment and must keep the inline backend.
os.environ.pop("MPLBACKEND", None)

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


# One thread: on a small shared CPU, torch's thread pool makes tiny operations many times
# slower and the suite's time erratic. (Notebooks run in their own kernels, unaffected.)
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_close_figures():
    """Every test starts from torch seed 0 and leaves no open figure behind."""
    torch.manual_seed(0)
    yield
    plt.close("all")
