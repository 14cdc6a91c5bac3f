# Two commands on a fresh machine with Python 3.11+:  `make devnet`  and  `make test`.
#
# Both create .venv if it is missing and (re)install the project into it when
# pyproject.toml is newer than the last install (stamp file), so a fresh clone needs
# nothing but Python and access to PyPI. Override the interpreter with
# `make PYTHON=/path/to/python3.12 test`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# First interpreter on PATH that is Python >= 3.11 (python3 first, then versioned names).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11 python; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && { echo $$p; break; }; done)

VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help venv devnet test pytest lint bench clean

help:
	@echo "make devnet   start a local devnet of member daemons (pass options with ARGS='...')"
	@echo "make test     run the whole test suite, ruff and mypy (PYTEST_ARGS='...' for pytest)"
	@echo "make lint     ruff and mypy only"
	@echo "make bench    run the benchmarks in bench/"
	@echo "make clean    remove .venv and caches"

$(BIN)/python:
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: Python 3.11 or newer is required, and none was found on PATH" \
		     "(tried python3, python3.13, python3.12, python3.11, python)." >&2; \
		echo "       Install Python 3.11+ or run: make PYTHON=/path/to/python3.11 $(MAKECMDGOALS)" >&2; \
		exit 1; \
	fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: $(PYTHON) is $$($(PYTHON) --version 2>&1); Python 3.11 or newer is required." >&2; \
		echo "       Run: make PYTHON=/path/to/python3.11 $(MAKECMDGOALS)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changed (or the venv is new).
$(STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: $(VENV) uses $$($(BIN)/python --version 2>&1); Python 3.11+ is required." \
		     "Remove $(VENV) (make clean) and run make again." >&2; exit 1; }
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

devnet: $(STAMP)
	$(BIN)/commune devnet $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(BIN)/ruff check .
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	@set -e; for script in bench/bench_*.py; do \
		echo "== $$script"; $(BIN)/python $$script; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
