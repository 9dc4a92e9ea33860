# The two commands of the README:  `make book`  and  `make test`.
# Each sets itself up (a local .venv, pip, npm, Debian's chromium for the browser test),
# is idempotent, and skips the set-up steps that are already done.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# The set-up stamp changes whenever the pinned requirements or the package metadata change.
STAMP := $(VENV)/.stamp-$(shell cat requirements.txt pyproject.toml | md5sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BUILD_FLAGS := --builder html -W -n --keep-going
NB ?=

.PHONY: book student pdf test execute bench bench-widgets setup chromium clean

book: setup
	$(VENV)/bin/jupyter-book build . $(BUILD_FLAGS)
	@echo "The book is ready: open file://$(CURDIR)/_build/html/index.html"

# The student edition: the same book with every solution removed, in _build/student/.
student: setup
	$(PY) scripts/student_config.py _build/student-config/_config.yml
	$(VENV)/bin/jupyter-book build . --config _build/student-config/_config.yml --path-output _build/student $(BUILD_FLAGS)
	@echo "The student edition is ready: open file://$(CURDIR)/_build/student/_build/html/index.html"

# The print edition: the whole book on one page, printed to PDF by headless chromium (offline).
pdf: setup chromium
	$(PY) scripts/build_pdf.py _build/pdf/attention-mechanisms.pdf

test: setup chromium
	$(PY) -m pytest --nbval --nbval-sanitize-with tests/sanitize.cfg tests notebooks

# Re-execute notebooks in place (all, or NB=path/to/one.ipynb) after changing them or attnbook.
execute: setup
	$(PY) scripts/execute_notebooks.py $(NB)

# Time and peak memory of every kernel against PyTorch's SDPA, n = 256 ... 16384 (several minutes).
bench: setup
	$(PY) -m attnbook.bench --json benchmarks/results/bench-$$($(PY) -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")').json

# How long a widget's live update (compute + redraw) takes on this machine.
bench-widgets: setup
	$(PY) benchmarks/widgets.py

setup: $(STAMP) _vendor/.stamp

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.version_info[:2] == (3, 11) or print("warning: the pins are for Python 3.11, this is", sys.version.split()[0])'
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.stamp-* && touch $@

node_modules/.stamp: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

_vendor/.stamp: node_modules/.stamp scripts/vendor.sh
	bash scripts/vendor.sh

chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

clean:
	rm -rf _build _vendor
