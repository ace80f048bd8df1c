# One command each: `make demo` sets up and runs the offline demo, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench compat clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[api,django,dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/tracked-openai demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check tracked_openai tests benchmarks examples
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/overhead.py

# The compatibility matrix (oldest/middle/newest openai, mlflow 3.17/3.18; see tox.ini). Not in CI.
compat: setup
	$(BIN)/python -m pip install --quiet "tox>=4.11"
	$(BIN)/tox -m compat

clean:
	rm -rf $(VENV) .tox .pytest_cache .mypy_cache .ruff_cache
