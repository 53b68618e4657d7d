# Revenue kernel workbench. `make help` lists every task.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv demo test lint fmt bench lab clean db-stop gate fuzz chaos screenshots

help: ## List the tasks
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m kernel.reporting.kernelspec
	@touch $(STAMP)

venv: $(STAMP) ## Create the virtualenv with the pinned dependencies

demo: venv ## Start the embedded PostgreSQL, load the demo data, run the month's jobs
	$(BIN)/revkernel demo

test: venv ## Run the whole test suite (real PostgreSQL, Redis, HTTP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

lint: venv ## ruff, mypy --strict on kernel/, migration lint (squawk + additive rules)
	$(BIN)/ruff check kernel tests bench
	$(BIN)/ruff format --check kernel tests bench
	$(BIN)/mypy
	$(BIN)/revkernel db lint

fmt: venv ## Format the code with ruff
	$(BIN)/ruff format kernel tests
	$(BIN)/ruff check --fix kernel tests

bench: venv ## Run the benchmarks (not part of test; BENCH=name for one, BENCH=scale is opt-in); reports/bench/*.json
	@# The ingest benchmark drives HTTP with wrk (a Debian package); install it when we can.
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq wrk >/dev/null); } || \
		echo "note: wrk is not installed; the ingest benchmark will say so (apt-get install wrk)"
	$(BIN)/python -m bench $(BENCH)

lab: venv ## JupyterLab on notebooks/, as the read-only analyst role on the demo database
	$(BIN)/python -m kernel.reporting.kernelspec
	$(BIN)/revkernel db up
	ANALYST_DATABASE_URL="$$($(BIN)/revkernel db url --role analyst)" \
		$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --no-browser \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

screenshots: venv ## README pictures (fleet index, WARN report, investigate in JupyterLab) after make demo
	$(BIN)/python -m kernel.reporting.screenshots

gate: venv ## Release gate (runbook §3): tests, migration lint, invariants; evidence in reports/gate/
	$(BIN)/revkernel gate

fuzz: venv ## Deep schemathesis fuzzing of the whole HTTP API (FUZZ_MAX_EXAMPLES, default 200); reports/fuzz/*.json
	FUZZ_MAX_EXAMPLES=$${FUZZ_MAX_EXAMPLES:-200} FUZZ_RANDOM=1 FUZZ_REPORT_DIR=reports/fuzz $(BIN)/python -m pytest -p no:cacheprovider \
		tests/hardening/test_fuzz_openapi.py -o addopts="--strict-markers --strict-config -ra" --timeout=3600

chaos: venv ## Chaos drill: 2 workers, kill -9, PostgreSQL/Redis/sink restarts; reports/chaos/*.json
	$(BIN)/revkernel chaos

db-stop: venv ## Stop the embedded PostgreSQL
	$(BIN)/revkernel db stop

clean: ## Remove generated reports (keeps the database)
	rm -rf reports/*/ .pytest_cache
