# make demo: set up .venv (first time) and run Knowledge Evolution on the built-in demo data.
# make test: set up .venv (first time) and run the test suite (make test-slow: the slow ones).
# make lint: ruff over the whole tree (its rules are in pyproject.toml).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
DEMO_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)
DEMO_DIR ?= $(or $(KE_CHECKPOINTS_DIR),checkpoints)
DEMO_SEED ?= 0
DEMO_GENERATIONS ?= 6
DEMO_EPOCHS ?= 8

.PHONY: demo test test-slow test-slurm lint clean-venv

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# One intra-op thread and no loader workers (images decoded once, --cache_images): on a busy
# machine two OpenMP threads fighting for the cores cost several times the CPU time of one.
# Only the last generation's checkpoints are kept (all that --resume needs).
demo: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) train_KE_cls.py --set SyntheticShapes --image_size 32 \
		--split_rate 0.75 --num_generations $(DEMO_GENERATIONS) --epochs $(DEMO_EPOCHS) \
		--lr 0.1 --warmup_length 1 --test_interval $(DEMO_EPOCHS) --num_threads 0 \
		--cache_images --keep_checkpoints last --seed $(DEMO_SEED) --log-dir $(DEMO_DIR) \
		--name $(DEMO_NAME)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

# The sweep on a real SLURM: start one first (as root: bash ci/slurm_up.sh; stop it with
# bash ci/slurm_down.sh). Fails, rather than skips, when no SLURM answers.
test-slurm: $(VENV)/.installed
	KE_SLURM_REQUIRED=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slurm tests/test_slurm.py

clean-venv:
	rm -rf $(VENV)
