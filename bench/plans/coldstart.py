"""The cold-start plan (issue 14): start → ready (P7) and start → first job at compiled speed (P7c) on one GPU, SDXL
as WARMUP_WORKFLOW, TORCH_COMPILE auto (inductor, reduce-overhead).

    no_artifact             everything wiped, COMPILE_IN_BACKGROUND=1: serves uncompiled at once while the primer
                            compiles beside it and saves the artefact; the first job against an uncompiled steady
                            one, and when the instance switches to compiled
    prime                   (here only when no_artifact left no artefact, else last if time is left) every cache
                            folder wiped; `comfy_worker.prime` compiles and saves the artefact
    fresh_with_artifact     every cache folder wiped except the artefact: load → compiled warm-up → jobs (P7,
                            P7c), then the stream plan's 20 jobs at once (compiled, the worker's defaults)
    s_vanilla               the stream plan's vanilla phase, so that the compiled stream has its P8 in the same run
    carried_inductor_cache  no artefact, the inductor/triton caches of the run before left on disk: which cache
                            levels hit (counters, and TORCH_LOGS=+torch._inductor.codecache,recompiles of that
                            worker's instances, kept in the results and written to OUT/codecache.log as they come)

That is the order without --phases; with it, the phases named run in the order named (e.g. on a new machine that
carries the artefact and the caches of an earlier run in: carried_inductor_cache,fresh_with_artifact).

The order puts the goals first: a cold compile takes about 170 s (H100) to well over 130 s (H200), so two do not
fit one 9-minute device call with everything else, and the primer of `no_artifact` makes the artefact the later
phases use.
A "fresh machine" here is every cache folder wiped except the artefact, on the same machine (page cache kept).
On a CPU dry run (--cpu) nothing is compiled (CPU instances never are): every phase still runs end to end.
"""

from __future__ import annotations

import datetime
import getpass
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from runner import Bench, median

from comfy_worker.prime import PrimeError, prime
from comfy_worker.worker import Worker
from plans.stream import NEEDS_S, WARM_JOBS, busy_summary, vanilla_stream

log = logging.getLogger("bench")

CODECACHE_LINE = re.compile(r"cache (hit|miss|bypass)|FxGraphCache|AOTAutogradCache|recompil|autotune", re.I)
KEPT_LOG_LINES = 300
LEAVE_FOR_LATER_PHASES_S = 200  # no_artifact waits for the switch to compiled until this much of the deadline is left
LEAVE_FOR_FRESH_ONLY_S = 80  # the same when only fresh_with_artifact follows (--phases)
PRIME_NEEDS_S = 200
CPU_VANILLA_JOBS = 2
JOBS_AFTER_FIRST = 3
STREAM_JOBS = 20  # the stream plan's length
COMPILED_SPEED = 0.95  # a job runs "at compiled speed" at ≥ 95 % of the steady compiled it/s


def plan_coldstart(bench: Bench) -> None:
    bench.results.update(date=datetime.date.today().isoformat(), command=" ".join(sys.argv))
    warmup = json.dumps(bench.workflow("sdxl"))
    env = {"WARMUP_WORKFLOW": warmup, "COMPILE_ARTIFACT_DIR": str(artifact_dir(bench)),
           "COMFY_NUM_GPUS": "0" if bench.args.cpu else "1", "COMFY_CPU_INSTANCES": "1"}
    vanilla_jobs, vanilla_warm = (CPU_VANILLA_JOBS, 1) if bench.args.cpu else (STREAM_JOBS, WARM_JOBS)
    phases = {
        "no_artifact": lambda: bench.phase("no_artifact", 60, phase_no_artifact, bench, env),
        "prime": lambda: bench.phase("prime", PRIME_NEEDS_S, phase_prime, bench, env),
        "fresh_with_artifact": lambda: bench.phase("fresh_with_artifact", 50, phase_fresh, bench, env),
        "carried_inductor_cache": lambda: bench.phase("carried_inductor_cache", 60, phase_carried, bench, env),
        "s_vanilla": lambda: bench.phase("s_vanilla", NEEDS_S["vanilla"], vanilla_stream, bench, "s_vanilla",
                                         vanilla_jobs, vanilla_warm),
    }
    if bench.args.phases:  # the order given (a machine that carries an artefact or a cache in runs those first)
        unknown = sorted(set(bench.args.phases.split(",")) - set(phases))
        if unknown:
            raise SystemExit(f"--phases: no phase {', '.join(unknown)} in the coldstart plan ({', '.join(phases)})")
        for name in bench.args.phases.split(","):
            phases[name]()
        return
    phases["no_artifact"]()
    if not any(artifact_dir(bench).rglob("*.megacache")):
        phases["prime"]()
    for name in ("fresh_with_artifact", "s_vanilla", "carried_inductor_cache"):
        phases[name]()
    if "prime" not in bench.results["phases"]:
        phases["prime"]()


def artifact_dir(bench: Bench) -> Path:
    return bench.work / "artifacts"


def cache_dirs(bench: Bench) -> list[Path]:
    """Every folder a compile leaves something in (the worker points inductor and triton at the first). A CPU dry
    run compiles nothing and runs on shared machines: it leaves the user-wide folders alone."""
    home = Path.home()
    user_wide = [*Path("/tmp").glob(f"torchinductor_{getpass.getuser()}"), home / ".triton", home / ".cache" / "triton"]
    return [bench.work / "compile-cache", *([] if bench.args.cpu else user_wide)]


def wipe(bench: Bench, keep_artifacts: bool) -> list[str]:
    wiped = [*cache_dirs(bench), *([] if keep_artifacts else [artifact_dir(bench)])]
    for folder in wiped:
        shutil.rmtree(folder, ignore_errors=True)
    return [str(folder) for folder in wiped]


def phase_prime(bench: Bench, env: dict[str, str]) -> None:
    wiped = wipe(bench, keep_artifacts=False)
    started = time.monotonic()
    try:
        summary: dict[str, Any] = prime(bench.settings(**env))
    except PrimeError as error:
        summary = {"skipped": str(error)}
    bench.record("prime", {"wiped": wiped, "seconds": round(time.monotonic() - started, 2), **summary,
                           "artifact_bytes": sum(a.get("bytes") or 0 for a in summary.get("artifacts", []))})


def phase_carried(bench: Bench, env: dict[str, str]) -> None:
    """No artefact; the inductor and triton caches of the prime phase on disk; compile in the warm-up (as before),
    with the code-cache log of that worker's instances."""
    lines: list[str] = []
    handler = _LineCollector(lines, bench.out / "codecache.log")
    comfy_log = logging.getLogger("comfy_worker.comfyui")
    comfy_log.addHandler(handler)
    previous = os.environ.get("TORCH_LOGS")
    os.environ["TORCH_LOGS"] = "+torch._inductor.codecache,recompiles"  # the instances inherit the environment
    try:
        run = start_and_serve(bench, {**env, "COMPILE_ARTIFACT_DIR": str(bench.work / "no-artifacts"),
                                      "COMPILE_IN_BACKGROUND": "0"})
    finally:
        comfy_log.removeHandler(handler)
        if previous is None:
            os.environ.pop("TORCH_LOGS", None)
        else:
            os.environ["TORCH_LOGS"] = previous
    run["codecache_lines"] = lines[:KEPT_LOG_LINES]
    run["codecache_counts"] = {kind: sum(kind in line.lower() for line in lines)
                               for kind in ("cache hit", "cache miss", "cache bypass", "recompil")}
    bench.record("carried_inductor_cache", run)


def phase_fresh(bench: Bench, env: dict[str, str]) -> None:
    wiped = wipe(bench, keep_artifacts=True)
    run = start_and_serve(bench, env, stream_jobs=STREAM_JOBS)
    bench.record("fresh_with_artifact", {"wiped": wiped, **run})


def phase_no_artifact(bench: Bench, env: dict[str, str]) -> None:
    wiped = wipe(bench, keep_artifacts=False)
    run = start_and_serve(bench, {**env, "COMPILE_IN_BACKGROUND": "1"}, wait_compiled=True)
    bench.record("no_artifact", {"wiped": wiped, **run})


def start_and_serve(bench: Bench, env: dict[str, str], wait_compiled: bool = False,
                    stream_jobs: int = 0) -> dict[str, Any]:
    """Starts a worker, then jobs one at a time: each answer's time from the start and its it/s; P7c is the answer of
    the first job at compiled speed. With `wait_compiled`, waits (within the plan's deadline) for the instance to
    switch to compiled, then one more job. With `stream_jobs`, then that many jobs at once (the stream plan's
    measure, compiled: P8 with the worker's defaults)."""
    started = time.monotonic()
    worker = Worker(bench.settings(**env))
    try:
        worker.start()
        if worker.startup_error:
            raise RuntimeError(worker.startup_error)
        ready_s = time.monotonic() - started
        jobs = [one_job(bench, worker, started) for _ in range(1 + JOBS_AFTER_FIRST)]
        result: dict[str, Any] = {"ready_s": round(ready_s, 2), "startup": dict(worker.startup_s), "jobs": jobs}
        if wait_compiled:
            result["compiled_after_s"] = wait_until_compiled(bench, worker, started)
            if result["compiled_after_s"] is not None:
                result["jobs_compiled"] = [one_job(bench, worker, started) for _ in range(2)]
        if stream_jobs and bench.left() > 40:
            stream = bench.through_worker(worker, "sdxl", stream_jobs, timeline=True)
            stream.update(busy_summary(stream), instances=[i.label for i in worker.fleet.instances])
            result["stream"] = stream
        result["compile"] = worker.compile_state()
        result.update(speeds(jobs, result.get("jobs_compiled")))
        return result
    finally:
        worker.stop()


def one_job(bench: Bench, worker: Worker, started: float) -> dict[str, Any]:
    job = {"id": f"coldstart-{bench.seed}", "input": {"workflow": bench.workflow("sdxl")}}
    sent = time.monotonic()
    answer = bench.loop.run_until_complete(worker.handle(job))
    timings = answer.get("timings", {})
    rates = [s.get("it_per_s") for s in timings.get("sampling", {}).values() if s.get("it_per_s")]
    tuning = answer.get("tuning") or {}
    return {"error": answer.get("error"), "answered_after_start_s": round(time.monotonic() - started, 2),
            "job_s": round(time.monotonic() - sent, 2), "exec_s": round(timings.get("execution_ms", 0) / 1000, 3),
            "its": rates[0] if rates else None, "compiled": tuning.get("compiled"),
            "background_compile": (worker.compile_rollout.state.get("state") if worker.compile_rollout else None),
            "queue_wait_ms": timings.get("queue_wait_ms")}


def wait_until_compiled(bench: Bench, worker: Worker, started: float) -> float | None:
    """Seconds from the start until an instance reports compiled; None when the rollout ended without it or the
    plan's deadline came first."""
    rollout = worker.compile_rollout

    def compiled() -> bool:
        return any(i.compile.on and i.compile.compiled_at_s is not None for i in worker.fleet.instances)

    carried_follows = not bench.args.phases or "carried_inductor_cache" in bench.args.phases.split(",")
    leave_s = LEAVE_FOR_LATER_PHASES_S if carried_follows else LEAVE_FOR_FRESH_ONLY_S
    while rollout is not None and bench.left() > leave_s and not compiled():
        if rollout.wait(1.0):
            break
    return round(time.monotonic() - started, 1) if compiled() else None


def speeds(jobs: list[dict[str, Any]], compiled_jobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The steady it/s and exec seconds (the jobs after the first), the first job against them, and P7c: the answer
    of the first job at compiled speed (only where the steady jobs ran compiled)."""
    steady = jobs[1:]
    steady_its, steady_exec = median([j["its"] for j in steady]), median([j["exec_s"] for j in steady])
    first = jobs[0]
    result: dict[str, Any] = {
        "steady_its": steady_its, "steady_exec_s": steady_exec, "first_its": first["its"],
        "first_exec_s": first["exec_s"], "first_answered_after_start_s": first["answered_after_start_s"],
        "first_minus_steady_exec_s": round(first["exec_s"] - steady_exec, 3) if steady_exec is not None else None,
        "steady_compiled": all(j["compiled"] for j in steady),
    }
    reference = median([j["its"] for j in compiled_jobs]) if compiled_jobs else steady_its
    if compiled_jobs:
        result["compiled_its"] = reference
    if result["steady_compiled"] and reference:
        at_speed = [j for j in jobs if j["its"] and j["its"] >= COMPILED_SPEED * reference]
        result["p7c_s"] = at_speed[0]["answered_after_start_s"] if at_speed else None
    return result


class _LineCollector(logging.Handler):
    """Keeps the code-cache lines and appends each to a file at once (a phase cut short by the call's limit still
    leaves them)."""

    def __init__(self, lines: list[str], path: Path) -> None:
        super().__init__()
        self.lines = lines
        self.path = path
        path.write_text("")

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if CODECACHE_LINE.search(message):
            self.lines.append(message[:500])
            with self.path.open("a") as file:
                file.write(message[:500] + "\n")
