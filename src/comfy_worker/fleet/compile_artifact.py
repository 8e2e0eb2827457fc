"""The portable compile artefact: PyTorch's Mega-Cache of a compiled warm-up, one file per GPU type and setup.

Inductor's caches hold the GPU's name, the CUDA, torch and triton versions, the inductor configuration (the compile
mode) and the TF32 switches in their keys; the artefact is keyed by the same things plus the ComfyUI version and the
warm-up workflow's model files (names and sizes), so an instance only loads an artefact made for exactly its setup.
The versions come from the instance itself (GET /worker/compile), not from the worker's process.

    <COMPILE_ARTIFACT_DIR>/<gpu-slug>/<key>.megacache   the bytes of torch.compiler.save_cache_artifacts()
    <COMPILE_ARTIFACT_DIR>/<gpu-slug>/<key>.json        the key's fields, for people
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from comfy_worker.models.files import ModelFile

SUFFIX = ".megacache"


@dataclass(frozen=True)
class ArtifactKey:
    gpu_name: str
    torch: str
    cuda: str
    triton: str
    comfyui: str
    backend: str
    mode: str
    tf32: bool
    models: tuple[tuple[str, int], ...]  # the warm-up workflow's model files: (name, bytes), sorted

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def gpu_slug(self) -> str:
        return gpu_slug(self.gpu_name)

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "models": [{"name": n, "bytes": b} for n, b in self.models], "key": self.digest}


def gpu_slug(name: str) -> str:
    """'NVIDIA H200' → 'nvidia-h200'; a folder name for the GPU type."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"


def artifact_key(environment: dict[str, Any], compile_options: dict[str, Any], tf32: bool,
                 files: Iterable[ModelFile]) -> ArtifactKey | None:
    """The key of an instance's artefact, from its /worker/compile environment and its compile request; None for an
    instance without a GPU (nothing is compiled there)."""
    if not environment.get("gpu_name"):
        return None
    models = tuple(sorted({(f.name, f.size) for f in files}))
    return ArtifactKey(
        gpu_name=str(environment["gpu_name"]), torch=str(environment.get("torch")),
        cuda=str(environment.get("cuda")), triton=str(environment.get("triton")),
        comfyui=str(environment.get("comfyui")), backend=str(compile_options.get("backend")),
        mode=str(compile_options.get("mode") or "default"), tf32=tf32, models=models,
    )


def artifact_path(directory: Path, key: ArtifactKey) -> Path:
    return directory / key.gpu_slug / f"{key.digest}{SUFFIX}"


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_suffix(".json")


def write_sidecar(artifact: Path, key: ArtifactKey, saved: dict[str, Any]) -> Path:
    """The key's fields and what the save reported, beside the artefact (atomically, like the artefact)."""
    path = sidecar_path(artifact)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**key.describe(), "bytes": saved.get("bytes"), "entries": saved.get("entries", {})}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with os.fdopen(handle, "w") as file:
        json.dump(body, file, indent=1)
    os.replace(temporary, path)
    return path
