"""How each GPU instance is tuned: its CPU cores and threads, its VRAM mode, its allocator, its compile cache, and
the in-process torch switches our custom node applies. Every default here is the measured best
(docs/benchmarks/README.md); settings/performance.py documents the switches."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfy_worker.fleet.cpu_layout import CpuSet, available_cpus, gpu_numa_node, numa_node_cpus, plan_cpu_sets
from comfy_worker.fleet.gpus import Gpu
from comfy_worker.fleet.vram import MODE_FLAGS, OFFLOAD_MODE, VramChoice, job_vram_choice
from comfy_worker.models.files import ModelFile
from comfy_worker.settings import Settings

if TYPE_CHECKING:  # instance.py imports this module
    from comfy_worker.fleet.instance import InstanceSpec

log = logging.getLogger("comfy_worker.tuning")

WORKER_NODES_DIR = Path(__file__).resolve().parents[2] / "comfyui_nodes"  # comfy_worker_tuning, in every instance


@dataclass(frozen=True)
class LaunchTuning:
    """What an instance is started with, beyond its folders and port."""

    flags: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cpu_set: CpuSet | None = None
    vram: VramChoice | None = None

    def describe(self) -> str:
        parts = []
        if self.vram:
            parts.append(f"VRAM mode {self.vram.mode} ({self.vram.reason})")
        if self.cpu_set:
            parts.append(self.cpu_set.describe())
        return "; ".join(parts) or "ComfyUI defaults"


def plan_launch_tuning(settings: Settings, gpus: list[Gpu], instance_gpus: list[int | None],
                       warmup_files: list[ModelFile] | None = None) -> list[LaunchTuning]:
    """One LaunchTuning per instance; CPU instances (tests, CPU-only machines) get none. A GPU instance starts in
    the VRAM mode the warm-up workflow's model files need (none: the card's size decides) in its share of the card
    (the card split evenly between the instances on it); instances of one GPU split the cores meant for it."""
    by_index = {gpu.index: gpu for gpu in gpus}
    gpu_instances = [gpu for gpu in instance_gpus if gpu is not None]
    cpu_sets: list[CpuSet | None] = [None] * len(gpu_instances)
    if settings.cpu_pinning and gpu_instances:
        nodes = [gpu_numa_node(by_index[g].pci_bus_id) if g in by_index else None for g in gpu_instances]
        cpu_sets = list(plan_cpu_sets(available_cpus(), nodes, numa_node_cpus(), settings.worker_cpus,
                                      settings.threads_per_instance))
    warmup_files = warmup_files or []
    user_vram_flags = user_vram_flags_of(settings)
    user_malloc_flags = [arg for arg in settings.extra_args if arg in ("--cuda-malloc", "--disable-cuda-malloc")]
    result = []
    position = 0
    for gpu in instance_gpus:
        if gpu is None:
            result.append(LaunchTuning())
            continue
        card = by_index.get(gpu)
        if user_vram_flags:  # ComfyUI refuses two VRAM flags: the user's own wins
            vram = VramChoice("custom", (), f"COMFY_EXTRA_ARGS sets {' '.join(user_vram_flags)}")
        else:
            share = (card.memory_total_mib << 20) // instance_gpus.count(gpu) if card else None
            vram = job_vram_choice(settings.vram_mode, share, warmup_files)
        cpu_set = cpu_sets[position] if position < len(cpu_sets) else None
        position += 1
        flags = list(vram.flags)
        if settings.cuda_malloc == "native" and not user_malloc_flags:
            flags.append("--disable-cuda-malloc")
        env = {
            "TORCHINDUCTOR_CACHE_DIR": str(settings.compile_cache_dir / "inductor"),
            "TRITON_CACHE_DIR": str(settings.compile_cache_dir / "triton"),
        }
        if cpu_set:
            threads = str(cpu_set.threads)
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        result.append(LaunchTuning(tuple(flags), env, cpu_set, vram))
    return result


def user_vram_flags_of(settings: Settings) -> list[str]:
    vram_flags = {flag for flags in MODE_FLAGS.values() for flag in flags}
    return [arg for arg in settings.extra_args if arg in vram_flags]


def vram_switch(settings: Settings, tuning: LaunchTuning, vram_bytes: int | None, files: list[ModelFile]
                ) -> LaunchTuning | None:
    """The tuning an instance must be restarted with so that this job's models run in the mode they need; None when
    its mode already suits them (or the mode is not the worker's to choose: COMFY_VRAM_MODE or the user's flags)."""
    if settings.vram_mode != "auto" or tuning.vram is None or tuning.vram.mode == "custom" or vram_bytes is None:
        return None
    needed = job_vram_choice("auto", vram_bytes, files)
    if not files or needed.mode == tuning.vram.mode:
        return None
    others = tuple(flag for flag in tuning.flags if flag not in tuning.vram.flags)
    return LaunchTuning(needed.flags + others, tuning.env, tuning.cpu_set, needed)


def shared_gpu_offload_warning(spec: InstanceSpec, mode: str, sibling_labels: list[str]) -> str | None:
    """The job's warning when its instance must offload its models (dynamic VRAM mode) while other instances share
    its GPU (INSTANCES_PER_GPU): two instances only pay off for models that fit twice."""
    if mode != OFFLOAD_MODE or not sibling_labels:
        return None
    return (f"{spec.label} offloads this job's models ({OFFLOAD_MODE} VRAM mode) while {', '.join(sibling_labels)} "
            f"shares GPU {spec.gpu}: two instances on one GPU only pay off for models that fit twice in it; set "
            "INSTANCES_PER_GPU=1 (or auto) for such workflows")


def node_request(settings: Settings, on_gpu: bool) -> dict[str, Any]:
    """The body POSTed to /worker/tuning once an instance answers."""
    compile_options = None
    if on_gpu and settings.torch_compile != "off":
        mode = settings.torch_compile_mode or None
        if mode == "reduce-overhead" and settings.cuda_malloc == "async":
            # CUDA graphs fail under cudaMallocAsync (checkPoolLiveAllocations is unsupported): compile without them
            log.warning("TORCH_COMPILE_MODE=reduce-overhead needs COMFY_CUDA_MALLOC=native; compiling without "
                        "CUDA graphs")
            mode = None
        compile_options = {"backend": settings.torch_compile, "mode": mode}
    fast_load = {"threads": settings.fast_load_threads} if on_gpu and settings.fast_load_threads > 0 else None
    return {"tf32": settings.tf32, "cudnn_benchmark": settings.cudnn_benchmark, "compile": compile_options,
            "fast_load": fast_load, "png_compress_level": settings.png_compress_level}

