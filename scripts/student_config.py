"""Write the student edition's Jupyter Book config: _config.yml with every solution removed.

Usage: python scripts/student_config.py OUT.yml
The student edition is built from the same sources as the book; sphinx-exercise's
``hide_solutions`` drops every {solution} block, and the page sources (which hold the
solutions) are not copied into the HTML. Paths in the config are made absolute so that the
generated file may live anywhere.
"""
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def student_config():
    """The book's config with hide_solutions on, no copied sources, and its own title."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["title"] += " (student edition)"
    sphinx = config["sphinx"]
    sphinx["local_extensions"] = {name: str(ROOT / path) for name, path in sphinx["local_extensions"].items()}
    sphinx["config"].update(hide_solutions=True, html_copy_source=False)
    config["html"]["extra_footer"] += " Student edition: solutions are not included."
    return config


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(student_config(), sort_keys=False))
    print(f"student edition config written to {out}")
