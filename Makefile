# Two commands matter: `make demo` (the main job) and `make test` (every check).
# Each creates or updates its own virtual environment in .venv from pyproject.toml.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# The demo needs only the package and rich: a first `make demo` installs no dev tools.
DEMO_STAMP := $(VENV)/.installed-demo
# The Python's own pip installs into the venv (--python, pip >= 22.3, as Python 3.11 ships)
# what pyproject.toml says the package and its `rich` extra need; the demo then runs the
# package from this checkout (`python -m` puts it first on sys.path), so no build backend and
# no build are needed for it. `make test` installs the package itself, editable.
DEMO_PIP := $(PYTHON) -m pip --python $(BIN)/python install --quiet --disable-pip-version-check --no-compile
DEMO_REQUIRES = $(shell $(PYTHON) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(' '.join(repr(r) for r in p['dependencies'] + p['optional-dependencies']['rich']))")

.PHONY: demo test lint typecheck pytest docs bench clean

# The venv starts without pip (ensurepip costs seconds a first `make demo` need not pay): the
# demo installs into it with the Python's own pip, and the dev set bootstraps pip first.
$(BIN)/python:
	$(PYTHON) -m venv --without-pip $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet --group dev -e .
	touch $@

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(DEMO_PIP) $(DEMO_REQUIRES)
	touch $@

## The main job: the demo on the embedded fake PlainID server.
demo: $(DEMO_STAMP)
	$(BIN)/python -m plainid_async demo

## Every check: lint, format, types, docs, the whole test suite.
test: lint typecheck docs pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --group bench
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .mypy_cache .ruff_cache
