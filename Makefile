# aitimestepper: every target sets up what it needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.DEFAULT_GOAL := help
.PHONY: help setup repro repro-check test test-fast lint ui serve simulate bench clean

# the local MLflow store; an MLFLOW_TRACKING_URI in the environment (a shared server) wins
STORE := $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}
UI_PORT ?= 5000
SERVE_PORT ?= 5001
MODEL ?= models:/aitimestepper@champion
ICS ?=
OUT ?= results/adhoc
# extra `dvc repro` flags of `make repro` (repro-check passes --force)
REPRO_FLAGS ?=

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv (if missing) and install the pinned package and dev tools
	@true

repro: setup ## Run the DVC pipeline on params.yaml (local SQLite MLflow store, CPU)
	dvc repro $(REPRO_FLAGS)

repro-check: setup ## Clone HEAD to a temp dir, run every stage there, compare its metrics with the committed ones
	d=$$(mktemp -d) && git clone -q . "$$d" && $(MAKE) -C "$$d" repro REPRO_FLAGS=--force && \
		$(BIN)/aits compare-metrics metrics "$$d/metrics"

test: setup ## Run the whole test suite (slow tests included, as in CI)
	$(BIN)/python -m pytest

test-fast: setup ## Run the test suite without tests marked slow
	$(BIN)/python -m pytest -m "not slow"

lint: setup ## Check style with ruff
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

ui: setup ## MLflow UI on http://127.0.0.1:5000 (UI_PORT), one worker, no job runner
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --backend-store-uri "$(STORE)" \
		--workers 1 -h 127.0.0.1 -p $(UI_PORT)

serve: setup ## Serve MODEL (default: the champion) at http://127.0.0.1:5001/invocations (SERVE_PORT)
	MLFLOW_TRACKING_URI="$(STORE)" $(BIN)/mlflow models serve -m $(MODEL) --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

simulate: setup ## Simulate with MODEL (ICS=your_systems.json); metrics, trajectory and plots go to OUT=results/adhoc
	MLFLOW_TRACKING_URI="$(STORE)" $(BIN)/aits simulate --model $(MODEL) $(if $(ICS),--ics $(ICS)) \
		--output $(OUT)/metrics.json --trajectory $(OUT)/trajectory.npz --plots-dir $(OUT)/plots

bench: setup ## Steps/s of every policy against REBOUND, batch throughput, memory -> metrics/bench.json, plots/bench/rates.png
	$(BIN)/aits bench --output metrics/bench.json

clean: ## Remove caches and the virtual environment (keeps models/, metrics/, mlflow.db)
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
