# syntax=docker/dockerfile:1.7
# The worker image: one virtual environment (/opt/venv) for ComfyUI, the worker and every custom node's
# requirements; ComfyUI and every Python dependency pinned; layers ordered from the least to the most often changed.
# CUDA 12.8 runs on Ada, Hopper and Blackwell cards. Build variants: docker-bake.hcl.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base

# COMFYUI_VERSION: the one tested default (scripts/setup.sh pins the same); another is tested first with
# `COMFYUI_SRC=… make test-comfyui` (docs/development.md, "Upgrading ComfyUI").
# TORCH_INDEX: the torch build. cu128 runs on more host drivers; ComfyUI turns comfy-kitchen's optimised CUDA kernels
# off below CUDA 13 (comfy/quant_ops.py), so .../whl/cu130 is the build that has them (docs/deployment.md).
ARG COMFYUI_VERSION=v0.29.0
ARG COMFY_CLI_VERSION=1.23.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    COMFYUI_DIR=/comfyui \
    COMFY_WORK_DIR=/comfy-work \
    COMFY_EXTRA_MODEL_PATHS=/app/config/network_volume.yaml

# Ubuntu 24.04's Python is 3.12; ffmpeg for video outputs; git for custom nodes. The Debian packages follow the
# base image's security updates rather than exact pins (DL3008), which Ubuntu does not keep available.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv git ffmpeg libgl1 libglib2.0-0 \
    ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv /opt/venv

WORKDIR /app
COPY requirements-torch.txt constraints.txt ./
RUN pip install --index-url "$TORCH_INDEX" -r requirements-torch.txt

# ComfyUI at its pinned tag; its requirements held to the versions the tests ran with (constraints.txt) and to
# our torch pins, in the same environment.
RUN git clone --depth 1 --branch "$COMFYUI_VERSION" https://github.com/comfyanonymous/ComfyUI "$COMFYUI_DIR" \
 && pip install -r "$COMFYUI_DIR/requirements.txt" -c requirements-torch.txt -c constraints.txt \
 && pip install "comfy-cli==$COMFY_CLI_VERSION" -c requirements-torch.txt -c constraints.txt

COPY requirements.txt ./
RUN pip install -r requirements.txt -c requirements-torch.txt -c constraints.txt

COPY pyproject.toml handler.py start.sh test_input.json ./
COPY config ./config
COPY src ./src
# Editable: the worker finds its ComfyUI node (src/comfyui_nodes) beside its code.
RUN pip install --no-deps -e .

# Optional, by build argument (docker-bake.hcl): custom nodes by registry id and models by URL, installed with
# comfy-cli into the same environment (MODELS: space-separated "URL|folder"). A token for gated downloads comes as a
# BuildKit secret read into comfy-cli's HF_API_TOKEN for that one command, never stored in a layer:
#   docker buildx bake sdxl --secret id=hf_token,env=HF_TOKEN
FROM base AS final
ARG CUSTOM_NODES=""
ARG MODELS=""
RUN --mount=type=secret,id=hf_token,required=false \
    set -eu; \
    if [ -n "$CUSTOM_NODES" ]; then \
      # shellcheck disable=SC2086
      comfy --skip-prompt --workspace "$COMFYUI_DIR" node install $CUSTOM_NODES; \
    fi; \
    for entry in $MODELS; do \
      url="${entry%%|*}"; folder="${entry#*|}"; \
      HF_API_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" \
        comfy --skip-prompt --workspace "$COMFYUI_DIR" model download --url "$url" --relative-path "models/$folder"; \
    done

# The compile artefact (docs/deployment.md, "The compile artefact"): docker's build steps have no GPU, so it is made
# on a GPU machine from the built image and committed into a derived one, e.g.
#   docker run --gpus all -e WARMUP_WORKFLOW=/app/warmup.json -e COMPILE_ARTIFACT_DIR=/app/compile-artifacts \
#     --name primed IMAGE python -m comfy_worker.prime && docker commit primed IMAGE-primed
# (workers of that image then start with COMPILE_ARTIFACT_DIR=/app/compile-artifacts), or once on a first worker
# with the network volume mounted (the default COMPILE_ARTIFACT_DIR lies on the volume).
CMD ["/app/start.sh"]
