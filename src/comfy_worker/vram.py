"""ComfyUI's VRAM mode, chosen per job: never a slow low-VRAM or dynamic path for models the card holds, never an
out-of-memory `--highvram` for models it cannot.

ComfyUI v0.29's default (dynamic VRAM) samples SDXL at about half the speed of `--highvram` on a large card and
copies the weights into every process's private RAM (docs/benchmarks); `--highvram` keeps every model on the GPU
and runs out of memory when they do not fit. `auto` decides from each job's own model files (`job_vram_choice`):
`--highvram` where they fit with room for activations, ComfyUI's dynamic loading where they do not; an instance
whose mode does not suit the next job is restarted in the other mode before that job (docs/benchmarks/video.md
measures what each costs). At start, before any job, an instance takes the warm-up workflow's choice, or
`--highvram` on a card of 24 GiB or more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .model_files import ModelFile

MODE_FLAGS: dict[str, tuple[str, ...]] = {
    "high": ("--highvram",),
    "gpu-only": ("--gpu-only",),
    "normal": ("--disable-dynamic-vram",),
    "dynamic": (),
    "low": ("--lowvram",),
}

GIB = 1 << 30
# The mode for models that do not fit: ComfyUI's dynamic loading streamed Wan 14B's weights on an H200 held to
# 24 GiB at 6.08 s/step against 6.05 resident (docs/benchmarks/video.md).
OFFLOAD_MODE = "dynamic"
# Allowances, not fitted: on the SDXL benchmark (6.5 GiB of files, 1024², CFG) the GPU showed at most 12.9 GiB in
# use, the caching allocator's reserve included (docs/benchmarks/raw, mem_used_mib_max).
ACTIVATION_HEADROOM_BYTES = 4 * GIB
WEIGHT_OVERHEAD = 1.15  # CUDA context, cuBLAS workspaces, fragmentation
HIGH_WITHOUT_MODELS_MIN_BYTES = 24 * GIB  # no model files at start (models arrive by URL): decide by card size

@dataclass(frozen=True)
class VramChoice:
    mode: str
    flags: tuple[str, ...]
    reason: str


def choose_vram_mode(requested: str, vram_bytes: int | None, model_set_bytes: int) -> VramChoice:
    """`requested` is COMFY_VRAM_MODE; `model_set_bytes` what the job's models need resident (0: not known)."""
    if requested != "auto":
        return VramChoice(requested, MODE_FLAGS[requested], "set by COMFY_VRAM_MODE")
    if vram_bytes is None:
        return VramChoice("dynamic", (), "no GPU memory size known")
    if model_set_bytes == 0:
        if vram_bytes >= HIGH_WITHOUT_MODELS_MIN_BYTES:
            return VramChoice("high", MODE_FLAGS["high"], f"no models known yet; {vram_bytes / GIB:.0f} GiB card")
        return VramChoice("dynamic", (), f"no models known yet; {vram_bytes / GIB:.0f} GiB card is small")
    needed = model_set_bytes * WEIGHT_OVERHEAD + ACTIVATION_HEADROOM_BYTES
    summary = f"models {model_set_bytes / GIB:.1f} GiB need {needed / GIB:.1f} GiB of {vram_bytes / GIB:.1f} GiB"
    if vram_bytes >= needed:
        return VramChoice("high", MODE_FLAGS["high"], summary)
    return VramChoice(OFFLOAD_MODE, MODE_FLAGS[OFFLOAD_MODE], f"{summary}: {OFFLOAD_MODE} loading")


def resident_bytes(files: Iterable[ModelFile]) -> int:
    """What a job's models need on the GPU at once under --highvram: every diffusion model (ComfyUI keeps them on
    the GPU in that mode) plus the largest other file (text encoders and VAEs are moved off to make room)."""
    files = list(files)
    diffusion = sum(f.resident_bytes for f in files if f.diffusion)
    others = max((f.resident_bytes for f in files if not f.diffusion), default=0)
    return diffusion + others


def job_vram_choice(requested: str, vram_bytes: int | None, files: Iterable[ModelFile]) -> VramChoice:
    """The mode this job's models need (COMFY_VRAM_MODE other than auto is kept as it is)."""
    return choose_vram_mode(requested, vram_bytes, resident_bytes(files))


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
