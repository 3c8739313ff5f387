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
.PHONY: help setup repro repro-check test test-fast lint ui ui-check server sweep serve simulate bench clean

# the local MLflow store; an MLFLOW_TRACKING_URI in the environment (a shared server) wins
STORE := $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}
UI_PORT ?= 5000
SERVER_DIR ?= .server
SERVER_PORT ?= 5000
POSTGRES_PORT ?= 5433
SERVE_PORT ?= 5001
MODEL ?= models:/aitimestepper@champion
ICS ?=
OUT ?= results/adhoc
# `make sweep`: one queued DVC experiment per threshold x seed, JOBS at a time, named SWEEP-threshold<T>-seed<S>
THRESHOLDS ?= 2e-4 1e-4
SEEDS ?= 0 1 2
JOBS ?= 2
SWEEP ?= sweep
# extra `dvc repro` flags of `make repro` (repro-check passes --force)
REPRO_FLAGS ?=

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

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

ui: setup ## MLflow UI of the local store on http://127.0.0.1:5000 (UI_PORT); a shared server has its own
	@case "$(STORE)" in http*) echo "MLFLOW_TRACKING_URI is a server: its UI is at $(STORE)"; exit 0;; esac; \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --backend-store-uri "$(STORE)" \
		--workers 1 -h 127.0.0.1 -p $(UI_PORT)

ui-check: setup ## Headless-Chromium screenshots of the MLflow UI (runs table, charts, comparison) -> results/ui/
	$(BIN)/python scripts/ui_screenshots.py --out results/ui

sweep: setup ## Queue THRESHOLDS x SEEDS as DVC experiments, run JOBS at a time, wait, show them (see README)
	for t in $(THRESHOLDS); do for s in $(SEEDS); do \
		dvc exp run --queue --name "$(SWEEP)-threshold$$t-seed$$s" -S energy_threshold=$$t -S seed=$$s || exit 1; \
	done; done
	dvc queue start -j $(JOBS)
	while dvc queue status | grep -qE 'Queued|Running'; do sleep 20; done
	dvc queue status
	dvc exp show --no-pager --md --drop '.*' --keep 'Experiment|params.yaml:energy_threshold|seed$$|headline\..*'

server: setup ## Shared MLflow server: PostgreSQL store + proxied artifacts in SERVER_DIR, http://127.0.0.1:5000 (SERVER_PORT)
	$(BIN)/aits server --dir $(SERVER_DIR) --port $(SERVER_PORT) --postgres-port $(POSTGRES_PORT)

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
