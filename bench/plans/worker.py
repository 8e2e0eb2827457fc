"""The worker plan: the worker itself on one and on every GPU (P1, P2, P3, P6, P7), host RAM per instance."""

from __future__ import annotations

import json
import logging
import shutil

from probes import bf16_peak_tflops
from runner import (
    Bench,
    instances_of,
    memory_snapshot,
)

from comfy_worker.fleet.tuning import LaunchTuning, node_request, plan_launch_tuning

log = logging.getLogger("bench")


def plan_worker(bench: Bench) -> None:
    """The worker itself, on every GPU of the machine."""
    jobs = bench.args.jobs
    gpus = max(1, len(bench.gpus))
    sdxl_warmup = json.dumps(bench.workflow("sdxl"))
    cpu_env = {"COMFY_CPU_INSTANCES": "1"} if bench.args.cpu else {}
    bench.record("peak", bf16_peak_tflops(0) if not bench.args.cpu else {"bf16_tflops": None})

    def one_gpu() -> None:
        worker, start_s = bench.start_worker(COMFY_NUM_GPUS="0" if bench.args.cpu else "1", TORCH_COMPILE="off",
                                             **cpu_env)
        try:
            ready = dict(worker.startup_s)
            cold = bench.through_worker(worker, "sdxl", 1)
            steady = bench.through_worker(worker, "sdxl", 1)
            bench.record("w1_cold_start", {"start_s": round(start_s, 2), "startup": ready, "cold_job": cold,
                                           "next_job": steady, "ram": memory_snapshot(instances_of(worker))})
            bench.record("w1_p2_sdxl", bench.sequential_direct_vs_worker(worker, "sdxl", 5))
            bench.record("w1_sdxl", bench.through_worker(worker, "sdxl", jobs))
            bench.through_worker(worker, "sd15", 1)
            bench.record("w1_p2_sd15", bench.sequential_direct_vs_worker(worker, "sd15", 5))
            bench.record("w1_sd15", bench.through_worker(worker, "sd15", jobs * 2))
        finally:
            worker.stop()

    def all_gpus(name: str, **env: str) -> None:
        count = "2" if bench.args.cpu else ""
        worker, start_s = bench.start_worker(WARMUP_WORKFLOW=sdxl_warmup, COMFY_CPU_INSTANCES=count or "1", **env)
        try:
            first = bench.through_worker(worker, "sdxl", len(worker.fleet.instances))
            result = {"start_s": round(start_s, 2), "startup": dict(worker.startup_s), "first_jobs": first,
                      "ram": memory_snapshot(instances_of(worker))}
            result["sdxl"] = bench.through_worker(worker, "sdxl", jobs * gpus)
            if name != "w2_unpinned":
                result["sdxl_gpu0_only"] = bench.through_worker(worker, "sdxl", jobs, pin=0)
            if name == "w2_pinned":
                result["sd15"] = bench.through_worker(worker, "sd15", jobs * 2 * gpus)
            bench.record(name, result)
        finally:
            worker.stop()

    bench.phase("w1", 100, one_gpu)
    bench.phase("w2_pinned", 80, all_gpus, "w2_pinned", TORCH_COMPILE="off")
    bench.phase("w2_unpinned", 70, all_gpus, "w2_unpinned", TORCH_COMPILE="off", COMFY_CPU_PINNING="0")
    bench.phase("ram_high", 60, second_instance_ram, bench, "high")
    if bench.args.compile_modes and not bench.args.cpu:
        # the defaults: with WARMUP_WORKFLOW set, TORCH_COMPILE=auto compiles during the warm-up
        if not bench.args.keep_compile_cache:
            shutil.rmtree(bench.work / "compile-cache", ignore_errors=True)
        bench.phase("w2_defaults_compiled", 150, all_gpus, "w2_defaults_compiled")
    bench.phase("ram_dynamic", 60, second_instance_ram, bench, "dynamic")


def second_instance_ram(bench: Bench, mode: str) -> None:
    """P3: host RAM added by a second instance holding the same model, in a VRAM mode."""
    settings = bench.settings(COMFY_VRAM_MODE=mode)
    gpu_ids = [g.index for g in bench.gpus][:2] or [None, None]
    tunings = plan_launch_tuning(settings, bench.gpus, gpu_ids) if bench.gpus else [LaunchTuning(), LaunchTuning()]
    before = memory_snapshot({})
    first, _ = bench.direct(settings, gpu_ids[0], tunings[0], node_request(settings, on_gpu=False))
    second = None
    try:
        one = bench.steady(first, "sdxl", 2)
        after_first = memory_snapshot({"a": first})
        if len(bench.gpus) < 2 and not bench.args.cpu:
            bench.record(f"ram_{mode}", {"note": "one GPU only", "before": before, "after_first": after_first})
            return
        second, _ = bench.direct(settings, gpu_ids[1], tunings[1], node_request(settings, on_gpu=False))
        two = bench.steady(second, "sdxl", 2)
        after_second = memory_snapshot({"a": first, "b": second})
        model_bytes = sum(v for k, v in bench.results["models"].get("files", {}).items()
                          if k in ("sdxl_unet.safetensors", "clip_l.safetensors", "clip_g.safetensors",
                                   "sd_vae.safetensors"))
        added = {key: after_second["meminfo"][key] - after_first["meminfo"][key]
                 for key in ("Used", "AnonPages", "Cached", "Shmem")}
        bench.record(f"ram_{mode}", {
            "before": before, "after_first": after_first, "after_second": after_second, "added_mib": added,
            "model_files_mib": round(model_bytes / 2**20),
            "p3_used": round(added["Used"] * 2**20 / model_bytes, 3) if model_bytes else None,
            "first_its": one["its_median"], "second_its": two["its_median"],
            "flags": list(tunings[0].flags),
        })
    finally:
        first.stop()
        if second:
            second.stop()
