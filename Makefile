# make demo: set up .venv (first time) and run Knowledge Evolution on the built-in demo data.
# make test: set up .venv (first time) and run the test suite (make test-slow: the slow ones).
# make compare: KE against its controls (none, reinit, the compute-matched long baseline) on the
# demo data, 3 seeds each, then the comparison table, plot and compute column.
# make lint: ruff over the whole tree (its rules are in pyproject.toml).
# make test-floors: the default suite with the oldest versions requirements.txt allows.
VENV ?= .venv
FLOORS_VENV ?= .venv-floors
PYTHON ?= python3
PY := $(VENV)/bin/python
DEMO_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)
DEMO_DIR ?= $(or $(KE_CHECKPOINTS_DIR),checkpoints)
DEMO_SEED ?= 0
DEMO_GENERATIONS ?= 6
DEMO_EPOCHS ?= 8

.PHONY: demo compare test test-slow test-slurm test-floors lint clean-venv

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

# The demo recipe, shortened to fit 12 runs in under 10 minutes on 2 cores: 3 generations of 2
# epochs (6 epochs for every method, the long baseline's one schedule included).
COMPARE_DIR ?= $(or $(KE_CHECKPOINTS_DIR),checkpoints)/compare
COMPARE_SEEDS ?= 0-2
COMPARE_GENERATIONS ?= 3
COMPARE_EPOCHS ?= 2
COMPARE_FLAGS = --set SyntheticShapes --data $(COMPARE_DIR)/datasets --image_size 32 \
	--split_rate 0.75 --num_generations $(COMPARE_GENERATIONS) --epochs $(COMPARE_EPOCHS) \
	--lr 0.1 --warmup_length 1 --test_interval $(COMPARE_EPOCHS) --num_threads 0 \
	--cache_images --keep_checkpoints last

compare: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m trainers.sweep --name methods --log-dir $(COMPARE_DIR) \
		--grid forget=ke,none,reinit --grid seed=$(COMPARE_SEEDS) -- $(COMPARE_FLAGS)
	OMP_NUM_THREADS=1 $(PY) -m trainers.sweep --name long --log-dir $(COMPARE_DIR) \
		--grid seed=$(COMPARE_SEEDS) -- $(COMPARE_FLAGS) --forget none --lr_policy long_cosine_lr
	$(PY) -m utils.report $(COMPARE_DIR)/methods/forget-* $(COMPARE_DIR)/long/seed-* \
		--baseline none --out $(COMPARE_DIR)/comparison

# Every core (pytest-xdist), a test file's tests on one worker (--dist loadfile: a module's
# finished runs are built once, not once per worker), one intra-op thread per process.
test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

# The sweep on a real SLURM: start one first (as root: bash ci/slurm_up.sh; stop it with
# bash ci/slurm_down.sh). Fails, rather than skips, when no SLURM answers.
test-slurm: $(VENV)/.installed
	KE_SLURM_REQUIRED=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slurm tests/test_slurm.py

# Every requirement pinned to its floor (ci/floors.py turns each >=X into ==X), in an environment
# of its own; the rest of the dependency tree is the newest that those pins allow.
$(FLOORS_VENV)/.installed: requirements.txt ci/floors.py
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) ci/floors.py requirements.txt > $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/python -m pip install --quiet -r requirements.txt -c $(FLOORS_VENV)/floors.txt
	touch $@

test-floors: $(FLOORS_VENV)/.installed
	$(FLOORS_VENV)/bin/python -m pip list --format=freeze | grep -iE '^(torch|torchvision|numpy|pandas|matplotlib)=='
	$(FLOORS_VENV)/bin/python -m pytest -q -n auto

clean-venv:
	rm -rf $(VENV) $(FLOORS_VENV)
