# Two commands on a fresh machine: `make run` (set up, then the default experiment) and `make test` (the full suite,
# as CI runs it; `make test-fast` for the inner loop). `make report` shows what the runs found.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS ?= test            # CI adds scale-out launchers, OR-tools, virtme-ng: make test EXTRAS=test,ray,slurm,flow,vm

.PHONY: setup run test test-fast ui report clean-net

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(strip $(EXTRAS))]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) run.py

# Three tests at a time (on 2 cores too: much of a test is waiting on real time), a module's tests on one worker; the
# tests marked exclusive run first, alone (tests/conftest.py).
test: setup
	$(PY) -m pytest -q -n 3 --dist loadscope

# The inner loop: everything but the end-to-end tests (no workers, no run.py, no namespaces) and the few marked slow
# (every method against DADS on real models); `make test` runs them all.
test-fast: setup
	$(PY) -m pytest -q -n 2 --dist loadscope -m "not e2e and not slow"

ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# The paper-tables notebook as a script, with the project's interpreter, on the store the runs went to
# (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db here; `make report EXPERIMENTS=a,b` to choose); it prints each
# table and saves its figures in figures/ beside the store.
report: setup
	$(PY) notebooks/paper_tables.py

clean-net: setup
	$(PY) -m harness.network cleanup
