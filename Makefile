# mlbus — `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The venv is rebuilt when the dependency files change.
STAMP := $(VENV)/.installed

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Bytecode is compiled at install, as pip does for the images: a process then loads
# .pyc files instead of compiling every module it imports, even where
# PYTHONDONTWRITEBYTECODE is set (measured: importing inference and redis-py takes
# 1.1 s instead of 2.9 s; redis-py alone leaves 6 MB resident instead of 21).
$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv with mlbus and every service, test and lint tool

test: lint typecheck chromium pytest ## Everything CI runs: lint, type checks, all tests

pytest: $(STAMP) ## Unit, integration (real broker + Redis) and end-to-end tests
	$(BIN)/pytest -q

# The console's browser tests drive Debian's chromium through chromium-driver (never a
# downloaded browser). Installed here when missing and root may; otherwise they skip,
# except in CI (CI=true), where a missing browser fails them.
chromium: ## Install Debian's chromium + chromium-driver for the browser tests (needs root)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "chromium or chromedriver missing and not root: the console's browser tests will skip"; fi

unit: $(STAMP) ## Unit tests only (no broker, no Redis)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check libs services app tests loadtests tools
	$(BIN)/ruff format --check libs services app tests loadtests tools

typecheck: $(STAMP) ## mypy --strict on libs/, services/ and app/
	$(BIN)/mypy libs app $(if $(wildcard services/*/__init__.py),services)

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix libs services app tests loadtests tools
	$(BIN)/ruff format libs services app tests loadtests tools

proto: $(STAMP) ## Regenerate the committed gRPC stubs from proto/
	$(BIN)/python tools/gen_proto.py

up: $(STAMP) ## Run the embedded broker, Redis and every service (Ctrl-C stops all)
	$(BIN)/mlbus up --spec examples/fraud/mlbus.yaml

demo: $(STAMP) ## The whole loop once, on the embedded stack: train, serve, drift, retrain, reload
	$(BIN)/mlbus demo

bench: $(STAMP) ## Run every benchmark in loadtests/ (same-run baselines); fails if any goal is missed
	@failed=""; for b in loadtests/bench_*.py; do echo "== $$b"; \
	  $(BIN)/python $$b || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "goals missed (or the bench failed):$$failed"; exit 1; fi; \
	echo "every benchmark met its goals"

schemas: $(STAMP) ## Export the JSON Schemas of every event to schemas/
	$(BIN)/mlbus schemas export schemas

lock: $(STAMP) ## Re-resolve constraints.txt from pyproject.toml, preferring what .venv has
	$(BIN)/uv pip freeze --python $(BIN)/python | grep -v -e '^-e' -e '^mlbus' > .lock-prefs.txt
	{ head -3 constraints.txt; $(BIN)/uv pip compile pyproject.toml --extra all --extra dev \
	    -c .lock-prefs.txt --python-version 3.11 --no-header --no-annotate; } > constraints.new
	mv constraints.new constraints.txt && rm -f .lock-prefs.txt

clean: ## Remove the venv, caches and the local data folder
	rm -rf $(VENV) .mlbus .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info

.PHONY: help install test chromium pytest unit lint typecheck format proto up demo bench schemas lock clean
