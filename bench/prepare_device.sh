#!/usr/bin/env bash
# Builds what bench/run_on_device.sh carries to a GPU machine without network, on a machine with PyPI:
#   .device/comfyui.tar.xz   the pinned ComfyUI tree (from the folder scripts/setup.sh installed)
#   .device/site312.tar.xz   ComfyUI's and the worker's dependencies that the GPU machine's Python 3.12 lacks
# The GPU machine has torch, numpy, transformers, safetensors, aiohttp, requests and nvidia-ml-py already; the
# frontend packages are left out (ComfyUI runs with --front-end-root). Keep .device/ out of git
# (echo /.device/ >> .git/info/exclude); both archives together stay under the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
comfy=${COMFYUI_DIR:-.comfyui/ComfyUI}
PY312=${PY312:-python3.12}
"$PY312" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' || {
  echo "PY312=$PY312 is not a Python 3.12 interpreter (the GPU machine runs 3.12): set PY312" >&2; exit 1; }
mkdir -p .device
# The top-level data folders are excluded by anchored patterns: a bare --exclude=models would also drop
# comfy/ldm/models (the model code).
tar cf - -C "$comfy" --anchored --exclude=./models --exclude=./output --exclude=./input --exclude=./user \
  --no-anchored --exclude=.git --exclude=__pycache__ . | xz -9 -T0 >.device/comfyui.tar.xz
tar tJf .device/comfyui.tar.xz ./comfy/ldm/models/autoencoder.py >/dev/null

wheels=$(mktemp -d)
site=$(mktemp -d)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
for requirement in torchsde==0.2.6 trampoline==0.1.2 av==19.0.2 alembic==1.20.1 mako==1.4.3 SQLAlchemy==2.1.9 \
    greenlet==3.5.6 comfy-kitchen==0.2.24 comfy-aimdo==0.4.10 simpleeval==1.0.8 blake3==1.0.11 pydantic==2.14.3 \
    pydantic-core==2.50.4 pydantic-settings==2.16.3 annotated-types==0.8.0 typing-inspection==0.4.5 \
    python-dotenv==1.2.4 websocket-client==1.9.2 boto3==1.44.5 botocore==1.44.5 s3transfer==0.19.3 jmespath==1.1.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$wheels" "$requirement"
done
# pip installs for another Python version only from the same major.minor: a 3.12 interpreter does the install.
"$PY312" -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: \
  "${platforms[@]}" --target "$site" "$wheels"/*.whl
# botocore's API data for every AWS service is most of its size: the worker speaks S3 (and STS) only.
find "$site/botocore/data" -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts -exec rm -rf {} +
rm -rf "${site:?}/bin"
tar cf - -C "$site" . | xz -9 -T0 >.device/site312.tar.xz
rm -rf "$wheels" "$site"
du -sh .device/*
