# Two entry points that set everything up themselves (idempotent):
#   make repro   -> .venv with pinned dependencies, then `dvc repro`
#   make test    -> .venv with pinned dependencies, then pytest
# torch is installed first, on its own, so pip never swaps in a multi-GB CUDA build:
#   make test TORCH="torch==2.13.0"   (the default; any build that fits pyproject's range works)

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: the end-to-end tests spend much of their time in
# subprocesses and I/O, so two workers on two cores take about 13 minutes instead of 29.
TEST_WORKERS ?= 2

BIN     := $(abspath $(VENV))/bin
STAMP   := $(VENV)/.installed
# Stage commands in dvc.yaml call `python -m textclf...`: make that the venv's python.
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test test-fast lint format params mlflow-server mlflow-server-stop clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable ".[dev,server]"
	touch $@

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

# ruff: the linter and the formatter's check, configured in pyproject.toml ([tool.ruff]).
LINTED := src tests benchmarks scripts

lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

# Rewrites what `make lint` checks into shape (import order, fixable lint, formatting).
format: setup
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

# Rewrites params.yaml from conf/ (what `dvc exp run` does before every experiment).
params: setup
	$(BIN)/python -m textclf.params params.yaml

# MLflow tracking server on PostgreSQL, 127.0.0.1 only (state in .mlflow-server/); prints the
# tracking URI: export MLFLOW_TRACKING_URI=$$(cat .mlflow-server/uri)
mlflow-server: setup
	scripts/mlflow_server.sh start

mlflow-server-stop:
	scripts/mlflow_server.sh stop

clean:
	rm -rf $(VENV) .pytest_cache
