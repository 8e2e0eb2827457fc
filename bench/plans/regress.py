"""The regress plan (issue 15's "nothing regresses"): on one GPU, the worker's defaults with SDXL 1024² 20 steps as
WARMUP_WORKFLOW (so compiled, from the artefact), with two instances on the GPU ("twins", INSTANCES_PER_GPU=2,
what `auto` runs for SDXL on an H100 or H200) and with one (INSTANCES_PER_GPU=1). For each:

    P2      a job through the worker (Worker.handle, base64 answer) / the same workflow posted straight to the same
            instance, one at a time, alternating, 7 each: Bench.sequential_direct_vs_worker, as p2probe measured it
    P6      execution seconds of the first job on each instance after ready − a steady job's (the first jobs are
            one per instance at once, the steady ones 3 rounds of as many at once, so twins share the GPU in both)
    memory  with the SDXL model loaded (after the jobs): host RSS and PSS of each ComfyUI process and of the
            worker's (this benchmark's process hosts the worker, as handler.py does), MemTotal − MemAvailable,
            VRAM per instance from ComfyUI's own torch counters (GET /system_stats) and the card's NVML total

Phases, in the order the deadline keeps them (the last is skipped first):

    prime   only where no artefact is on disk (one carried in by run_on_device.sh is used as it is): the cold-start
            plan's prime phase (every cache wiped, `comfy_worker.prime` compiles the warm-up and saves the
            artefact), so the workers after it start compiled, as a primed deployment does
    twins   INSTANCES_PER_GPU=2
    one     INSTANCES_PER_GPU=1

`regress_summary` (the last record) says which phases ran and which were skipped. A CPU dry run (--cpu) runs every
phase end to end on CPU instances with SD1.5 64² 1-step jobs: nothing compiles there (prime says why it skipped),
two CPU instances stand in for the twins.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from probes import GpuSampler
from runner import Bench, instances_of, median, memory_snapshot, process_memory

from comfy_worker.errors import WorkerError
from comfy_worker.fleet.instance import ComfyInstance
from comfy_worker.fleet.vram import instances_for_card
from comfy_worker.jobs.warmup import warmup_model_files
from comfy_worker.worker import Worker
from plans.coldstart import PRIME_NEEDS_S, artifact_dir, phase_prime
from plans.stream import CPU_SHAPE

P2_ROUNDS, CPU_P2_ROUNDS = 7, 2
STEADY_ROUNDS = 3
PHASES = (("twins", "2"), ("one", "1"))  # (phase, instances on the GPU)
# seconds a worker phase needs on the H200, estimated (not measured): ready with the artefact 44-47 s in the
# cold-start run, 1 + 3 rounds of ≈ 1 s jobs, 7 P2 pairs ≈ 15 s, the stop; a phase that took longer raises it
WORKER_NEEDS_S = 90.0
MIB = 1 << 20
SHOWN_SETTINGS = ("COMFY_NUM_GPUS", "INSTANCES_PER_GPU", "COMFY_CPU_INSTANCES")  # what a phase sets (and the rest)


def plan_regress(bench: Bench) -> None:
    bench.results["command"] = " ".join(sys.argv)
    if bench.args.cpu:
        bench.cpu_shape = CPU_SHAPE
    env = {"WARMUP_WORKFLOW": json.dumps(bench.workflow("sdxl")), "COMPILE_ARTIFACT_DIR": str(artifact_dir(bench))}
    carried = sorted(str(path.relative_to(artifact_dir(bench))) for path in artifact_dir(bench).rglob("*.megacache"))
    bench.results["artifacts_before"] = carried
    if not carried:
        bench.phase("prime", PRIME_NEEDS_S, phase_prime, bench, {**env, **on_one_gpu(bench, "1")})
    needs = WORKER_NEEDS_S
    for name, per_gpu in PHASES:
        started = time.monotonic()
        bench.phase(name, needs, worker_phase, bench, name, {**env, **on_one_gpu(bench, per_gpu)})
        if name in bench.results["phases"]:
            needs = max(needs, time.monotonic() - started)
    bench.record("regress_summary", regress_summary(bench.results["phases"], bench.args.phases, bench.args.cpu))


def on_one_gpu(bench: Bench, instances: str) -> dict[str, str]:
    """The settings for `instances` ComfyUI instances on GPU 0; on a CPU dry run, that many CPU instances."""
    if bench.args.cpu:
        return {"COMFY_NUM_GPUS": "0", "COMFY_CPU_INSTANCES": instances}
    return {"COMFY_NUM_GPUS": "1", "INSTANCES_PER_GPU": instances}


def worker_phase(bench: Bench, name: str, env: dict[str, str]) -> None:
    worker, start_s = bench.start_worker(**env)
    try:
        count = len(worker.fleet.instances)
        first = bench.through_worker(worker, "sdxl", count)
        steady = [bench.through_worker(worker, "sdxl", count) for _ in range(STEADY_ROUNDS)]
        p2 = bench.sequential_direct_vs_worker(worker, "sdxl", CPU_P2_ROUNDS if bench.args.cpu else P2_ROUNDS)
        shown = " ".join(f"{key}={value}" for key, value in env.items() if key in SHOWN_SETTINGS)
        bench.record(name, {
            "configuration": f"the worker's defaults, {shown}, the jobs' workflow as WARMUP_WORKFLOW",
            "instances": [instance.label for instance in worker.fleet.instances], "auto_would_run": auto_count(worker),
            "start_s": round(start_s, 2), "startup": dict(worker.startup_s),
            "first": first, "steady": steady, "p6": p6(first, steady), "p2": p2,
            "memory": memory_record(worker), "compile": worker.compile_state(),
        })
    finally:
        worker.stop()


def auto_count(worker: Worker) -> dict[str, Any] | None:
    """How many instances INSTANCES_PER_GPU=auto runs on this card for the warm-up's models, and why."""
    gpu = worker.fleet.gpu_of(worker.fleet.instances[0]) if worker.fleet else None
    if gpu is None:
        return None
    count, reason = instances_for_card("auto", gpu.memory_total_mib * MIB, warmup_model_files(worker.settings))
    return {"instances": count, "reason": reason}


def p6(first: dict[str, Any], steady: list[dict[str, Any]]) -> dict[str, Any]:
    """P6 from the first round of jobs after ready and the steady rounds (Bench.through_worker records): the median
    execution seconds of the first jobs − the median of the steady rounds' medians; whether every job ran compiled
    and answered."""
    rounds = [first, *steady]
    steady_exec = median([r.get("exec_s_median") for r in steady])
    first_exec = first.get("exec_s_median")
    return {
        "first_exec_s": first_exec, "steady_exec_s": steady_exec,
        "value_s": round(first_exec - steady_exec, 3) if first_exec is not None and steady_exec is not None else None,
        "all_compiled": all(r.get("compiled_jobs") == r.get("jobs") for r in rounds),
        "all_ok": all(r.get("ok") == r.get("jobs") for r in rounds),
        "first_per_instance": first.get("per_instance"),
    }


def memory_record(worker: Worker) -> dict[str, Any]:
    """Host memory of every ComfyUI process and of this (the worker's) process, VRAM per instance and the card's."""
    assert worker.fleet is not None
    snapshot = memory_snapshot(instances_of(worker))
    snapshot["processes"]["worker"] = process_memory(os.getpid())
    snapshot["vram"] = {instance.label: torch_vram(instance) for instance in worker.fleet.instances}
    gpus = sorted({instance.spec.gpu for instance in worker.fleet.instances if instance.spec.gpu is not None})
    sampler = GpuSampler(gpus) if gpus else None
    snapshot["gpu_used_mib"] = {gpu: sampler.used_mib(gpu) for gpu in gpus} if sampler and sampler.ok else {}
    return snapshot


def torch_vram(instance: ComfyInstance) -> dict[str, int] | None:
    """One instance's torch allocator, as ComfyUI itself reports it (GET /system_stats: torch_vram_total is the
    reserved bytes, torch_vram_free reserved − active); None on a CPU instance."""
    try:
        devices = instance.client.system_stats().get("devices") or [{}]
    except WorkerError:
        return None
    device = devices[0]
    if device.get("type") != "cuda":
        return None
    reserved = device["torch_vram_total"]
    return {"torch_reserved_mib": reserved // MIB, "torch_active_mib": (reserved - device["torch_vram_free"]) // MIB}


def regress_summary(phases: dict[str, Any], only: str, cpu: bool) -> dict[str, Any]:
    """Per configuration: P2, P6, host memory per process and VRAM per instance; which phases ran; the host RAM
    a second instance adds (twins − one, each with the model loaded)."""
    wanted = ["prime", *(name for name, _ in PHASES)]
    chosen = only.split(",") if only else wanted
    summary: dict[str, Any] = {"ran": [n for n in wanted if n in phases],
                               "not_run": [n for n in wanted if n not in phases and n in chosen and n != "prime"],
                               "note": "a CPU dry run: tiny SD1.5 jobs on CPU instances, nothing compiled; "
                                       "not a result" if cpu else None}
    if "prime" not in phases:
        summary["prime"] = "not needed: an artefact was on disk" if "prime" in chosen else "not asked (--phases)"
    for name, _ in PHASES:
        row = phases.get(name)
        if not row:
            continue
        memory, p2 = row["memory"], row["p2"]
        summary[name] = {
            "instances": len(row["instances"]), "P2": p2["ratio"], "P6_s": row["p6"]["value_s"],
            "p2_same_instance": all(job["instance"] == p2["direct_instance"] for job in p2["worker_jobs"]),
            "p2_compiled": all(job["compiled"] for job in p2["worker_jobs"]),
            "p6_compiled": row["p6"]["all_compiled"], "jobs_ok": row["p6"]["all_ok"],
            "rss_mib": {p: m.get("Rss") for p, m in memory["processes"].items()},
            "pss_mib": {p: m.get("Pss") for p, m in memory["processes"].items()},
            "host_used_mib": memory["meminfo"]["Used"],
            "torch_reserved_mib": {i: (v or {}).get("torch_reserved_mib") for i, v in memory["vram"].items()},
            "gpu_used_mib": sum(memory["gpu_used_mib"].values()) if memory["gpu_used_mib"] else None,
        }
    if "twins" in summary and "one" in summary:
        summary["host_used_added_by_twin_mib"] = summary["twins"]["host_used_mib"] - summary["one"]["host_used_mib"]
        if summary["twins"]["gpu_used_mib"] is not None and summary["one"]["gpu_used_mib"] is not None:
            summary["gpu_used_added_by_twin_mib"] = summary["twins"]["gpu_used_mib"] - summary["one"]["gpu_used_mib"]
    return summary
