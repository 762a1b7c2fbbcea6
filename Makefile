# Set-up and the two commands of the README. `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test test-fast demo lint install install-dev clean-demo check-requirements

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamps: reinstall when a requirements file changes.
$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -r requirements-dev.txt
	touch $(VENV)/.runtime-installed $@

install: $(VENV)/.runtime-installed
install-dev: $(VENV)/.dev-installed

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

# The pins resolved against the package index's metadata for Linux and macOS (not this machine's local wheels).
check-requirements: $(VENV)/.dev-installed
	$(BIN)/python scripts/check_requirements.py

test: $(VENV)/.dev-installed
	$(BIN)/python scripts/check_requirements.py
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# While editing: everything but the multi-rank runs and the Triton interpreter suite (CI runs `make test`).
test-fast: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not multirank and not slow"

demo: $(VENV)/.runtime-installed
	bash scripts/demo.sh
