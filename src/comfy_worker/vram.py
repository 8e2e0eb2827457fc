"""ComfyUI's VRAM mode for each GPU: never a slow low-VRAM or dynamic path on a card that holds the models.

ComfyUI v0.29's default (dynamic VRAM) samples at about half the speed of `--highvram` on a large card and copies
the weights into every process's private RAM (docs/benchmarks). `auto` picks `--highvram` where the largest
model set on disk fits the card with room for activations, and leaves ComfyUI's dynamic loading where it does not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .model_affinity import MODEL_SUFFIXES

MODE_FLAGS: dict[str, tuple[str, ...]] = {
    "high": ("--highvram",),
    "gpu-only": ("--gpu-only",),
    "normal": ("--disable-dynamic-vram",),
    "dynamic": (),
    "low": ("--lowvram",),
}

GIB = 1 << 30
# Allowances, not fitted: on the SDXL benchmark (6.5 GiB of files, 1024², CFG) the GPU showed at most 12.9 GiB in
# use, the caching allocator's reserve included (docs/benchmarks/raw, mem_used_mib_max).
ACTIVATION_HEADROOM_BYTES = 4 * GIB
WEIGHT_OVERHEAD = 1.15  # CUDA context, cuBLAS workspaces, fragmentation
HIGH_WITHOUT_MODELS_MIN_BYTES = 24 * GIB  # no model files at start (models arrive by URL): decide by card size

MODEL_GROUPS = {
    "diffusion": ("checkpoints", "diffusion_models", "unet"),
    "text_encoder": ("text_encoders", "clip"),
    "vae": ("vae",),
}


@dataclass(frozen=True)
class VramChoice:
    mode: str
    flags: tuple[str, ...]
    reason: str


def choose_vram_mode(requested: str, vram_bytes: int | None, model_set_bytes: int) -> VramChoice:
    """`requested` is COMFY_VRAM_MODE; `model_set_bytes` the largest diffusion model + text encoder + VAE on disk."""
    if requested != "auto":
        return VramChoice(requested, MODE_FLAGS[requested], "set by COMFY_VRAM_MODE")
    if vram_bytes is None:
        return VramChoice("dynamic", (), "no GPU memory size known")
    if model_set_bytes == 0:
        if vram_bytes >= HIGH_WITHOUT_MODELS_MIN_BYTES:
            return VramChoice("high", MODE_FLAGS["high"], f"no models on disk yet; {vram_bytes / GIB:.0f} GiB card")
        return VramChoice("dynamic", (), f"no models on disk yet; {vram_bytes / GIB:.0f} GiB card is small")
    needed = model_set_bytes * WEIGHT_OVERHEAD + ACTIVATION_HEADROOM_BYTES
    summary = f"models {model_set_bytes / GIB:.1f} GiB need {needed / GIB:.1f} GiB of {vram_bytes / GIB:.1f} GiB"
    if vram_bytes >= needed:
        return VramChoice("high", MODE_FLAGS["high"], summary)
    return VramChoice("dynamic", (), summary + ": dynamic loading")


def largest_model_set_bytes(model_roots: Iterable[Path]) -> int:
    """Sum over diffusion model, text encoder and VAE of the largest file found under any root."""
    largest = dict.fromkeys(MODEL_GROUPS, 0)
    for root in model_roots:
        for group, folders in MODEL_GROUPS.items():
            for folder in folders:
                for path in _model_files(root / folder):
                    largest[group] = max(largest[group], path.stat().st_size)
    return sum(largest.values())


def _model_files(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return []
    return (p for p in folder.rglob("*") if p.suffix.lower() in MODEL_SUFFIXES and p.is_file())


def model_roots(comfyui_dir: Path, extra_model_paths: Iterable[Path]) -> list[Path]:
    """ComfyUI's own models folder and each `base_path` of the extra_model_paths files (read without a YAML
    library: a base_path line is all this needs)."""
    roots = [comfyui_dir / "models"]
    for config in extra_model_paths:
        try:
            text = config.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^\s*base_path:\s*['\"]?([^'\"\n#]+?)['\"]?\s*(?:#.*)?$", text, re.MULTILINE):
            base = Path(match.group(1)).expanduser()
            roots.append(base if base.is_absolute() else config.parent / base)
    return roots
