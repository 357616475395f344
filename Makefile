# labelwatch developer commands. Everything installs into ./.venv (override with VENV=...).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
LINT_PATHS := $(wildcard service client tests bench scripts setup.py)

.PHONY: run install install-test test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

## install: the server and client into .venv (protobuf code is generated during the build)
install: $(BIN)/python
	$(BIN)/python -m pip install --quiet '.[server]'

## run: install and start the server
run: install
	$(BIN)/labelwatch serve $(ARGS)

## install-test: the server, client and every test dependency into .venv
install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet '.[test]'

## lint / typecheck: ruff and mypy --strict on service/ and client/
lint: install-test
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: install-test
	$(BIN)/mypy --strict service/labelwatch client/labelwatch_client

## test: install everything, then lint, type-check and run the whole suite
test: install-test
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy --strict service/labelwatch client/labelwatch_client
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python bench/scoring.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
