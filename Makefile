# Set-up and the two commands of the README. `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test test-fast demo lint install install-dev clean-demo check-requirements

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Another torch build of the pinned version first, from the index given (README, "Set-up"): pip then keeps it, as
# torch==2.13.0 matches 2.13.0+cpu and 2.13.0+cu126. Empty: the package index's build (on Linux, CUDA 13.0).
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu     # CPU-only Linux box: ~0.2 GB instead of ~2.9 GB
TORCH_INDEX ?=
TORCH_PIN := $(shell sed -n 's/^torch==\([^ ;]*\).*/\1/p' requirements.txt)
torch_from_index = $(if $(TORCH_INDEX),$(BIN)/pip install torch==$(TORCH_PIN) --index-url $(TORCH_INDEX))

# Stamps: reinstall when a requirements file changes.
# The project itself goes in editable (`pip install -e .`), so imports work from any directory.
$(VENV)/.runtime-installed: requirements.txt pyproject.toml | $(BIN)/python
	$(torch_from_index)
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(torch_from_index)
	$(BIN)/pip install -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
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
