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
.PHONY: help setup repro test test-fast lint clean

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
	dvc repro

test: setup ## Run the whole test suite (slow tests included, as in CI)
	$(BIN)/python -m pytest

test-fast: setup ## Run the test suite without tests marked slow
	$(BIN)/python -m pytest -m "not slow"

lint: setup ## Check style with ruff
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean: ## Remove caches and the virtual environment (keeps models/, metrics/, mlflow.db)
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
