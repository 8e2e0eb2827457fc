"""The files behind a workflow's model names: where each lies on disk and how large it is.

ComfyUI resolves a loader's file name (`unet_name: wan2.1_t2v_14B.safetensors`) inside its model folders. The worker
needs the same files to size a job's VRAM need and to read them ahead into the page cache; it looks for each name
in every model folder of every root (ComfyUI's own `models/`, each `base_path` of the extra_model_paths files, the
model-by-URL cache), the way ComfyUI's folder layout places them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_worker.models.affinity import models_in

# Loader inputs that hold a diffusion model (its size, not a text encoder's, decides what must stay on the GPU).
DIFFUSION_INPUTS = ("unet_name", "ckpt_name", "model_name")
FP8_WEIGHT_DTYPES = ("fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")


@dataclass(frozen=True)
class ModelFile:
    name: str
    path: Path
    size: int
    diffusion: bool  # named by a diffusion-model input (UNETLoader, CheckpointLoader…)
    resident_bytes: int  # bytes it takes on the GPU: its size, halved when the loader casts 16-bit weights to fp8


def find_model_file(name: str, roots: Iterable[Path]) -> Path | None:
    """The first `root/<folder>/<name>` that exists, over every sub-folder of every root (a name may hold a
    sub-folder, e.g. `wan/model.safetensors`)."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        return None
    for root in roots:
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            candidate = folder / relative
            if candidate.is_file():
                return candidate
    return None


def workflow_model_files(workflow: Mapping[str, Any], roots: Iterable[Path]) -> list[ModelFile]:
    """Every model file the workflow names that exists under the roots (names not found are left out: ComfyUI
    reports them itself)."""
    roots = list(roots)
    diffusion_names, fp8_names = _diffusion_names(workflow)
    found = []
    for name in sorted(models_in(workflow)):
        path = find_model_file(name, roots)
        if path is None:
            continue
        size = path.stat().st_size
        resident = size // 2 if name in fp8_names else size
        found.append(ModelFile(name, path, size, name in diffusion_names, resident))
    return found


def _diffusion_names(workflow: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    diffusion, fp8 = set(), set()
    for node in workflow.values():
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        if not isinstance(inputs, Mapping):
            continue
        for key in DIFFUSION_INPUTS:
            value = inputs.get(key)
            if isinstance(value, str):
                diffusion.add(value)
                if inputs.get("weight_dtype") in FP8_WEIGHT_DTYPES:
                    fp8.add(value)
    return diffusion, fp8
