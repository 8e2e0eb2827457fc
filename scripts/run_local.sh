#!/usr/bin/env bash
# Runs the worker once on test_input.json through RunPod's local harness (on CPU where there is no GPU) and
# leaves the outputs in LOCAL_OUTPUT_DIR (default: ./outputs/<job id>/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export LOCAL_OUTPUT_DIR=${LOCAL_OUTPUT_DIR:-$PWD/outputs}
export RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true
status=0
"${VENV:-.venv}/bin/python" handler.py --rp_log_level INFO | sed -E 's/"data": "[A-Za-z0-9+\/=]{80,}"/"data": "<base64 …>"/g; s/'"'"'data'"'"': '"'"'[A-Za-z0-9+\/=]{80,}'"'"'/'"'"'data'"'"': '"'"'<base64 …>'"'"'/g' || status=$?
if [[ $status -eq 0 ]]; then
  echo "[run] outputs of test_input.json are in $LOCAL_OUTPUT_DIR/local_test/:"
  ls -l "$LOCAL_OUTPUT_DIR/local_test/"
fi
exit $status
