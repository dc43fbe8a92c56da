# posmon: `make demo` and `make test` work on a fresh clone with only Python 3.11+ present.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
DEMO   := .demo

.DEFAULT_GOAL := help
.PHONY: help demo backtest test lint format bench clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-9s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo: $(STAMP) ## the whole system on this machine: embedded broker, simulated terminals, monitor, alerts
	$(BIN)/posmon demo --duration $(or $(DURATION),60) --out $(DEMO)

backtest: $(STAMP) ## simulate a day of traffic to a file and replay it (no broker)
	@mkdir -p $(DEMO)
	$(BIN)/posmon simulate --out $(DEMO)/events.jsonl --hours 26 --seed 7
	$(BIN)/posmon replay $(DEMO)/events.jsonl --alerts $(DEMO)/alerts.jsonl --dlq $(DEMO)/dlq.jsonl

test: $(STAMP) ## run every test
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## replay and streaming throughput, latency and memory (prints its figures)
	$(BIN)/python bench/replay_bench.py
	$(BIN)/python bench/stream_bench.py

clean: ## remove the virtual environment and outputs
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache
