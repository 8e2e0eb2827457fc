#!/usr/bin/env bash
# Runs the benchmark on a GPU machine without network, from the repository root:
#   bash bench/run_on_device.sh PLAN DEADLINE_S [extra bench.py arguments]
# PLAN: flags (1 GPU), worker (2 GPUs), p2probe, models, scaling (all GPUs), stream (1 GPU: a stream of concurrent
# SDXL jobs, vanilla vs the worker with 1/2 instances per GPU and PNG level 1, GPU busy timeline; about 330 s).
# coldstart (1 GPU: start → ready and → compiled speed with and without a compile artefact, P7/P7c, the compiled
# stream against vanilla; about 550 s; packs the artefact and the compile cache into $OUT, and carries
# .device/artifacts.tar.xz and .device/compile-cache.tar.xz in where present).
# regress (1 GPU, issue 15's "nothing regresses": P2, P6 and memory per instance with the worker's defaults, compiled,
# two instances on the GPU and one; primes the artefact first unless one is carried in; planned for 480 s).
# It needs, in .device/ (built by bench/prepare_device.sh on a machine with PyPI): comfyui.tar.xz (ComfyUI v0.29.0)
# and site312.tar.xz (ComfyUI's dependencies missing there, installed for CPython 3.12). Results go to $OUT.
set -uo pipefail
plan=${1:?plan: flags, worker, p2probe, models, scaling, stream, coldstart or regress}
deadline=${2:-500}
shift 2 || true
started=$(date +%s)
out=${OUT:-/tmp/bench-out}
mkdir -p "$out" /tmp/fe
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
echo '<html><body>benchmark</body></html>' >/tmp/fe/index.html
if [ ! -f /tmp/site/.unpacked ]; then
  mkdir -p /tmp/site /tmp/comfy
  tar xJf .device/site312.tar.xz -C /tmp/site && tar xJf .device/comfyui.tar.xz -C /tmp/comfy && touch /tmp/site/.unpacked
fi
export PYTHONPATH=/tmp/site:$PWD/src
{ nvidia-smi; nvidia-smi topo -m; lscpu | grep -E "^(Model name|CPU\(s\)|NUMA)"; free -m; } >"$out/machine.txt" 2>&1
if [ ! -f /tmp/models/models.json ]; then
  python3 bench/make_models.py /tmp/comfy /tmp/models --device cuda 2>&1 | grep -v Warning | tail -8
fi
cp /tmp/models/models.json "$out/" 2>/dev/null
for carried in compile-cache artifacts; do
  # a compile cache or artefact from an earlier run on another machine of the same GPU type (as an image would hold)
  if [ -f ".device/$carried.tar.xz" ] && [ ! -d "/tmp/bench-work/$carried" ]; then
    mkdir -p /tmp/bench-work && tar xJf ".device/$carried.tar.xz" -C /tmp/bench-work
    echo "[run_on_device] $carried carried in: $(du -sh "/tmp/bench-work/$carried" | cut -f1)"
  fi
done
spent=$(( $(date +%s) - started ))
echo "[run_on_device] set-up took ${spent}s"
python3 bench/bench.py --plan "$plan" --comfy /tmp/comfy --models /tmp/models --fe /tmp/fe --out "$out" \
  --deadline $(( deadline - spent )) "$@" 2>&1 | grep -E "PHASE|ERROR|error|skipping|done in|Traceback" | cut -c1-600
gzip -f "$out/comfyui.log" "$out/worker.log" 2>/dev/null
if [ "$plan" = coldstart ]; then  # the artefact and the caches, to carry into a run on another machine
  for made in artifacts compile-cache; do
    [ -d "/tmp/bench-work/$made" ] || continue
    tar cf - -C /tmp/bench-work "$made" | xz -T0 -6 >"$out/$made.tar.xz"
    echo "[run_on_device] $made: $(du -sh "/tmp/bench-work/$made" | cut -f1), packed $(du -h "$out/$made.tar.xz" | cut -f1)"
  done
fi
echo "[run_on_device] total $(( $(date +%s) - started ))s"
