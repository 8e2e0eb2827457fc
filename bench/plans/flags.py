"""The flags plan: ComfyUI configurations on one GPU, jobs posted straight to each instance (P4, P5, P6)."""

from __future__ import annotations

import logging
import shutil
from typing import Any

from probes import bf16_peak_tflops
from runner import (
    Bench,
)

from comfy_worker.fleet.tuning import LaunchTuning, node_request, plan_launch_tuning
from comfy_worker.settings import Settings

log = logging.getLogger("bench")


def plan_flags(bench: Bench) -> None:
    """One GPU, instances one after another; jobs posted straight to ComfyUI."""
    jobs = bench.args.jobs
    gpu = 0
    bench.record("peak", bf16_peak_tflops(gpu) if not bench.args.cpu else {"bf16_tflops": None})
    base = bench.settings()
    pinned = plan_launch_tuning(base, bench.gpus, [gpu])[0] if not bench.args.cpu else LaunchTuning()

    def configuration(name: str, tuning: LaunchTuning, switches: dict[str, Any] | None, kind: str = "sdxl",
                      keep: bool = False, settings: Settings = base):
        instance, ready_s = bench.direct(settings, gpu, tuning, switches)
        try:
            result = bench.cold_then_steady(instance, ready_s, kind, jobs)
            result["cpus"] = tuning.cpu_set.describe() if tuning.cpu_set else "all"
            bench.record(name, result)
        finally:
            if not keep:
                instance.stop()
        return instance

    torch_defaults = {"tf32": False, "cudnn_benchmark": False, "compile": None}
    # 1. ComfyUI's defaults: no flag, no pinning, torch's own switches (the node is loaded but not asked)
    bench.phase("vanilla", 60, configuration, "vanilla", LaunchTuning(), None)
    # 2. the best uncompiled configuration known before: --highvram, native allocator with max_split_size_mb:512,
    #    pinned, torch's switches
    native = LaunchTuning(("--highvram", "--disable-cuda-malloc"), {**pinned.env,
                          "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}, pinned.cpu_set, pinned.vram)
    instance = bench.phase("prior_best", 60, configuration, "prior_best", native, torch_defaults, "sdxl", True)
    if instance is not None:
        try:
            for name, switches in (("switch_tf32", {"tf32": True, "cudnn_benchmark": False}),
                                   ("switch_cudnn_benchmark", {"tf32": False, "cudnn_benchmark": True}),
                                   ("switch_none_again", torch_defaults)):
                def toggled(switches=switches):
                    instance.switches = instance.client.apply_tuning({**switches, "compile": None})
                    result = bench.steady(instance, "sdxl", jobs)
                    result["switches"] = instance.switches.get("applied")
                    return result
                result = bench.phase(name, 30, toggled)
                if result:
                    bench.record(name, result)
        finally:
            instance.stop()
    # 3. the allocator alone: ComfyUI's cudaMallocAsync with everything else as in 2
    async_alloc = LaunchTuning(("--highvram",), pinned.env, pinned.cpu_set, pinned.vram)
    bench.phase("async_allocator", 60, configuration, "async_allocator", async_alloc, torch_defaults)
    # 4. unpinned, else as 2
    unpinned = LaunchTuning(native.flags, {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}, None, pinned.vram)
    bench.phase("unpinned", 60, configuration, "unpinned", unpinned, torch_defaults)
    # 5. SD1.5-size jobs, vanilla and ours
    bench.phase("sd15_vanilla", 45, configuration, "sd15_vanilla", LaunchTuning(), None, "sd15")
    ours = node_request(bench.settings(WARMUP_WORKFLOW="{}"), on_gpu=True)  # the worker's defaults, compile too
    ours_switches = {**ours, "compile": None}
    bench.phase("sd15_ours", 45, configuration, "sd15_ours", native, ours_switches, "sd15")
    if bench.args.cpu:
        return
    # 6. torch.compile (inductor) of the diffusion model on load: cold cache, then a new process on the warm cache
    if not bench.args.keep_compile_cache:
        shutil.rmtree(bench.work / "compile-cache", ignore_errors=True)
    for mode in bench.args.compile_modes.split(","):
        compiled = {**ours, "compile": {"backend": "inductor", "mode": None if mode == "default" else mode}}
        bench.phase(f"compile_{mode}_cold_cache", 200, configuration, f"compile_{mode}_cold_cache", native, compiled)
        bench.phase(f"compile_{mode}_warm_cache", 90, configuration, f"compile_{mode}_warm_cache", native, compiled)
