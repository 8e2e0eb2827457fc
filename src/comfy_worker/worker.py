"""The worker: starts the fleet of ComfyUI instances, warms them up, and hands each job to the job runner
(jobs/runner.py). `Worker.handle` is where a job enters and leaves; it is also the one place where a failure
becomes `{"error": "..."}`, so every path returns a message the user can act on and the worker keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from comfy_worker.comfy.follower import JobCancelled
from comfy_worker.deadline import Deadline
from comfy_worker.errors import WorkerError, WorkerNotReady
from comfy_worker.fleet.compile_rollout import CompileRollout
from comfy_worker.fleet.fleet import Fleet
from comfy_worker.fleet.gpus import Gpu
from comfy_worker.fleet.instance import ComfyInstance
from comfy_worker.fleet.scheduler import Scheduler
from comfy_worker.fleet.vram import model_roots
from comfy_worker.jobs.context import JobContext
from comfy_worker.jobs.job_input import JobRequest, parse_job_input, wants_refresh
from comfy_worker.jobs.progress import ProgressReporter, Sender, final_status, runpod_sender
from comfy_worker.jobs.runner import JobRunner
from comfy_worker.jobs.stream import JobStream, stream_job
from comfy_worker.jobs.warmup import load_warmup_workflow, reseeded, warmup_model_files
from comfy_worker.logs import JobLog
from comfy_worker.models.affinity import models_in
from comfy_worker.models.cache import ModelCache
from comfy_worker.models.files import workflow_model_files
from comfy_worker.models.prefetch import Prefetcher
from comfy_worker.redaction import redact_text
from comfy_worker.settings import Settings

# A warm-up may compile (minutes; ComfyUI's server can go unanswered meanwhile): its polls wait this long before
# the instance counts as gone; the job-wide deadline (JOB_TIMEOUT_S) still bounds the whole warm-up.
WARMUP_POLL_TIMEOUT_S = 300.0
WARMUP_ERROR_CHARS = 300

log = logging.getLogger("comfy_worker.worker")

ROLLOUT_STOP_WAIT_S = 5.0  # Worker.stop waits this long for the background compile's thread to end


class Worker:
    def __init__(self, settings: Settings, gpus: list[Gpu] | None = None, progress_sender: Sender | None = None):
        self.runner: JobRunner | None = None
        self.settings = settings
        self._gpus = gpus
        self.fleet: Fleet | None = None
        self.scheduler: Scheduler | None = None
        self.startup_error: str | None = None
        self.progress_sender = progress_sender or (runpod_sender if settings.send_progress else None)
        self.startup_s: dict[str, float] = {}  # instances_ready, warmup: where a cold start's time went
        self._executor: ThreadPoolExecutor | None = None
        self.model_cache: ModelCache | None = None
        self.prefetcher = Prefetcher(settings.prefetch_threads)
        self.model_roots: list[Path] = []
        self.compile_rollout: CompileRollout | None = None

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        """Settings swapped in after the start (as tests do) apply to the next job and the next warm-up."""
        self._settings = settings
        if self.runner is not None:
            self.runner.use_settings(settings)

    # --- life cycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the fleet. A failure is kept and returned to every job, so a broken worker says why."""
        started = time.monotonic()
        try:
            self.model_cache = ModelCache(self.settings.model_cache_dir, self.settings.model_cache_max_bytes,
                                          self.settings.model_max_file_bytes, self.settings.model_download_timeout_s,
                                          self.settings.url_guard)
            cache_paths = self.model_cache.write_extra_model_paths(self.settings.work_dir / "model_cache_paths.yaml")
            self.model_roots = model_roots(self.settings.comfyui_dir, (*self.settings.extra_model_paths, cache_paths))
            self._read_ahead_warmup()
            self.fleet = Fleet(self.settings, self._gpus, (cache_paths,), warmup_model_files(self.settings))
            self.fleet.start()
            self.startup_s["instances_ready"] = round(time.monotonic() - started, 2)
        except Exception as error:  # whatever it is, every job is told why instead of the handler crashing
            self.startup_error = str(error) if isinstance(error, WorkerError) else f"{type(error).__name__}: {error}"
            log.exception("the worker could not start: %s", self.startup_error)
            return
        self.scheduler = Scheduler(self.fleet.instances, self.fleet.gpu_busy)
        # Each running job holds a thread while it follows its prompt; give every instance room for several.
        self._executor = ThreadPoolExecutor(4 * len(self.fleet.instances) + 4, thread_name_prefix="job")
        self.runner = JobRunner(self.settings, self.fleet, self.scheduler, self.model_cache, self.prefetcher,
                                self.model_roots, self._executor)
        warmup_started = time.monotonic()
        self.warm_up()
        self.startup_s["warmup"] = round(time.monotonic() - warmup_started, 2)
        self._record_compile(started)
        self.compile_rollout = CompileRollout(self.settings, self.fleet, self.scheduler, self.warm_up_instance,
                                              started)
        self.compile_rollout.start()

    def _record_compile(self, started: float) -> None:
        """What torch.compile did in each instance compiled at start (counters: cache hits and misses per level),
        kept on the instance for the job output's `tuning`."""
        assert self.fleet is not None
        for instance in self.fleet.instances:
            if instance.compile.on and instance.healthy:
                with contextlib.suppress(WorkerError):
                    instance.compile.report = instance.client.compile_report()
                    instance.compile.compiled_at_s = round(time.monotonic() - started, 1)
                    log.info("[%s] compiled: %s", instance.label, instance.compile.summary())

    def _read_ahead_warmup(self) -> None:
        """The warm-up workflow's model files start loading into the page cache while the instances start."""
        with contextlib.suppress(WorkerError):  # a broken warm-up workflow is reported by warm_up
            workflow = load_warmup_workflow(self.settings.warmup_workflow)
            if workflow is not None:
                self.prefetcher.start([f.path for f in workflow_model_files(workflow, self.model_roots)], "warmup")

    def warm_up(self) -> None:
        """Runs WARMUP_WORKFLOW on every healthy instance at once (outside the scheduler: no job can be waiting
        yet). A failing warm-up is logged with its reason; the worker still serves."""
        try:
            workflow = load_warmup_workflow(self.settings.warmup_workflow)
        except WorkerError as error:
            log.error("warm-up skipped: %s", error)
            return
        if workflow is None or self.fleet is None or self.runner is None:
            return
        request = parse_job_input({"workflow": workflow})
        instances = [i for i in self.fleet.instances if i.healthy]
        started = time.monotonic()
        with ThreadPoolExecutor(len(instances) or 1) as pool:
            results = list(pool.map(lambda instance: self._warm_up_one(instance, request), instances))
        log.info("warm-up ran on %d instance(s) in %.1f s: %s", len(instances), time.monotonic() - started,
                 ", ".join(results))

    def warm_up_instance(self, instance: ComfyInstance, new_seeds: bool) -> str:
        """Runs the warm-up workflow on one instance (the compile primer, an instance switched to compiled);
        `new_seeds` makes its samplers run again where ComfyUI would answer from its cache. Raises the warm-up's
        WorkerError."""
        workflow = load_warmup_workflow(self.settings.warmup_workflow)
        if workflow is None:
            return "no warm-up workflow"
        return self._run_warm_up(instance, parse_job_input({"workflow": reseeded(workflow) if new_seeds else workflow}))

    def _warm_up_one(self, instance: ComfyInstance, request: JobRequest) -> str:
        """The warm-up of one of the instances started together: a failure is logged and said, never raised."""
        try:
            return self._run_warm_up(instance, request)
        except (WorkerError, JobCancelled) as error:
            JobLog("warmup").error("[%s] warm-up failed: %s", instance.label, error)
            return f"{instance.label} failed: {str(error)[:WARMUP_ERROR_CHARS]}"

    def _run_warm_up(self, instance: ComfyInstance, request: JobRequest) -> str:
        assert self.runner is not None and self.scheduler is not None
        job_log = JobLog("warmup")
        job_log.instance = instance.label
        started = time.monotonic()
        ctx = JobContext({}, request, job_log, started, Deadline.after(self.settings.job_timeout_s, started),
                         progress=ProgressReporter({}, instance.label, 1e9, None), instance=instance)
        with instance.client.patient(WARMUP_POLL_TIMEOUT_S):
            self.runner.on_instance.run(ctx)
        if self.fleet is not None and instance in self.fleet.instances:  # not the compile primer
            self.scheduler.remember_models(instance.spec.index, models_in(request.workflow))
        return f"{instance.label} {time.monotonic() - started:.1f} s"

    def compile_state(self) -> dict[str, Any]:
        """Per instance, where its compile stands (counters included); the background compile's state."""
        instances = self.fleet.instances if self.fleet else []
        return {"instances": {i.label: {**i.compile.summary(), "on": i.compile.on, "report": i.compile.report}
                              for i in instances},
                "rollout": self.compile_rollout.state if self.compile_rollout else None}

    def stop(self) -> None:
        if self.compile_rollout is not None:
            self.compile_rollout.stop()
        if self.fleet is not None:
            self.fleet.stop()
        if self.compile_rollout is not None and not self.compile_rollout.wait(ROLLOUT_STOP_WAIT_S):
            log.warning("the background compile did not end within %g s of the stop (state %s); its thread is left "
                        "to end with the process", ROLLOUT_STOP_WAIT_S, self.compile_rollout.state.get("state"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def concurrency(self) -> int:
        """Jobs run at once: one per instance (a constant, so RunPod's scaler never drains to change it)."""
        return len(self.fleet.instances) if self.fleet else 1

    # --- one job ------------------------------------------------------------------------------------------------
    async def stream(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The streaming mode (STREAM_RESULTS=1): the job's events as it runs, then its result. RunPod's SDK reads
        `refresh_worker` only from a handler's single result, so a job's own request for it is refused here."""
        async for item in stream_job(self.handle, job):
            if "event" not in item and item.pop("refresh_worker", None) and not self.settings.refresh_worker:
                JobLog(str(job.get("id") or "local")).warning("refresh_worker is not honoured in streaming mode")
                if "warnings" in item:
                    item["warnings"].append("'refresh_worker' is not honoured in streaming mode (STREAM_RESULTS=1): "
                                            "set REFRESH_WORKER=1 on the endpoint instead")
            yield item

    async def handle(self, job: dict[str, Any], stream: JobStream | None = None) -> dict[str, Any]:
        job_id = str(job.get("id") or "local")
        job_log = JobLog(job_id)
        result: dict[str, Any]
        try:
            if self.startup_error or self.runner is None:
                raise WorkerNotReady(f"the worker failed to start: {self.startup_error or 'not started'}")
            result = await self.runner.run(job, job_log, self.progress_sender, stream)
        except WorkerError as error:
            job_log.error("failed: %s", error)
            result = {"error": redact_text(str(error))}
            if error.details:
                result["details"] = [redact_text(line) for line in error.details]
        except asyncio.CancelledError:
            job_log.warning("cancelled")
            raise
        except Exception as error:
            job_log.exception("internal error")
            result = {"error": redact_text(f"internal worker error ({type(error).__name__}: {error}); the worker "
                                           "keeps serving")}
        result["status"] = final_status(result)
        if self.settings.refresh_worker or wants_refresh(job.get("input")):
            job_log.info("refresh_worker: RunPod ends this worker after the job")
            result["refresh_worker"] = True  # the RunPod SDK takes it out of the output and stops the worker
        return result
