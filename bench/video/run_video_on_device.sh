#!/usr/bin/env bash
# The video benchmark on a GPU machine without network, from the repository root:
#   bash bench/video/run_video_on_device.sh DEADLINE_S MODELS "BENCH ARGS" ["BENCH ARGS" ...]
#   e.g. bash bench/video/run_video_on_device.sh 560 wan14b "--workload wan14b --frames 81 --steps 4 --plan V,W --tag a"
# MODELS: what to make first (comma list of wan1.3b, wan14b, wan14b_i2v, flux12b, sdxl). Each "BENCH ARGS" is one
# video_bench.py run (with its own --plan and --tag), given what is left of the deadline. The machine's 64 GiB disk
# holds one 14B-class set at a time: diffusion models of sets not named are deleted before anything is made. Needs .device/ from bench/prepare_device.sh
# (carried). Models and unpacked packages stay on the machine's disk between calls while it is warm.
set -uo pipefail
deadline=${1:?deadline in seconds}
models=${2:?models to make}
shift 2
started=$(date +%s)
out=${OUT:-/tmp/video-out}
left() { echo $(( deadline - ($(date +%s) - started) )); }
say() { echo "[run_video $(( $(date +%s) - started ))s] $*"; }
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
unset PYTORCH_CUDA_ALLOC_CONF OMP_NUM_THREADS MKL_NUM_THREADS
# Models on a disk-backed filesystem, so that evicting them from the page cache makes a load cold.
work=/tmp/video
for candidate in /tmp /var/tmp /root; do
  fs=$(df --output=fstype "$candidate" 2>/dev/null | tail -1)
  if [ -n "$fs" ] && [ "$fs" != tmpfs ] && [ "$fs" != ramfs ]; then work=$candidate/video; break; fi
done
mkdir -p "$work/fe" "$out"
echo '<html><body>benchmark</body></html>' >"$work/fe/index.html"
if [ ! -f "$work/.unpacked" ]; then
  mkdir -p "$work/site" "$work/comfy"
  if ! { tar xJf .device/site312.tar.xz -C "$work/site" && tar xJf .device/comfyui.tar.xz -C "$work/comfy"; }; then
    say "unpack failed"; exit 1
  fi
  touch "$work/.unpacked"
fi
export PYTHONPATH=$work/site:$PWD/src
{ nvidia-smi; lscpu | grep -E "^(Model name|CPU\(s\))"; free -m; df -h "$work"; } >"$out/machine.txt" 2>&1
say "work dir $work ($(df --output=fstype,avail -h "$work" | tail -1)); unpacked"

[ -f "$work/spm.model" ] || python3 bench/video/make_spm.py "$work/spm.model" >/dev/null
IFS=, read -ra wanted <<<"$models"
declare -A unet_of=([wan1.3b]=wan2.1_t2v_1.3B_fp16_rand [wan14b]=wan2.1_t2v_14B_fp16_rand
  [wan14b_i2v]=wan2.1_i2v_480p_14B_fp16_rand [flux12b]=flux1-dev_rand [sdxl]=sdxl_unet)
keep=" "
for model in "${wanted[@]}"; do keep+="${unet_of[$model]:-none}.safetensors "; done
for file in "$work"/models/diffusion_models/*.safetensors; do
  [ -f "$file" ] || continue
  case $keep in *" $(basename "$file") "*) ;; *) say "disk: removing $(basename "$file")"; rm -f "$file" ;; esac
done
wan=()
i2v_flux=()
wan_shared=0  # the Wan VAE and umt5 (T2V and I2V)
for model in "${wanted[@]}"; do
  case $model in
    wan1.3b|wan14b) wan+=("${model#wan}"); wan_shared=1 ;;
    wan14b_i2v) i2v_flux+=("$model"); wan_shared=1 ;;
    flux12b) i2v_flux+=("$model") ;;
    sdxl) [ -f "$work/models/diffusion_models/sdxl_unet.safetensors" ] || \
            python3 bench/make_models.py "$work/comfy" "$work/models" --device cuda 2>&1 | grep -v Warning | tail -3 ;;
  esac
done
if [ "$wan_shared" = 1 ]; then
  python3 bench/video/make_wan_models.py "$work/comfy" "$work/models" --spm "$work/spm.model" \
    --wan "$(IFS=,; echo "${wan[*]}")" --device cuda --skip-existing 2>&1 | grep -E "^saved|exists|Error" | cut -c1-200
fi
if [ ${#i2v_flux[@]} -gt 0 ]; then
  python3 bench/video/make_i2v_flux_models.py "$work/comfy" "$work/models" --sets "$(IFS=,; echo "${i2v_flux[*]}")" \
    --device cuda --skip-existing 2>&1 | grep -E "^saved|exists|detect_unet|Error" | cut -c1-200
fi
sync
say "models ready: $(du -sh "$work/models" | cut -f1)"

for bench_args in "$@"; do
  # shellcheck disable=SC2086  # each argument is a whole video_bench.py command line
  python3 bench/video/video_bench.py --comfy "$work/comfy" --models "$work/models" --fe "$work/fe" --out "$out" \
    --work "$work/run" --deadline "$(( $(left) - 15 ))" $bench_args 2>&1 | grep -E "^\[video|Traceback|Error" | cut -c1-700
done
say "done"
