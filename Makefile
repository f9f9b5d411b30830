# Two commands from a fresh clone: `make test` and `make demo`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
TORCH_VERSION := 2.13.0

# nerfstudio's environment, apart from .venv: nerfstudio forces a torchvision, hence a CUDA
# torch 2.14 build (~5.5 GB), which the main environment (CPU torch 2.13) must not get.
NS_VENV := .venv-nerfstudio
NS_PY := $(NS_VENV)/bin/python
NS_STAMP := $(NS_VENV)/.setup-stamp
NS_TORCH := torch==2.14.1 torchvision==0.29.1
NERFSTUDIO_VERSION := 1.1.5

.PHONY: setup test test-fast demo lint bench clean nerfstudio test-nerfstudio

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

# One worker per core; idle workers take queued tests from busy ones (the slow flow and
# README tests otherwise leave one core idle at the end).
test: setup
	$(PY) -m pytest -n auto --dist worksteal

test-fast: setup
	$(PY) -m pytest -n auto --dist worksteal -m "not slow"

nerfstudio: $(NS_STAMP)

# Idempotent like setup: re-run only when the requirements change. torch first and pinned,
# then nerfstudio without its requirements, then its and ours in one resolver call (see
# scripts/nerfstudio_requirements.py: no nuscenes-devkit, so numpy 2 stays), then this
# project itself without requirements (its torch cap is the main environment's).
$(NS_STAMP): pyproject.toml scripts/nerfstudio_requirements.py
	@./scripts/install_system_packages.sh
	@test -d $(NS_VENV) || $(PYTHON) -m venv $(NS_VENV)
	$(NS_PY) -m pip install --quiet --upgrade pip
	$(NS_PY) -m pip install --quiet $(NS_TORCH)
	$(NS_PY) -m pip install --quiet --no-deps nerfstudio==$(NERFSTUDIO_VERSION)
	$(NS_PY) scripts/nerfstudio_requirements.py $(NS_TORCH) > $(NS_VENV)/requirements.txt
	$(NS_PY) -m pip install --quiet -r $(NS_VENV)/requirements.txt
	$(NS_PY) -m pip install --quiet --no-deps -e .
	$(NS_VENV)/bin/ns-train --help > /dev/null
	@touch $(NS_STAMP)

# The tests marked nerfstudio, in its environment; there a missing nerfstudio fails them
# (NERFMAE_REQUIRE_NERFSTUDIO), where `make test` skips them.
test-nerfstudio: nerfstudio
	NERFMAE_REQUIRE_NERFSTUDIO=1 $(NS_PY) -m pytest -m nerfstudio

demo: setup
	$(PY) -m nerfmae.demo

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) $(NS_VENV) .pytest_cache .ruff_cache data tour
