"""The ComfyUI instances: where ComfyUI is, how many instances run, on which ports, with which flags."""

from __future__ import annotations

import ipaddress
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from comfy_worker.settings.reader import REPO_ROOT, EnvReader, SettingsError, Variable

FLEET = (
    Variable("COMFYUI_DIR", "<repo>/.comfyui/ComfyUI", "The ComfyUI installation every instance runs.", "fleet"),
    Variable("COMFY_PYTHON", "<this interpreter>", "The Python that runs ComfyUI.", "fleet"),
    Variable("COMFY_WORK_DIR", "<repo>/.work",
             "Root of each instance's own user, database, input, output and temp folders.", "fleet"),
    Variable("COMFY_NUM_GPUS", "all visible",
             "How many GPUs get an instance; 0 runs CPU instances even where GPUs exist.", "fleet"),
    Variable("COMFY_MULTI_GPU_SCHED", "1", "0 runs a single instance on GPU 0 (the rollback switch).", "fleet"),
    Variable("COMFY_CPU_INSTANCES", "1", "How many CPU instances run on a machine without a GPU.", "fleet"),
    Variable("INSTANCES_PER_GPU", "auto",
             "ComfyUI instances on each GPU: 1, 2 (one samples while the other saves its outputs: SDXL 1.57x the "
             "images/min of one instance on an H200, docs/benchmarks/stream.md), or auto (2 where the warm-up "
             "workflow's models fit twice in 90 % of the card with room for activations and a CUDA context each: "
             "an H100 runs two SDXL instances, an RTX 4090 one; else 1). Each "
             "instance gets its own port, folders, CPU cores and half the card for its VRAM mode; CPU-only machines "
             "ignore it (COMFY_CPU_INSTANCES decides).", "fleet"),
    Variable("COMFY_HOST", "127.0.0.1", "Address the instances listen on (loopback only).", "fleet"),
    Variable("COMFY_BASE_PORT", "8188", "Instance i listens on this port + i.", "fleet"),
    Variable("COMFY_EXTRA_ARGS", "", "Extra ComfyUI command-line flags for every instance.", "fleet"),
    Variable("COMFY_EXTRA_MODEL_PATHS", "",
             "extra_model_paths.yaml files (separated by ':') for every instance, e.g. a network volume.", "fleet"),
    Variable("COMFY_CUSTOM_NODES_DIRS", "",
             "Extra custom-node folders (separated by ':') loaded by every instance.", "fleet"),
    Variable("COMFY_START_TIMEOUT_S", "300", "Seconds an instance may take to answer after it starts.", "fleet"),
    Variable("COMFY_CACHE", "classic",
             "ComfyUI's node-output cache: classic (the last workflow's outputs only), ram (ComfyUI's own default: "
             "every workflow's outputs until RAM runs short, on a 512 GiB host 12.7 MiB per SDXL job), none, or "
             "lru:N.",
             "fleet"),
    Variable("COMFY_RESTART_DEAD", "1", "Restart an instance whose process exits while the worker runs.", "fleet"),
)

INSTANCES_PER_GPU = ("auto", "1", "2")
CACHE_FLAGS = {"classic": ("--cache-classic",), "ram": (), "none": ("--cache-none",)}


@dataclass(frozen=True)
class FleetSettings:
    comfyui_dir: Path
    comfy_python: str
    work_dir: Path
    num_gpus: int | None
    multi_gpu: bool
    cpu_instances: int
    instances_per_gpu: str  # "1", "2" or "auto"
    host: str
    base_port: int
    extra_args: tuple[str, ...]
    extra_model_paths: tuple[Path, ...]
    custom_nodes_dirs: tuple[Path, ...]
    start_timeout_s: float
    cache_flags: tuple[str, ...]
    restart_dead: bool

    @classmethod
    def read(cls, env: EnvReader) -> FleetSettings:
        return cls(
            comfyui_dir=Path(env.raw("COMFYUI_DIR") or REPO_ROOT / ".comfyui" / "ComfyUI").expanduser(),
            comfy_python=env.raw("COMFY_PYTHON") or sys.executable,
            work_dir=env.work_dir(),
            num_gpus=env.integer("COMFY_NUM_GPUS", 0) if env.raw("COMFY_NUM_GPUS") else None,
            multi_gpu=env.flag("COMFY_MULTI_GPU_SCHED", True),
            cpu_instances=env.integer("COMFY_CPU_INSTANCES", 1, minimum=1),
            instances_per_gpu=env.choice("INSTANCES_PER_GPU", INSTANCES_PER_GPU),
            host=loopback_host(env.raw("COMFY_HOST") or "127.0.0.1"),
            base_port=env.integer("COMFY_BASE_PORT", 8188, minimum=1),
            extra_args=tuple(shlex.split(env.raw("COMFY_EXTRA_ARGS"))),
            extra_model_paths=env.paths("COMFY_EXTRA_MODEL_PATHS"),
            custom_nodes_dirs=env.paths("COMFY_CUSTOM_NODES_DIRS"),
            start_timeout_s=env.number("COMFY_START_TIMEOUT_S", 300, minimum=1),
            cache_flags=comfy_cache_flags(env.raw("COMFY_CACHE").lower() or "classic"),
            restart_dead=env.flag("COMFY_RESTART_DEAD", True),
        )


def loopback_host(host: str) -> str:
    """COMFY_HOST, refused unless it is a loopback address: ComfyUI has no authentication."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SettingsError(f"COMFY_HOST={host!r} is not a loopback address: ComfyUI has no authentication, so its "
                            "instances listen on 127.0.0.1 only")
    return host


def comfy_cache_flags(value: str) -> tuple[str, ...]:
    """COMFY_CACHE → ComfyUI's cache flag."""
    if value in CACHE_FLAGS:
        return CACHE_FLAGS[value]
    size = value.removeprefix("lru:")
    if value.startswith("lru:") and size.isdigit() and int(size) > 0:
        return ("--cache-lru", size)
    raise SettingsError(f"COMFY_CACHE={value!r} is not one of classic, ram, none or lru:N (N > 0)")
