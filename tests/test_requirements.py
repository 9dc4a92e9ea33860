"""The pins: requirements.txt pins every direct dependency exactly, and Binder agrees with it."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;#]+)$")


def _pins(path):
    pins, other = {}, []
    for line in (ROOT / path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
        else:
            other.append(line)
    return pins, other


def test_requirements_pins_every_line_exactly():
    pins, other = _pins("requirements.txt")
    assert not other, f"requirements.txt has lines that are not exact pins: {other}"
    for name in ["torch", "numpy", "matplotlib", "ipywidgets", "jupyter-book", "sphinx", "myst-nb",
                 "sphinx-book-theme", "sphinx-exercise", "sphinx-proof", "sphinxcontrib-bibtex",
                 "nbval", "pytest", "playwright"]:
        assert name in pins, f"{name} is not pinned in requirements.txt"
    assert pins["jupyter-book"].startswith("1."), "the book is built with Jupyter Book 1.x"


def test_binder_matches_requirements():
    pins, _ = _pins("requirements.txt")
    binder, other = _pins("binder/requirements.txt")
    assert other == ["--extra-index-url https://download.pytorch.org/whl/cpu"], other
    assert binder.pop("torch") == pins["torch"] + "+cpu", "Binder must take torch's CPU build"
    for name, version in binder.items():
        assert pins.get(name) == version, f"binder pins {name}=={version}, requirements.txt {pins.get(name)}"
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    assert runtime == "python-3.11", runtime


def test_binder_has_what_the_notebooks_import():
    binder, _ = _pins("binder/requirements.txt")
    for name in ["numpy", "matplotlib", "ipywidgets", "myst-nb"]:
        assert name in binder, f"Binder lacks {name}, which the notebooks import"
    assert "pip install --no-deps -e ." in (ROOT / "binder" / "postBuild").read_text()


def test_package_json_pins_exact_versions():
    import json

    deps = json.loads((ROOT / "package.json").read_text())["dependencies"]
    assert set(deps) == {"@jupyter-widgets/html-manager", "mathjax", "requirejs"}
    for name, version in deps.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned exactly: {version}"
    lock = json.loads((ROOT / "package-lock.json").read_text())
    for name, version in deps.items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
