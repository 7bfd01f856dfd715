# costpipe: every target does its own set-up from a clean clone (virtualenv, install, Kafka).
# Needs: python3.11, Java 17+ and Maven (the broker jars are resolved once into ~/.cache/costpipe).
# Set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster instead of the local broker.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
COSTPIPE := $(VENV)/bin/costpipe
STAMP := $(VENV)/.costpipe-installed

.DEFAULT_GOAL := help
.PHONY: help venv chromium kafka kafka-down run test lint bench soak clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(PY):
	@test -n "$(PYTHON)" || { echo "python3.11 not found: install Python 3.11+ (or run make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install costpipe with test extras (only when needed)

kafka: venv ## Start the local Kafka broker (or check KAFKA_BOOTSTRAP_SERVERS) and create topics
	$(COSTPIPE) kafka up

kafka-down: venv ## Stop the local Kafka broker
	$(COSTPIPE) kafka down

run: venv ## Set up, then the main job: Kafka, worker, simulated fleet, summary, report.html
	$(COSTPIPE) run $(RUN_ARGS)

chromium: ## Install Debian's chromium for the report's browser test (once)
	@bash scripts/ensure_chromium.sh || echo "warning: could not install chromium (apt); the report's browser test will say it skipped"

test: venv chromium ## Set up, then run the test suite (the session fixture starts a test broker)
	$(VENV)/bin/pytest -q --durations=25

lint: venv ## ruff check
	$(VENV)/bin/ruff check .

bench: kafka ## Run the benchmarks (bench/run_all.py), print their figures, write bench/RESULTS.md
	$(PY) -m bench.run_all $(BENCH_ARGS)

soak: kafka ## Long-running reliability run (tools/soak.py)
	$(PY) -m tools.soak

clean: ## Stop the local broker and remove state (.costpipe/) and caches; keeps .venv
	-@if [ -x $(COSTPIPE) ]; then $(COSTPIPE) kafka down; \
		COSTPIPE_STATE_DIR=.costpipe/test-kafka $(COSTPIPE) kafka down; fi
	rm -rf .costpipe .pytest_cache .ruff_cache .hypothesis report.html
	find . -name __pycache__ -type d -not -path './.venv/*' -prune -exec rm -rf {} +
