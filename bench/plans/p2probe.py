"""The p2probe plan: where the worker's per-job overhead (P2) comes from, one hypothesis per phase."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid

from runner import (
    Bench,
    median,
)

from comfy_worker.fleet.instance import ComfyInstance

log = logging.getLogger("bench")


def plan_p2probe(bench: Bench) -> None:
    """Where the worker's per-job overhead (P2) comes from, one hypothesis per phase, on GPU 0."""

    from comfy_worker.comfy.follower import PromptFollower
    from comfy_worker.jobs.progress import ProgressReporter
    from comfy_worker.logs import JobLog

    rounds = 2 if bench.args.cpu else 7

    def follower_direct(instance: ComfyInstance) -> float:
        follower = PromptFollower(instance.client, uuid.uuid4().hex, 2.0, JobLog("probe"))
        started = time.monotonic()
        follower.connect()
        try:
            workflow = bench.workflow("sdxl")
            prompt_id, _ = instance.client.submit(workflow, follower.client_id, {})
            follower.follow(prompt_id, workflow, started + 600, 600, __import__("threading").Event(),
                            ProgressReporter({}, "probe", 1e9, None))
        finally:
            follower.close()
        return time.monotonic() - started

    def pinned_worker() -> None:
        worker, _ = bench.start_worker(COMFY_NUM_GPUS="1", TORCH_COMPILE="off")
        try:
            bench.through_worker(worker, "sdxl", 2)
            bench.record("p2_in_process", bench.sequential_direct_vs_worker(worker, "sdxl", rounds))
            instance = worker.fleet.instances[0]
            raw, ours = [], []
            for _ in range(rounds):
                raw.append(bench.post_and_wait(instance, [bench.workflow("sdxl")])[0]["done_s"])
                ours.append(follower_direct(instance))
            bench.record("p2_follower_alone", {"direct_s": raw, "follower_s": ours,
                                               "ratio": round(median(ours) / median(raw), 4)})
            cpus = set(instance.tuning.cpu_set.cpus) if instance.tuning.cpu_set else set()
            spare = sorted(set(os.sched_getaffinity(0)) - cpus)
            if spare:
                original = os.sched_getaffinity(0)
                tasks = [int(t) for t in os.listdir("/proc/self/task")]
                for task in tasks:
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(task, spare)
                try:
                    result = bench.sequential_direct_vs_worker(worker, "sdxl", rounds)
                    result["harness_cpus"] = spare
                    bench.record("p2_harness_on_spare_cores", result)
                finally:
                    for task in [int(t) for t in os.listdir("/proc/self/task")]:
                        with contextlib.suppress(OSError):
                            os.sched_setaffinity(task, original)
        finally:
            worker.stop()

    def unpinned_worker() -> None:
        worker, _ = bench.start_worker(COMFY_NUM_GPUS="1", TORCH_COMPILE="off", COMFY_CPU_PINNING="0")
        try:
            bench.through_worker(worker, "sdxl", 2)
            bench.record("p2_unpinned", bench.sequential_direct_vs_worker(worker, "sdxl", rounds))
        finally:
            worker.stop()

    def compiled_worker() -> None:
        """Compiled jobs vary by 2 % instead of ±15 %: the overhead shows above the noise."""
        worker, _ = bench.start_worker(COMFY_NUM_GPUS="1", WARMUP_WORKFLOW=json.dumps(bench.workflow("sdxl")))
        try:
            bench.through_worker(worker, "sdxl", 2)
            result = bench.sequential_direct_vs_worker(worker, "sdxl", rounds)
            result["startup"] = dict(worker.startup_s)
            bench.record("p2_compiled", result)
        finally:
            worker.stop()

    bench.phase("p2_pinned", 90, pinned_worker)
    bench.phase("p2_unpinned_worker", 50, unpinned_worker)
    bench.phase("p2_compiled", 120, compiled_worker)
