"""Execute notebooks in place, top to bottom in a fresh kernel, storing outputs and widget state.

Usage: python scripts/execute_notebooks.py [NOTEBOOK ...]   (default: every notebook)
Prints each notebook's wall time and the kernel's peak memory; exits 1 if one fails
or takes longer than the budget of 30 s.
"""
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUDGET_S = 30

def _peak_mib(pid):
    """The peak resident memory (VmHWM) of a live process, in MiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def execute(path):
    """Run one notebook in its own folder; return (seconds, peak MiB of the kernel)."""
    nb = nbformat.read(path, as_version=4)
    peak = [0]

    def record(**_):
        peak[0] = max(peak[0], _peak_mib(client.km.provisioner.process.pid))

    client = NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent)}},
                            on_cell_executed=record)
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return seconds, peak[0]


def main(argv):
    paths = [pathlib.Path(p).resolve() for p in argv] or sorted((ROOT / "notebooks").rglob("*.ipynb"))
    failed = False
    for path in paths:
        if ".ipynb_checkpoints" in path.parts:
            continue
        seconds, mib = execute(path)
        over = seconds > BUDGET_S
        failed |= over
        print(f"{path.relative_to(ROOT)}: {seconds:.1f} s, peak {mib} MiB{'  OVER BUDGET' if over else ''}",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
