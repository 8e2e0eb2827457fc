"""ComfyUI's VRAM mode, chosen per job: never a slow low-VRAM or dynamic path for models the card holds, never an
out-of-memory `--highvram` for models it cannot.

ComfyUI v0.29's default (dynamic VRAM) samples SDXL at about half the speed of `--highvram` on a large card and
copies the weights into every process's private RAM (docs/benchmarks); `--highvram` keeps every model on the GPU
and runs out of memory when they do not fit. `auto` decides from each job's own model files (`job_vram_choice`):
`--highvram` where they fit with room for activations, ComfyUI's dynamic loading streamed from the model file
(`--fast-disk`) where they do not; an instance whose mode does not suit the next job is restarted in the other mode
before that job (docs/benchmarks/video.md measures what each costs). At start, before any job, an instance takes the
warm-up workflow's choice, or `--highvram` on a card of 24 GiB or more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from comfy_worker.models.files import ModelFile

log = logging.getLogger("comfy_worker.vram")

MODE_FLAGS: dict[str, tuple[str, ...]] = {
    "high": ("--highvram",),
    "gpu-only": ("--gpu-only",),
    "normal": ("--disable-dynamic-vram",),
    "dynamic": (),
    "low": ("--lowvram",),
}

GIB = 1 << 30
# The mode for models that do not fit: ComfyUI's dynamic loading streamed Wan 14B's weights on an H200 held to
# 24 GiB at 6.08 s/step against 6.05 resident (docs/benchmarks/video.md). With --fast-disk it streams them from the
# model file (the page cache, shared by every instance) instead of a private pinned copy: 6.10 s/step and 16.5 GiB
# of host RAM per instance instead of 35.8 GiB. COMFY_VRAM_MODE=dynamic keeps ComfyUI's own pinned copy.
OFFLOAD_MODE = "dynamic"
OFFLOAD_FLAGS = ("--fast-disk",)
# Allowances, not fitted: on the SDXL benchmark (6.5 GiB of files, 1024², CFG) the GPU showed at most 12.9 GiB in
# use, the caching allocator's reserve included (docs/benchmarks/raw, mem_used_mib_max).
ACTIVATION_HEADROOM_BYTES = 4 * GIB
WEIGHT_OVERHEAD = 1.15  # CUDA context, cuBLAS workspaces, fragmentation
# Two instances on one card: each process holds its own CUDA context and allocator reserve, and one SDXL instance
# was seen using 12.9 GiB at its peak; so two SDXL instances are planned only with this margin (an RTX 4090 runs
# one, an H100 two).
PROCESS_CONTEXT_BYTES = GIB * 3 // 4
TWIN_USABLE_FRACTION = 0.9
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
        return VramChoice(OFFLOAD_MODE, OFFLOAD_FLAGS, f"no models known yet; {vram_bytes / GIB:.0f} GiB card is small")
    needed = needed_bytes(model_set_bytes)
    summary = f"models {model_set_bytes / GIB:.1f} GiB need {needed / GIB:.1f} GiB of {vram_bytes / GIB:.1f} GiB"
    if vram_bytes >= needed:
        return VramChoice("high", MODE_FLAGS["high"], summary)
    return VramChoice(OFFLOAD_MODE, OFFLOAD_FLAGS, f"{summary}: {OFFLOAD_MODE} loading from the file")


def needed_bytes(model_set_bytes: int) -> float:
    """What one instance needs on the GPU to hold these models resident and run them."""
    return model_set_bytes * WEIGHT_OVERHEAD + ACTIVATION_HEADROOM_BYTES


def instances_for_card(requested: str, vram_bytes: int | None, files: Iterable[ModelFile]) -> tuple[int, str]:
    """How many instances share one card (INSTANCES_PER_GPU), and why. `auto` runs two only where the warm-up
    workflow's models fit twice, each with its own room for activations; without known models, one."""
    if requested != "auto":
        return int(requested), "set by INSTANCES_PER_GPU"
    model_set = resident_bytes(files)
    if model_set == 0 or vram_bytes is None:
        return 1, "no warm-up models known" if model_set == 0 else "no GPU memory size known"
    needed = 2 * (needed_bytes(model_set) + PROCESS_CONTEXT_BYTES)
    usable = vram_bytes * TWIN_USABLE_FRACTION
    summary = (f"two instances of models {model_set / GIB:.1f} GiB need {needed / GIB:.1f} GiB of "
               f"{usable / GIB:.1f} GiB usable")
    return (2, summary) if usable >= needed else (1, f"{summary}: one instance")


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
    """ComfyUI's own models folder, then, per section of each extra_model_paths file, its `base_path` and the parent
    of each model folder it lists (`find_model_file` looks one folder deep), resolved the way ComfyUI's
    utils/extra_config.py resolves them. A file that cannot be read or parsed is left out with a warning."""
    roots = [comfyui_dir / "models"]
    for config in extra_model_paths:
        try:
            sections = yaml.safe_load(config.read_text(encoding="utf-8"))
            if not isinstance(sections, dict):
                raise ValueError("it is not a mapping of sections")
            here = config.parent.absolute()
            found = [root for section in sections.values() for root in _section_roots(section, here)]
            roots.extend(found)  # all of a file's roots or none
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as error:
            log.warning("%s is not searched for job model files (VRAM sizing, read-ahead): %s", config, error)
    return list(dict.fromkeys(roots))


def _section_roots(section: object, config_dir: Path) -> list[Path]:
    if section is None:
        return []
    if not isinstance(section, dict):
        raise ValueError(f"a section is {type(section).__name__}, not a mapping")
    base = section.get("base_path")
    if base is not None and not isinstance(base, str):
        raise ValueError(f"base_path {base!r} is not a path")
    # ComfyUI expands ~ and $VARS in base_path (only there) and reads relative paths from the file's folder.
    base_dir = _normalized(config_dir / os.path.expandvars(Path(base).expanduser())) if base else None
    roots = [base_dir] if base_dir else []
    for key, value in section.items():
        if key in ("base_path", "is_default", "custom_nodes") or not isinstance(value, str):
            continue
        for line in filter(None, value.split("\n")):
            roots.append(_normalized((base_dir or config_dir) / line).parent)
    return roots


def _normalized(path: Path) -> Path:
    return Path(os.path.normpath(path))
