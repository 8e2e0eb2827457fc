# First version of the worker image (the packaging issue pins and slims it further).
# CUDA 12.8 supports Ada, Hopper and Blackwell cards.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG COMFYUI_VERSION=v0.29.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    COMFYUI_DIR=/comfyui \
    COMFY_WORK_DIR=/comfy-work \
    RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=false

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv git ffmpeg libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv /opt/venv

WORKDIR /app
COPY requirements-torch.txt ./
RUN pip install --index-url "$TORCH_INDEX" -r requirements-torch.txt

RUN git clone --depth 1 --branch "$COMFYUI_VERSION" https://github.com/comfyanonymous/ComfyUI "$COMFYUI_DIR" \
 && pip install -r "$COMFYUI_DIR/requirements.txt" -c requirements-torch.txt

COPY requirements.txt pyproject.toml ./
RUN pip install -r requirements.txt
COPY src ./src
COPY handler.py start.sh test_input.json ./
RUN pip install --no-deps -e .  # editable: the worker finds src/comfyui_nodes and its defaults beside it

CMD ["/app/start.sh"]
