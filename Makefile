# Two commands from a fresh clone: `make test` and `make demo`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
TORCH_VERSION := 2.13.0

.PHONY: setup test test-fast demo lint bench clean

setup: $(STAMP)

# Re-run only when the project's dependencies change; otherwise a no-op.
$(STAMP): pyproject.toml
	@./scripts/install_system_packages.sh
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned install pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

demo: setup
	$(PY) -m nerfmae.demo

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache data tour
