#!/usr/bin/env bash
# Runs the whole test suite against another ComfyUI, installed apart from the default one (which stays as it is):
#
#   COMFYUI_SRC=/path/to/ComfyUI make test-comfyui     (a folder, or a .tar.gz/.tar.xz/.tgz/.zip archive of one)
#
#   COMFYUI_SRC     the ComfyUI to test (required); reinstalled from it on every run
#   UNDER_TEST_DIR  where it and its environment go (default: .comfyui-under-test in the repository)
#   VENV            the default environment: the first run copies it to seed the one under test, so torch is not
#                   downloaded again (without it, setup.sh builds one from scratch)
# Arguments go to pytest (`make test-comfyui PYTEST_ARGS="-x tests/comfyui/test_jobs_on_comfyui.py"`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UNDER_TEST=${UNDER_TEST_DIR:-$ROOT/.comfyui-under-test}
SEED_VENV=${VENV:-$ROOT/.venv}

say() { echo "[test-comfyui] $*"; }
die() { echo "[test-comfyui] ERROR: $*" >&2; exit 1; }

[[ -n ${COMFYUI_SRC:-} ]] || die "name the ComfyUI to test: COMFYUI_SRC=/path/to/ComfyUI make test-comfyui"
COMFYUI_SRC=$(realpath "$COMFYUI_SRC")
mkdir -p "$UNDER_TEST"
if [[ ! -x $UNDER_TEST/venv/bin/python && -x $SEED_VENV/bin/python ]]; then
  say "seeding $UNDER_TEST/venv with a copy of $SEED_VENV"
  rm -rf "$UNDER_TEST/venv.partial"
  cp -a "$SEED_VENV/." "$UNDER_TEST/venv.partial/"
  rm -f "$UNDER_TEST/venv.partial/.installed"  # setup.sh then installs the new ComfyUI's requirements over it
  mv "$UNDER_TEST/venv.partial" "$UNDER_TEST/venv"
fi
VENV=$UNDER_TEST/venv COMFYUI_DIR=$UNDER_TEST/ComfyUI COMFYUI_VERSION=source COMFYUI_SRC=$COMFYUI_SRC \
  "$ROOT/scripts/setup.sh"
say "running the tests against $(sed -n 's/^__version__ = "\(.*\)"/ComfyUI v\1/p' "$UNDER_TEST/ComfyUI/comfyui_version.py")"
cd "$ROOT"
COMFYUI_DIR=$UNDER_TEST/ComfyUI COMFY_WORK_DIR=$UNDER_TEST/work exec "$UNDER_TEST/venv/bin/python" -m pytest -ra "$@"
