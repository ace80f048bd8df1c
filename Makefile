# One command each: `make demo` sets up and runs the offline demo, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
