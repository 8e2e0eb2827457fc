"""End-to-end check of the worker on this machine's GPUs, with model-free workflows (no model files needed).

    COMFY_CUSTOM_NODES_DIRS=tests/custom_nodes python scripts/gpu_e2e.py [--out summary.json]

Starts the worker as production does (one ComfyUI per detected GPU, settings from the environment) and checks:
which GPU each instance's process runs on (NVML), a pinned job per instance, 2 jobs per instance submitted at
once (spread, and wall time against one instance's), a timeout that interrupts and the next job that succeeds.
Prints a JSON summary; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from workflows import invert, sleep

from comfy_worker.logs import configure
from comfy_worker.settings import load_settings
from comfy_worker.worker import Worker

SLEEP_S = 2.0


def job(workflow: dict, **fields) -> dict:
    return {"id": f"e2e-{uuid.uuid4().hex[:6]}", "input": {"workflow": workflow, **fields}}


def gpu_of_processes() -> dict[int, int]:
    """pid → GPU index, for the processes NVML sees on each GPU."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        seen = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                seen[process.pid] = index
        return seen
    finally:
        pynvml.nvmlShutdown()


async def checks(worker: Worker, summary: dict, failures: list[str]) -> None:
    instances = worker.fleet.instances
    for instance in instances:
        stats = await asyncio.to_thread(instance.client.system_stats)
        summary.setdefault("instances", []).append({
            "label": instance.label, "port": instance.spec.port, "pid": instance.pid,
            "devices": [f"{d.get('name')} ({d.get('vram_total', 0) // (1 << 30)} GiB)" for d in stats["devices"]],
        })
        result = await worker.handle(job(invert(), gpu=instance.spec.index))
        if result.get("instance") != instance.label or "error" in result:
            failures.append(f"pinned job on {instance.label}: {result.get('error') or result.get('instance')}")

    processes = gpu_of_processes()
    summary["nvml_gpu_of_instance_pid"] = {i.label: processes.get(i.pid) for i in instances}

    started = time.monotonic()
    one = await worker.handle(job(sleep(SLEEP_S), gpu=0))
    single_s = time.monotonic() - started
    count = 2 * len(instances)
    started = time.monotonic()
    results = await asyncio.gather(*(worker.handle(job(sleep(SLEEP_S))) for _ in range(count)))
    wall_s = time.monotonic() - started
    spread = {i.label: sum(r.get("instance") == i.label for r in results) for i in instances}
    summary["concurrent"] = {
        "jobs": count, "job_seconds": SLEEP_S, "one_job_wall_s": round(single_s, 2), "wall_s": round(wall_s, 2),
        "serial_estimate_s": round(count * single_s, 2), "speedup_vs_serial": round(count * single_s / wall_s, 2),
        "jobs_per_instance": spread, "errors": [r["error"] for r in results if "error" in r],
    }
    if "error" in one or summary["concurrent"]["errors"] or set(spread.values()) != {2}:
        failures.append(f"concurrent jobs: {summary['concurrent']}")

    started = time.monotonic()
    timed_out = await worker.handle(job(sleep(60), gpu=0, timeout_s=3))
    after = await worker.handle(job(invert(), gpu=0))
    summary["timeout"] = {"error": timed_out.get("error"), "seconds": round(time.monotonic() - started, 2),
                          "next_job_ok": "error" not in after}
    if "timeout of 3 s" not in str(timed_out.get("error")) or "error" in after:
        failures.append(f"timeout: {summary['timeout']}")
    summary["metrics"] = worker.scheduler.snapshot()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = load_settings()
    configure(settings.log_level)
    worker = Worker(settings)
    started = time.monotonic()
    worker.start()
    summary: dict = {"startup_s": round(time.monotonic() - started, 2), "gpus": [g.__dict__ for g in worker.fleet.gpus]}
    failures: list[str] = []
    try:
        if worker.startup_error:
            failures.append(f"start-up: {worker.startup_error}")
        else:
            asyncio.run(checks(worker, summary, failures))
    finally:
        worker.stop()
    summary["failures"] = failures
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
