"""The scaling plan: 1…N instances, concurrent soak runs, images per minute and host RAM per instance."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from probes import MIB, GpuSampler, meminfo_mib, smaps_mib
from runner import (
    Bench,
    check_png_answer,
    instances_of,
    median,
    memory_snapshot,
    sdxl_model_bytes,
)

from comfy_worker.worker import Worker

log = logging.getLogger("bench")


def plan_scaling(bench: Bench) -> None:
    """The worker on 1, 2 and 4 GPUs (separate workers, same job mix): throughput, host RAM per extra instance, the
    per-GPU balance; then a concurrent run of --soak-s seconds on every GPU for each COMFY_CACHE value in
    --soak-caches, every answer checked, RAM sampled."""
    counts = [n for n in (1, 2, 4, 8) if n <= max(len(bench.gpus), 2 if bench.args.cpu else 1)]
    sdxl_warmup = json.dumps(bench.workflow("sdxl"))
    model_bytes = sdxl_model_bytes(bench)
    baseline = meminfo_mib()
    bench.record("scaling_baseline", {"meminfo": baseline, "model_files_mib": round(model_bytes / MIB),
                                      "counts": counts})

    def run(count: int) -> None:
        before = meminfo_mib()
        worker, start_s = bench.start_worker(WARMUP_WORKFLOW=sdxl_warmup, TORCH_COMPILE="off", **instances(count))
        try:
            bench.through_worker(worker, "sdxl", count)  # every instance past its first real job
            ram = memory_snapshot(instances_of(worker))
            result = bench.through_worker(worker, "sdxl", bench.args.jobs * count)
            result.update(start_s=round(start_s, 2), startup=dict(worker.startup_s), instances=count, ram=ram,
                          host_used_added_mib=ram["meminfo"]["Used"] - before["Used"])
            bench.record(f"scale_{count}", result)
            if count == counts[-1] and caches and caches[0] == "classic":  # COMFY_CACHE's default: this worker
                soak_phase(worker, count, caches.pop(0))
        finally:
            worker.stop()

    def soak_phase(worker: Worker | None, count: int, cache: str) -> None:
        seconds = min(bench.args.soak_s, bench.left() - 15 - (0 if worker else 30))
        if worker is not None:
            bench.record(f"soak_{count}_{cache}", soak(bench, worker, seconds, clients=2 * count))
            return
        worker, _ = bench.start_worker(WARMUP_WORKFLOW=sdxl_warmup, TORCH_COMPILE="off", COMFY_CACHE=cache,
                                       **instances(count))
        try:
            bench.record(f"soak_{count}_{cache}", soak(bench, worker, seconds, clients=2 * count))
        finally:
            worker.stop()

    def instances(count: int) -> dict[str, str]:
        if bench.args.cpu:
            return {"COMFY_NUM_GPUS": "0", "COMFY_CPU_INSTANCES": str(count)}
        return {"COMFY_NUM_GPUS": str(count)}

    caches = [c for c in bench.args.soak_caches.split(",") if c] if bench.args.soak_s else []
    for count in counts:
        bench.phase(f"scale_{count}", 45, run, count)
    bench.record("scaling_summary", scaling_summary(bench.results["phases"], counts, model_bytes))
    for cache in caches:
        bench.phase(f"soak_{counts[-1]}_{cache}", 60, soak_phase, None, counts[-1], cache)


def scaling_summary(phases: dict[str, Any], counts: list[int], model_bytes: int) -> dict[str, Any]:
    rows = {n: phases[f"scale_{n}"] for n in counts if f"scale_{n}" in phases}
    if 1 not in rows:
        return {"error": "no 1-instance run"}
    one = rows[1]["images_per_min"]
    used_one = rows[1]["host_used_added_mib"]
    summary: dict[str, Any] = {"images_per_min": {n: r["images_per_min"] for n, r in rows.items()},
                               "ratio_to_one": {n: round(r["images_per_min"] / one, 3) for n, r in rows.items()},
                               "host_used_added_mib": {n: r["host_used_added_mib"] for n, r in rows.items()},
                               "per_instance_jobs": {n: r["per_instance"] for n, r in rows.items()}}
    summary["ram_per_extra_instance_mib"] = {
        n: round((r["host_used_added_mib"] - used_one) / (n - 1)) for n, r in rows.items() if n > 1}
    if model_bytes:
        summary["ram_per_extra_instance_over_model"] = {
            n: round(mib * MIB / model_bytes, 3) for n, mib in summary["ram_per_extra_instance_mib"].items()}
    return summary


def soak(bench: Bench, worker: Worker, seconds: float, clients: int) -> dict[str, Any]:
    """`clients` callers each hand the worker one job after another for `seconds`; every answer is checked (one
    PNG of the workflow's size); RAM is sampled every 10 s."""
    records: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    started = time.monotonic()
    end = started + seconds
    worker_pid = os.getpid()
    expected = 128 if bench.args.cpu else 1024

    async def client(number: int) -> None:
        while time.monotonic() < end:
            job_id = f"soak-{number}-{len(records)}"
            sent = time.monotonic()
            result = await worker.handle({"id": job_id, "input": {"workflow": bench.workflow("sdxl")}})
            problem = result.get("error") or check_png_answer(result, expected)
            records.append({"id": job_id, "t_s": round(sent - started, 2), "s": round(time.monotonic() - sent, 3),
                            "instance": result.get("instance"), "prompt_id": result.get("prompt_id"),
                            "error": problem})

    async def sample_memory() -> None:
        while time.monotonic() < end:
            memory.append({"t_s": round(time.monotonic() - started, 1), "used_mib": meminfo_mib()["Used"],
                           "worker_rss_mib": smaps_mib(worker_pid).get("Rss"),
                           "instances_rss_mib": {i.label: smaps_mib(i.pid).get("Rss")
                                                 for i in worker.fleet.instances}})
            await asyncio.sleep(10)

    async def run_all() -> None:
        await asyncio.gather(sample_memory(), *(client(n) for n in range(clients)))

    with GpuSampler() as sampler:
        bench.loop.run_until_complete(run_all())
    wall = time.monotonic() - started
    failures = [r for r in records if r["error"]]
    per_instance: dict[str, int] = {}
    for record in records:
        per_instance[record["instance"] or "none"] = per_instance.get(record["instance"] or "none", 0) + 1
    rss_growth = {label: memory[-1]["instances_rss_mib"][label] - memory[0]["instances_rss_mib"][label]
                  for label in memory[0]["instances_rss_mib"]} if len(memory) > 1 else {}
    prompt_ids = [r["prompt_id"] for r in records if r["prompt_id"]]  # two jobs given one prompt's outputs share one
    return {"seconds": round(wall, 1), "clients": clients, "jobs": len(records), "failures": len(failures),
            "failed": failures[:5], "answers_shared": len(prompt_ids) - len(set(prompt_ids)),
            "images_per_min": round(len(records) / wall * 60, 2), "per_instance": per_instance,
            "job_s_median": median([r["s"] for r in records]),
            "job_s_max": max((r["s"] for r in records), default=None),
            "instances_rss_growth_mib": rss_growth,
            "host_used_growth_mib": memory[-1]["used_mib"] - memory[0]["used_mib"] if memory else None,
            "memory": memory, "gpu": sampler.summary(), "jobs_timeline": [[r["t_s"], r["s"]] for r in records]}
