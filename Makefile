# Two commands matter: `make demo` (the main job) and `make test` (every check).
# Each creates or updates its own virtual environment in .venv from pyproject.toml.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# The suite alone needs the test, examples and bench groups (the benchmark smoke runs the
# peers): the matrix's other interpreters install only these (no linters, no docs tools).
TEST_STAMP := $(VENV)/.installed-test
# The lowest versions every declared range allows (uv's `--resolution lowest-direct`).
LOWEST ?= .venv-lowest
# The demo needs only the package and rich: a first `make demo` installs no dev tools.
DEMO_STAMP := $(VENV)/.installed-demo
# The Python's own pip installs into the venv (--python, pip >= 22.3, as Python 3.11 ships)
# what pyproject.toml says the package and its `rich` extra need; the demo then runs the
# package from this checkout (`python -m` puts it first on sys.path), so no build backend and
# no build are needed for it. `make test` installs the package itself, editable.
DEMO_PIP := $(PYTHON) -m pip --python $(BIN)/python install --quiet --disable-pip-version-check --no-compile
DEMO_REQUIRES = $(shell $(PYTHON) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(' '.join(repr(r) for r in p['dependencies'] + p['optional-dependencies']['rich']))")

.PHONY: demo readme-demo test lint typecheck workflows pytest pytest-slow pytest-lowest docs dist bench clean

# The venv starts without pip (ensurepip costs seconds a first `make demo` need not pay): the
# demo installs into it with the Python's own pip, and the dev set bootstraps pip first.
$(BIN)/python:
	$(PYTHON) -m venv --without-pip $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet --group dev -e .
	touch $@ $(TEST_STAMP)

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet --group test --group examples --group bench -e .
	touch $@

# uv (from the dev group) resolves every direct requirement -- the package's, all its extras',
# the test, examples and bench groups' -- to the lowest version its range allows, in its own venv.
$(LOWEST)/.installed: pyproject.toml | $(STAMP)
	$(BIN)/uv venv --quiet --allow-existing --python $(PYTHON) $(LOWEST)
	$(BIN)/uv pip compile --quiet pyproject.toml --all-extras \
		--group test --group examples --group bench --resolution lowest-direct --python $(LOWEST)/bin/python -o $(LOWEST)/requirements.txt
	$(BIN)/uv pip sync --quiet --python $(LOWEST)/bin/python $(LOWEST)/requirements.txt
	$(BIN)/uv pip install --quiet --python $(LOWEST)/bin/python --no-deps -e .
	touch $@

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(DEMO_PIP) $(DEMO_REQUIRES)
	touch $@

## The main job: the demo on the embedded fake PlainID server.
demo: $(DEMO_STAMP)
	$(BIN)/python -m plainid_async demo

## README.md's demo sample, from a fresh run of the demo.
readme-demo: $(DEMO_STAMP)
	$(BIN)/python scripts/update_readme_demo.py

## Every check: lint, format, types, workflows, docs, the test suite without the slow tests.
test: lint typecheck workflows docs pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy --strict on everything; pyright on what users see: every public name's type known
# (--verifytypes must report 100 %) and tests/typing/api.py, the public API as a user's code
# types it, strict (never run). pyright finds the venv through the python first on PATH.
typecheck: $(STAMP)
	$(BIN)/mypy
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pyright --verifytypes plainid_async --ignoreexternal
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pyright tests/typing

# The CI and release workflows: actionlint (syntax, expressions, shell) and zizmor (security;
# offline: no GitHub API calls).
workflows: $(STAMP)
	$(BIN)/actionlint -shellcheck= .github/workflows/*.yml
	$(BIN)/zizmor --offline --quiet .github/workflows

# The slow tests (soak, rotation under load, 10,000-caller churn: marked `slow`) run on
# their own, by .ci/run.
# PYTEST_ARGS: more pytest arguments (.ci/run leaves tests/deployments out of its other runs).
PYTEST_ARGS ?=

pytest: $(TEST_STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

pytest-slow: $(TEST_STAMP)
	$(BIN)/pytest -m slow

## The suite with the lowest dependency versions pyproject.toml allows.
pytest-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/pytest -m "not slow" $(PYTEST_ARGS)

docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html

# The sdist and the wheel, built with the lowest hatchling the build-system table allows,
# checked (twine --strict with the Markdown renderer, .ci/check_dist.py), then the wheel
# installed in a fresh venv with every extra and the sdist's test groups, and the sdist's tests
# run from the unpacked sdist without its package directory: every import is the wheel's.
# DIST_TESTS=all runs the whole suite (the release workflow); the default runs the tests that
# read the sdist's examples/, benchmarks/ and docs/, and collects the rest.
DIST_VENV := .venv-dist
DIST_TESTS ?= tests/test_docs.py tests/test_benchmarks_smoke.py tests/test_pytest_plugin.py tests/test_extras.py
DIST_PYTEST = cd $(DIST_VENV)/src && ../bin/pytest -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

dist: $(STAMP)
	rm -rf dist $(DIST_VENV)
	mkdir -p $(DIST_VENV)
	$(BIN)/python -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'][0].replace('>=', '=='))" > $(DIST_VENV)/build-floor.txt
	$(BIN)/uv build --quiet --sdist --wheel --out-dir dist --build-constraints $(DIST_VENV)/build-floor.txt
	$(BIN)/twine check --strict dist/*
	$(BIN)/python .ci/check_dist.py
	$(BIN)/uv venv --quiet --allow-existing --python $(PYTHON) $(DIST_VENV)
	mkdir -p $(DIST_VENV)/src && tar -xzf dist/*.tar.gz -C $(DIST_VENV)/src --strip-components=1
	rm -r $(DIST_VENV)/src/plainid_async
	$(BIN)/uv pip install --quiet --python $(DIST_VENV)/bin/python \
		"$$(ls dist/*.whl)[redis,httpx,otel,rich,testing]" \
		--group $(DIST_VENV)/src/pyproject.toml:test \
		--group $(DIST_VENV)/src/pyproject.toml:examples \
		--group $(DIST_VENV)/src/pyproject.toml:bench
ifeq ($(DIST_TESTS),all)
	$(DIST_PYTEST)
else
	$(DIST_PYTEST) --collect-only -q >/dev/null
	$(DIST_PYTEST) $(DIST_TESTS)
endif

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --group bench
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(LOWEST) $(DIST_VENV) .venv-3.* dist docs/_build .pytest_cache .mypy_cache .ruff_cache
