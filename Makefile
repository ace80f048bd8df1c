# One command each: `make demo` sets up and runs the offline demo, `make test` runs the tests,
# `make test-fast` the tests that start no server process and are not marked slow.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint bench soak soak-test compat clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[api,django,celery,dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/tracked-openai demo

# Progress: one line per test file with its dots and a running "[done/total]" count, so a long
# run shows where it is and how far it has to go (-v would print a line per test: ~1,500 lines
# that bury the failures). PYTEST_ARGS passes more options, e.g. PYTEST_ARGS=-x.
PROGRESS := -o console_output_style=count

test: setup
	$(BIN)/python -m pytest $(PROGRESS) $(PYTEST_ARGS)

# No mlflow server, no PostgreSQL, no `serve` process, nothing marked slow (see pyproject markers).
test-fast: setup
	$(BIN)/python -m pytest $(PROGRESS) -m "not server and not postgres and not slow" $(PYTEST_ARGS)

# ruff, mypy (strict), and the architecture's import contracts (pyproject.toml [tool.importlinter]).
lint: setup
	$(BIN)/ruff check tracked_openai tests benchmarks examples deploy
	$(BIN)/mypy
	$(BIN)/lint-imports

# The production soak (benchmarks/soak): `make soak` runs 2 minutes (MINUTES=30 for the README's
# figures); `make soak-test` runs its 30-second test, which `make test` skips for time.
MINUTES ?= 2
soak: setup
	cd benchmarks/soak && ../../$(BIN)/python run.py --minutes $(MINUTES)

soak-test: setup
	TRACKED_OPENAI_SOAK_TEST=1 $(BIN)/python -m pytest $(PROGRESS) tests/test_soak.py

bench: setup
	$(BIN)/python benchmarks/overhead.py

# The compatibility matrix (oldest/middle/newest openai, mlflow 3.17/3.18; see tox.ini). Not in CI.
compat: setup
	$(BIN)/python -m pip install --quiet "tox>=4.11"
	$(BIN)/tox -m compat

clean:
	rm -rf $(VENV) .tox .pytest_cache .mypy_cache .ruff_cache
