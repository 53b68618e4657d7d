# Revenue kernel workbench. `make help` lists every task.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv demo test lint fmt bench lab clean db-stop

help: ## List the tasks
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
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

bench: venv ## Run the benchmarks (not part of test); results in reports/bench/*.json
	$(BIN)/python -m bench $(BENCH)

db-stop: venv ## Stop the embedded PostgreSQL
	$(BIN)/revkernel db stop

clean: ## Remove generated reports (keeps the database)
	rm -rf reports/*/ .pytest_cache
