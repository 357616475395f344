# labelwatch developer commands. Everything installs into ./.venv (override with VENV=...).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
LINT_PATHS := $(wildcard service client tests bench scripts examples setup.py)

.PHONY: run install install-test test test-fast lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

## install: the server and client into .venv, editable: the code runs from this tree, and the
## protobuf modules are generated into proto/labelwatch_proto/ (git-ignored) during the install
install: $(BIN)/python
	$(BIN)/python -m pip install --quiet --editable '.[server]'

## run: install and start the server
run: install
	$(BIN)/labelwatch serve $(ARGS)

## install-test: the server, client (editable, as above) and every test dependency into .venv
install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet --editable '.[test]'

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

## test-fast: the inner loop, everything but the tests marked slow (under 2 minutes)
test-fast: install-test
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python bench/scoring.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
