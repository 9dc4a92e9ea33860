"""The notebooks keep the section standard of CONTRIBUTING.md (nbval checks their outputs)."""
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
IDS = [p.relative_to(ROOT).as_posix() for p in NOTEBOOKS]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _load(path):
    return json.loads(path.read_text())


def _text(nb, kind=None):
    return "\n".join("".join(c["source"]) for c in nb["cells"] if kind is None or c["cell_type"] == kind)


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebook found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_in_the_toc(path):
    toc = (ROOT / "_toc.yml").read_text()
    assert path.relative_to(ROOT).with_suffix("").as_posix() in toc


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_executed_top_to_bottom(path):
    nb = _load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "run `make execute`"
    assert "setup" in code[0]["metadata"].get("tags", []), "the first code cell must be the install cell"
    for c in code:
        errors = [o for o in c["outputs"] if o["output_type"] == "error"]
        assert not errors, f"a cell stores an error: {errors[0]['ename']}"
    assert "application/vnd.jupyter.widget-state+json" in nb["metadata"].get("widgets", {}), \
        "the widget state is not stored (run `make execute`)"
    assert path.stat().st_size < 1_500_000, "keep notebooks small: fewer widget frames or smaller figures"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_follows_the_section_standard(path):
    nb = _load(path)
    md = _text(nb, "markdown")
    code = _text(nb, "code")
    assert re.match(r"# \d+\.\d+ ", md), "the first cell is the title '# N.M Title'"
    assert "Learning objectives" in md
    assert re.search(r"\*\*Prerequisites[:.]?\*\*", md), "the prerequisites, after the objectives"
    assert re.search(r"\*\*Study time[:.]?\*\*", md), "an estimated study time, after the objectives"
    assert re.search(r"^#+ .*Summary", md, re.M | re.I), "a summary section"
    assert re.search(r"^## Exercises", md, re.M), "an '## Exercises' section"
    assert len(re.findall(r"```\{exercise\}", md)) >= 3, "at least three exercises"
    solutions = re.findall(r"`{3,}\{solution\}[^\n]*\n(?::[^\n]*\n)*", md)
    assert len(solutions) >= 3 and all(":class: dropdown" in s for s in solutions), "hidden solutions"
    assert re.search(r"check_\w+\(", code), "at least one exercise is checked by attnbook.exercises"
    assert re.search(r"^\s*(from attnbook|import attnbook)", code, re.M)
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert any(WIDGET_VIEW in o.get("data", {}) for o in outputs), "at least one widget"
    assert re.search(r"\{cite", md), "cites its sources"
    assert not re.search(r"\b(TODO|FIXME|TBD|lorem ipsum|coming soon)\b", md + code, re.I)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_figure_has_alt_text(path):
    """Every figure output has alt text for screen readers.

    myst-nb renders a cell's image outputs with the alt text of `mystnb.image.alt` in the cell
    metadata; without it the alt is the image's file path.
    """
    nb = _load(path)
    missing = []
    for c in nb["cells"]:
        if c["cell_type"] != "code":
            continue
        if not any(m.startswith("image/") for o in c["outputs"] for m in o.get("data", {})):
            continue
        options = c["metadata"].get("mystnb", {})
        alt = options.get("image", {}).get("alt") or ""
        if len(alt.strip()) < 20:
            missing.append(c.get("id", "?"))
    assert not missing, f"image outputs without alt text (add mystnb.image.alt) in cells {missing}"


def test_glue_names_and_labels_are_unique_and_defined():
    defined, labels = {}, {}
    used = []
    for path in NOTEBOOKS:
        nb = _load(path)
        outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
        for o in outputs:
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                assert defined.setdefault(name, path) == path, f"glue name {name} is defined in two notebooks"
        md = _text(nb, "markdown")
        used += re.findall(r"\{glue(?::\w+)?\}`([\w-]+)", md)
        for label in re.findall(r"^:label: ([\w-]+)", md, re.M):
            assert label not in labels, f"label {label} is used twice"
            labels[label] = path
    missing = sorted(set(used) - set(defined))
    assert not missing, f"glued in the text but never defined: {missing}"


def test_colour_maps_are_readable_with_colour_vision_deficiencies():
    """Figures use perceptually uniform, colour-blind-safe maps (viridis family, greys), never jet or rainbow."""
    safe = {"viridis", "cividis", "magma", "inferno", "plasma", "gray", "grey", "greys", "binary", "gray_r",
            "greys_r", "viridis_r", "cividis_r"}
    text = "\n".join(p.read_text() for p in [*NOTEBOOKS, *(ROOT / "src" / "attnbook").glob("*.py")])
    used = {m.lower() for m in re.findall(r'cmap\s*=\s*\\?["\']([A-Za-z_]+)', text)}
    assert used and used <= safe, f"colour maps that are not colour-blind safe: {sorted(used - safe)}"
