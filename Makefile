# posmon: `make demo` and `make test` work on a fresh clone with only Python 3.11+ present.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
DEMO   := .demo

.DEFAULT_GOAL := help
.PHONY: help demo backtest system-deps test soak lint format bench model mutate dashboards clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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

# The shipped anomaly model: trained on two simulated weeks (seed 101), never on the traffic it
# is evaluated on (docs/model.md). The same Python, numpy and scikit-learn give the same bytes.
MODEL_DIR := monitor/data/model
MODEL_DATA := .model

model: $(STAMP) ## rebuild the shipped anomaly model from simulated traffic (reproducible)
	@mkdir -p $(MODEL_DATA)
	$(BIN)/posmon simulate --out $(MODEL_DATA)/train.jsonl --hours 336 --seed 101
	$(BIN)/posmon train $(MODEL_DATA)/train.jsonl --out $(MODEL_DIR) --seed 0

# Debian packages the tests talk to (real Prometheus, promtool, Alertmanager); installed when
# missing and root.
DEBIAN_PACKAGES := prometheus prometheus-alertmanager

system-deps: ## install the Debian packages the tests use, when missing (needs root and apt)
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "missing Debian packages:$$missing (run 'sudo make system-deps')" >&2; exit 1; fi; \
	fi

test: $(STAMP) system-deps ## run every test
	$(BIN)/python -m pytest -q

soak: $(STAMP) system-deps ## long runs: property tests on 2,000 fresh examples each, 5 min of fuzzing per target, full-size kills and outages, the shipped model rebuilt
	HYPOTHESIS_PROFILE=soak $(BIN)/python -m pytest -q tests/test_properties.py tests/test_pans.py
	FUZZ_SECONDS=300 $(BIN)/python -m pytest -q tests/test_pans.py -k fuzz
	$(BIN)/python -m pytest -q -m soak

lint: $(STAMP) ## ruff, mypy --strict, the import contracts of the layers and bandit
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/bandit -q -c pyproject.toml -r monitor models

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## replay and streaming throughput, latency and memory (prints its figures)
	$(BIN)/python bench/replay_bench.py
	$(BIN)/python bench/stream_bench.py
	$(BIN)/python bench/model_bench.py
	$(BIN)/python bench/workers_bench.py

dashboards: $(STAMP) ## regenerate dashboards/*.json from dashboards/*.py
	$(BIN)/python dashboards/generate.py

mutate: $(STAMP) ## mutation testing of the scoring core and the paging stages (long; not in make test)
	$(BIN)/mutmut run
	$(BIN)/mutmut results

clean: ## remove the virtual environment and outputs
	rm -rf $(VENV) $(DEMO) $(MODEL_DATA) .pytest_cache .mypy_cache .ruff_cache mutants
