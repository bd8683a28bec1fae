# The front door. `make help` lists the targets; every one works on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
XRAY := $(BIN)/xray
BUILD ?= build
# The demo data set (synthetic, not medical data) and run.
PATIENTS ?= 240
SEED ?= 1
SYNTH_SIZE ?= 128
IMAGE_SIZE ?= 64
SHARDS ?= 4
WORKERS ?= 2
PRESET ?= demo
DATA ?= $(BUILD)/shards
WORKDIR ?= $(BUILD)/run
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv train test clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed ## create .venv and install the project with its test extras

$(BUILD)/synth/.done: | $(VENV)/.installed
	$(XRAY) synth --out $(BUILD)/synth --num-patients $(PATIENTS) --seed $(SEED) --image-size $(SYNTH_SIZE)
	touch $@

$(DATA)/manifest.json: $(BUILD)/synth/.done
	$(XRAY) shards --src $(BUILD)/synth --out $(DATA) --num-shards $(SHARDS) --image-size $(IMAGE_SIZE) --seed $(SEED)

train: $(VENV)/.installed $(DATA)/manifest.json ## synth data -> shards -> train on $(WORKERS) local workers -> evaluate
	$(XRAY) train --data $(DATA) --workdir $(WORKDIR) --preset $(PRESET) --workers $(WORKERS)
	$(XRAY) evaluate --data $(DATA) --workdir $(WORKDIR)
	@echo "artifacts: $(WORKDIR)/ (best.weights.h5, history.csv, tensorboard/, eval/)"

test: $(VENV)/.installed ## run the test suite (real TensorFlow, multi-process training included)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean: ## remove build outputs (keeps .venv)
	rm -rf $(BUILD)
