#!/usr/bin/env bash
# Container entry point: prepares the process environment, then becomes the worker (exec), so RunPod's signals
# reach it and it stops its ComfyUI instances cleanly.
#
# Switches that must be set before torch loads live here; each was measured (docs/benchmarks/README.md):
# - PyTorch's native caching allocator with max_split_size_mb:512 sampled 15 % faster than ComfyUI's default
#   cudaMallocAsync, which ignores this variable (COMFY_CUDA_MALLOC=async brings it back; then nothing is set).
# - Nothing may force synchronous kernel launches: the workload is CPU-launch-bound, CUDA_LAUNCH_BLOCKING=1
#   would serialise every step.
# The in-process torch switches (TF32, cudnn.benchmark, compile) are set by the worker's own ComfyUI node
# (src/comfyui_nodes/comfy_worker_tuning) and reported in every job's output under "tuning".
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
export PYTHONUNBUFFERED=1
if [ "${COMFY_CUDA_MALLOC:-native}" != "async" ]; then
  export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-max_split_size_mb:512}"
fi
if [ -n "${CUDA_LAUNCH_BLOCKING:-}" ]; then
  echo "[start] CUDA_LAUNCH_BLOCKING=${CUDA_LAUNCH_BLOCKING} would serialise every kernel launch: unset"
  unset CUDA_LAUNCH_BLOCKING
fi
# Custom nodes on the network volume: their requirements go into the one environment ComfyUI runs in (the
# anchor worker installed them into another). A stamp per requirements file skips unchanged ones on later starts.
if [ "${VOLUME_NODE_REQUIREMENTS:-1}" = "1" ] && [ -d /runpod-volume/custom_nodes ]; then
  for requirements in /runpod-volume/custom_nodes/*/requirements.txt; do
    [ -f "$requirements" ] || continue
    stamp="/tmp/.node-requirements-$(sha256sum "$requirements" | cut -c1-16)"
    [ -f "$stamp" ] && continue
    echo "[start] installing $requirements"
    if "${PYTHON:-python3}" -m pip install -q -r "$requirements"; then touch "$stamp"
    else echo "[start] WARNING: $requirements did not install; that custom node may fail to import"; fi
  done
fi
echo "[start] $(nproc) CPUs; GPUs: $(nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null | paste -sd ';' || echo none); PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-}"
exec "${PYTHON:-python3}" -u handler.py "$@"
