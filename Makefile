# make demo: set up .venv (first time) and run Knowledge Evolution on the built-in demo data.
# make test: set up .venv (first time) and run the test suite (make test-slow: the slow ones).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
DEMO_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test test-slow clean-venv

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) train_KE_cls.py --set SyntheticShapes --image_size 64 --num_generations 3 \
		--epochs 15 --test_interval 5 --num_threads 2 --seed 0 --name $(DEMO_NAME)

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)
