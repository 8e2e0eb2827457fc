# The two commands: `make run` (the worker on test_input.json) and `make test` (every test tier).
# Each first installs what it needs into .venv (scripts/setup.sh; ComfyUI v0.29.0 included).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test lint

setup:
	VENV=$(VENV) scripts/setup.sh

run: setup
	scripts/run_local.sh

test: setup
	$(PY) -m pytest -ra $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
