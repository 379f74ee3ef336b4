# One-command set-up: `make demo` (train the demo model) and `make test` (the test suite) both
# create .venv and install goalgen into it first.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On a machine without an NVIDIA driver take the CPU build (from local disk here, seconds);
# on a GPU node let pip pick the CUDA build that matches the driver.
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
# Where PyPI's torch 2.13.0 would be the CUDA build (a CPU laptop without this machine kind's
# local wheel): TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install demo test lint bench gpu-check slurm-up slurm-down clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python src/train_generative.py --config-name=train_fb_flow_matching experiment=demo $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the benchmark table of the README (minutes on a CPU); ARGS: sections, overrides, --run DIR
bench: install
	$(BIN)/goalgen-bench $(ARGS) --json bench.json

# On a GPU node: fp16/bf16/compile/NCCL checks and the README's GPU rows (<= 5 min), into
# gpu_check.json. The node's own torch is never touched; where no package registry is reachable
# carry the other wheels in .whl/ (../shared/notes/stack.md), installed beside it in .gpu-site/.
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
gpu-check:
	@if [ -d .whl ]; then $(GPU_PY) -m pip install -q --no-index --no-deps --target .gpu-site .whl/*.whl; fi
	PYTHONPATH=src:.gpu-site $(GPU_PY) jobs/gpu_check.py $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

slurm-up:
	bash slurm/dev/start.sh

slurm-down:
	bash slurm/dev/stop.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
