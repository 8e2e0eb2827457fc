"""The stream plan (issue 15): on one GPU, a stream of SDXL 1024² jobs submitted at once, as RunPod submits them,
through vanilla ComfyUI and through the worker in four configurations; images/min, where each job's time went, and
the GPU busy timeline with each job's span per instance (P8, P5b)."""

from __future__ import annotations

import logging
import time
from typing import Any

from probes import GpuSampler
from runner import Bench, median

from comfy_worker.fleet.tuning import LaunchTuning

log = logging.getLogger("bench")

WARM_JOBS = 2
# a CPU dry run proves the path, not the numbers: fewer and smaller jobs, so that its five phases fit 400 s
CPU_STREAM_JOBS, CPU_WARM_JOBS, CPU_SHAPE = 2, 1, {"resolution": 64, "steps": 1}
# the most informative first, so that a short deadline skips the least informative
PHASES: tuple[tuple[str, dict[str, str] | None], ...] = (
    ("s_vanilla", None),
    ("s_w1", {}),
    ("s_w2_png1", {"INSTANCES_PER_GPU": "2", "PNG_COMPRESS_LEVEL": "1"}),
    ("s_w2", {"INSTANCES_PER_GPU": "2"}),
    ("s_w1_png1", {"PNG_COMPRESS_LEVEL": "1"}),
)
# seconds a phase needs on the H200 with 20 jobs (start, 2 warm jobs with the model load, the stream, stop),
# estimated from earlier runs, not yet measured: a worker starts in 15 s and makes 40.8 uncompiled SDXL images/min,
# vanilla about 20. A worker phase that took longer raises the estimate for the next ones.
NEEDS_S = {"vanilla": 85.0, "worker": 55.0}


def plan_stream(bench: Bench) -> None:
    jobs = min(bench.args.stream_jobs, CPU_STREAM_JOBS) if bench.args.cpu else bench.args.stream_jobs
    warm = CPU_WARM_JOBS if bench.args.cpu else WARM_JOBS
    if bench.args.cpu:
        bench.cpu_shape = CPU_SHAPE
    spent: dict[str, float] = {}
    for name, env in PHASES:
        worker_spent = [seconds for phase, seconds in spent.items() if phase != "s_vanilla"]
        needs = NEEDS_S["vanilla"] if env is None else max([NEEDS_S["worker"], *worker_spent])
        started = time.monotonic()
        if env is None:
            bench.phase(name, needs, vanilla_stream, bench, name, jobs, warm)
        else:
            bench.phase(name, needs, worker_stream, bench, name, jobs, warm, env)
        spent[name] = time.monotonic() - started
    bench.record("stream_summary", stream_summary(bench.results["phases"], bench.args.cpu))


def vanilla_stream(bench: Bench, name: str, jobs: int, warm_jobs: int) -> None:
    """ComfyUI's defaults (no flag, no pinning, the tuning node not asked, as plans/flags.py starts vanilla), the
    same prompts queued at once straight to its /prompt."""
    instance, ready_s = bench.direct(bench.settings(), 0, LaunchTuning(), None)
    try:
        warm = bench.post_and_wait(instance, [bench.workflow("sdxl") for _ in range(warm_jobs)])
        workflows = [bench.workflow("sdxl") for _ in range(jobs)]
        with GpuSampler() as sampler:
            wall_started = time.time()
            done = bench.post_and_wait(instance, workflows)
        wall = max(job["done_s"] for job in done)
        spans = [{"instance": "vanilla", "ok": job["ok"], "submitted_s": 0.0,
                  "started_s": round(job["done_s"] - job["exec_s"], 3) if job["exec_s"] is not None else None,
                  "done_s": job["done_s"]} for job in done]
        ok = sum(job["ok"] for job in done)
        bench.record(name, {
            "configuration": "vanilla ComfyUI defaults, jobs posted to /prompt", "env": {}, "instances": ["vanilla"],
            "ready_s": round(ready_s, 2), "warm_s": [job["done_s"] for job in warm],
            "jobs": jobs, "ok": ok, "failed": jobs - ok, "wall_s": round(wall, 3),
            "images_per_min": round(ok / wall * 60, 2), "exec_s_median": median([job["exec_s"] for job in done]),
            "its_median": median([job["its"] for job in done]), "phases_ms_median": {}, "timings_ms_median": {},
            "job_spans": spans, **busy_record(sampler, wall_started, wall),
        })
    finally:
        instance.stop()


def worker_stream(bench: Bench, name: str, jobs: int, warm_jobs: int, env: dict[str, str]) -> None:
    """The worker on one GPU, uncompiled, with `env` on top of its defaults; jobs handed to Worker.handle at once."""
    settings_env = {"TORCH_COMPILE": "off", **env}
    if bench.args.cpu:  # no GPU to share: two CPU instances stand in for two instances on the GPU
        settings_env["COMFY_CPU_INSTANCES"] = "2" if env.get("INSTANCES_PER_GPU") == "2" else "1"
    else:
        settings_env["COMFY_NUM_GPUS"] = "1"
    worker, start_s = bench.start_worker(**settings_env)
    try:
        warm = bench.through_worker(worker, "sdxl", warm_jobs)
        stream = bench.through_worker(worker, "sdxl", jobs, timeline=True)
        ok = stream["ok"]
        stream.update(
            configuration=f"worker, {' '.join(f'{k}={v}' for k, v in env.items()) or 'defaults'}, TORCH_COMPILE=off",
            env=settings_env, instances=[instance.label for instance in worker.fleet.instances],
            start_s=round(start_s, 2), startup=dict(worker.startup_s), warm_ok=warm["ok"], failed=jobs - ok,
            images_per_min_all=stream["images_per_min"], images_per_min=round(ok / stream["wall_s"] * 60, 2),
        )
        stream.update(busy_summary(stream))
        bench.record(name, stream)
    finally:
        worker.stop()


def busy_record(sampler: GpuSampler, wall_started: float, wall: float) -> dict[str, Any]:
    record = sampler.busy_record(wall_started, wall_started + wall)
    return {**record, **busy_summary(record)}


def busy_summary(record: dict[str, Any]) -> dict[str, Any]:
    return {"busy_pct_stream": first_gpu(record["busy_pct"]),
            "sampler_note": None if record["gpu_timeline"] else f"no GPU samples: {record['sampler']['error']}"}


def first_gpu(busy: dict[Any, float | None]) -> float | None:
    """Busy % of the GPU the stream ran on (the lowest index sampled: the worker runs on GPU 0 here)."""
    return busy[min(busy)] if busy else None


def stream_summary(phases: dict[str, Any], cpu: bool) -> dict[str, Any]:
    """P8: the best worker phase's images/min / vanilla's; P5b: GPU busy % during that phase. Only phases without a
    failed job count as best."""
    rates = {name: phases[name]["images_per_min"] for name, _ in PHASES if name in phases}
    vanilla = rates.get("s_vanilla")
    clean = {name: rate for name, rate in rates.items()
             if name != "s_vanilla" and phases[name].get("failed") == 0 and rate}
    best = max(clean, key=lambda name: clean[name]) if clean else None
    return {
        "P8": round(clean[best] / vanilla, 3) if best and vanilla else None,
        "P5b": phases[best].get("busy_pct_stream") if best else None,
        "best_phase": best,
        "images_per_min": rates,
        "ratio_to_vanilla": {name: round(rate / vanilla, 3) for name, rate in rates.items() if vanilla},
        "busy_pct": {name: phases[name].get("busy_pct_stream") for name in rates},
        "note": "a CPU dry run: tiny SD1.5 jobs, no GPU samples; not a result" if cpu else None,
    }
