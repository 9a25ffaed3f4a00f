# Two commands: `make pretrain` runs the main job, `make test` runs the test suite (CI runs it).
# `make test-fast` is the edit-test lane: every test not marked slow (no Ray clusters, MLflow
# servers or jobs), a few minutes on 2 cores.
# Each creates and fills .venv on first use (about 70 s), with nothing but Python present.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: pretrain test test-fast venv clean

venv: $(STAMP)

# torch==2.13.0 first: its CPU wheel is what CI and laptops use; the project's torch range
# accepts it, so installing the project afterwards fetches no CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

pretrain: $(STAMP)
	$(PY) jobs/pretrain.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
