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


SETUP_SOURCE = """\
# On Colab (or any kernel without the book's package), install attnbook first.
import importlib.util
if importlib.util.find_spec("attnbook") is None:
    %pip install --quiet "attnbook[notebooks] @ git+https://github.com/attention-book/attention-mechanisms"
"""


def ensure_setup_cell(nb):
    """Make the first code cell the install cell above (tagged, hidden in the book)."""
    cell = nbformat.v4.new_code_cell(SETUP_SOURCE, metadata={"tags": ["remove-cell", "setup"]})
    codes = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if codes and "setup" in nb.cells[codes[0]].get("metadata", {}).get("tags", []):
        nb.cells[codes[0]].source = SETUP_SOURCE
    else:
        nb.cells.insert(codes[0] if codes else len(nb.cells), cell)


def execute(path):
    """Run one notebook in its own folder; return (seconds, peak MiB of the kernel)."""
    nb = nbformat.read(path, as_version=4)
    ensure_setup_cell(nb)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timestamps of an earlier run: noise in diffs
    peak = [0]

    def record(**_):
        peak[0] = max(peak[0], _peak_mib(client.km.provisioner.process.pid))

    client = NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True, record_timing=False,
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
