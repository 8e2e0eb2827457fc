#!/usr/bin/env bash
# Container entry point: prepares the process environment, then becomes the worker (exec), so RunPod's signals
# reach it and it stops its ComfyUI instances cleanly.
#
# GPU switches that must be set before torch loads belong here, and each one only once a benchmark in
# docs/benchmarks/ shows it helps (see issue "GPU performance, measured"); none is set yet.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
export PYTHONUNBUFFERED=1
echo "[start] $(nproc) CPUs; GPUs: $(nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null | paste -sd ';' || echo none)"
exec "${PYTHON:-python3}" -u handler.py "$@"
