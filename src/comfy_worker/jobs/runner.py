"""The job runner: `run` reads as the job's steps, in order; each step is a short method that takes the job's
context. The blocking part on an instance is on_instance.py; the recovery step is retry.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from comfy_worker.comfy.follower import SETTLE_AFTER_TIMEOUT_S
from comfy_worker.deadline import GRACE_S, Deadline
from comfy_worker.delivery.deliver import Delivery, deliver
from comfy_worker.delivery.image_format import convert_images
from comfy_worker.errors import ExecutionFailed, InvalidInput, WorkerError
from comfy_worker.fleet.fleet import Fleet
from comfy_worker.fleet.scheduler import Scheduler
from comfy_worker.jobs.context import JobContext, RunOutcome, ms_since
from comfy_worker.jobs.input_files import decode_input_file
from comfy_worker.jobs.job_input import JobRequest, parse_job_input
from comfy_worker.jobs.on_instance import OnInstance
from comfy_worker.jobs.progress import ProgressReporter, Sender, queued_payload
from comfy_worker.jobs.report import job_result
from comfy_worker.jobs.request_limits import check_request
from comfy_worker.jobs.retry import Recovery
from comfy_worker.jobs.stream import JobStream
from comfy_worker.logs import JobLog
from comfy_worker.models.affinity import models_in
from comfy_worker.models.cache import Fetched, Limits, ModelCache
from comfy_worker.models.files import workflow_model_files
from comfy_worker.models.prefetch import Prefetcher
from comfy_worker.models.sources import Credentials
from comfy_worker.redaction import redact_url
from comfy_worker.settings import Settings
from comfy_worker.url_guard import AddressRefused

log = logging.getLogger("comfy_worker.jobs")


class JobRunner:
    def __init__(self, settings: Settings, fleet: Fleet, scheduler: Scheduler, model_cache: ModelCache,
                 prefetcher: Prefetcher, model_roots: list[Path], executor: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.model_cache = model_cache
        self.prefetcher = prefetcher
        self.model_roots = model_roots
        self.executor = executor
        self.on_instance = OnInstance(settings, fleet, model_roots)
        self.recovery = Recovery(settings, fleet, scheduler, executor)
        self.jobs_done = 0

    def use_settings(self, settings: Settings) -> None:
        self.settings = self.on_instance.settings = self.recovery.settings = settings

    async def run(self, job: dict[str, Any], job_log: JobLog, send_progress: Sender | None,
                  stream: JobStream | None = None) -> dict[str, Any]:
        """One job, from its input to its answer. A step that fails raises a WorkerError naming what to fix."""
        ctx = self.parse(job, job_log, send_progress, stream)
        self.read_ahead(ctx.request.workflow, ctx.job_id)
        await self.decode_inputs(ctx)
        await self.fetch_models(ctx)
        try:
            outcome = await self.run_on_an_instance(ctx)  # lease, VRAM mode, upload, run, collect; retried once
            delivery = await self.deliver(ctx, outcome)
        finally:
            self.model_cache.release(ctx.fetched.keys)
        return job_result(ctx, outcome, delivery, self.scheduler.snapshot())

    def parse(self, job: dict[str, Any], job_log: JobLog, send_progress: Sender | None,
              stream: JobStream | None = None) -> JobContext:
        received = time.monotonic()
        check_request(job.get("input"), self.settings.max_request_bytes, self.settings.max_workflow_nodes)
        request = parse_job_input(job.get("input"), self.settings.url_guard)
        deadline = Deadline.after(request.timeout_s or self.settings.job_timeout_s, received)
        warnings = [f"ignored unknown input field '{name}'" for name in request.ignored_fields]
        if request.previews and stream is None:
            warnings.append("'previews' ignored: previews are streamed only where the endpoint sets STREAM_RESULTS=1")
        if stream is not None:
            send_progress = stream.progress_sender(send_progress)
        return JobContext(job, request, job_log, received, deadline, send_progress, warnings=warnings, stream=stream)

    def read_ahead(self, workflow: dict[str, Any], label: str) -> None:
        """Starts reading the workflow's model files into the page cache in the background."""
        files = workflow_model_files(workflow, self.model_roots)
        self.prefetcher.start([f.path for f in files], label)

    async def decode_inputs(self, ctx: JobContext) -> None:
        started = time.monotonic()
        ctx.inputs = await self.blocking(ctx.deadline, "downloading and decoding the input files",
                                         self._decode_inputs, ctx.request, ctx.deadline)
        ctx.timings["input_decode_ms"] = ms_since(started)

    def _decode_inputs(self, request: JobRequest, deadline: Deadline) -> list[tuple[str, bytes]]:
        """The job's input files, after its own S3 endpoint is checked: both before any work starts."""
        if request.s3 is not None and request.s3.guard is not None:
            try:
                request.s3.guard.check_url(request.s3.endpoint_url)
            except AddressRefused as error:
                raise InvalidInput(f"'s3.endpoint_url' {redact_url(request.s3.endpoint_url)} was refused: "
                                   f"{error}") from None
        return [
            (item.name, decode_input_file(item, max_bytes=self.settings.max_input_file_bytes,
                                          url_timeout_s=self.settings.input_url_timeout_s,
                                          url_guard=self.settings.url_guard, deadline=deadline))
            for item in request.files
        ]

    async def fetch_models(self, ctx: JobContext) -> None:
        """The job's models by URL, in the shared cache before the job takes an instance. A job cancelled or out
        of time stops its downloads and releases every file it held, whenever the fetch ends."""
        cache = self.model_cache
        if not ctx.request.models:
            return
        reporter = ProgressReporter(ctx.job, "download", self.settings.progress_interval_s, ctx.send_progress)
        credentials = Credentials(ctx.request.s3 or self.settings.s3, self.settings.hf_token)
        limits = Limits(ctx.deadline, threading.Event())

        def abandon(future: Future) -> None:
            assert limits.stop is not None
            limits.stop.set()
            future.add_done_callback(
                lambda done: done.exception() is None and cache.release(done.result().keys))

        fetched: Fetched = await self.blocking(ctx.deadline, "fetching the models", cache.fetch, ctx.request.models,
                                               credentials, reporter, ctx.log, limits, abandon=abandon)
        ctx.fetched = fetched

    async def run_on_an_instance(self, ctx: JobContext) -> RunOutcome:
        """Leases an instance (the one that last ran these models when it is free) and runs the job there; after a
        failure the recovery step decides whether the job runs once more, on another instance."""
        models = models_in(ctx.request.workflow)
        if ctx.send_progress and _must_wait(self.scheduler, ctx.request.gpu):
            ctx.send_progress(ctx.job, queued_payload(time.monotonic() - ctx.received, "a free instance"))
        while True:
            async with self.scheduler.lease(ctx.request.gpu, self.settings.start_timeout_s, models,
                                            frozenset(ctx.failed_on), ctx.deadline) as lease:
                ctx.instance = instance = lease.instance
                ctx.log.instance = instance.label
                ctx.log.info("running on %s (waited %.0f ms)", instance.label, lease.wait_ms)
                ctx.progress = ProgressReporter(ctx.job, instance.label, self.settings.progress_interval_s,
                                                ctx.send_progress, len(ctx.request.workflow), ctx.received)
                try:
                    outcome = await self.run_in_thread(ctx, lease.wait_ms)
                except WorkerError as error:
                    if await self.recovery.retries(ctx, error):
                        continue
                    raise
                self.scheduler.remember_models(instance.spec.index, models)
                ctx.timings["queue_wait_ms"] = round(lease.wait_ms, 1)
                return outcome

    async def run_in_thread(self, ctx: JobContext, wait_ms: float) -> RunOutcome:
        """Runs the blocking part in a thread; a cancelled job interrupts its prompt before the instance is freed."""
        assert ctx.instance is not None
        metrics = self.scheduler.metrics[ctx.instance.spec.index]
        ctx.cancel = threading.Event()
        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(self.executor, self.on_instance.run, ctx)
        ok = out_of_memory = False
        try:
            # The follower answers at the deadline (interrupting the prompt); this wait is the backstop for a call
            # that outlasts it, e.g. to an instance that stopped answering.
            backstop = max(ctx.deadline.remaining() + GRACE_S + SETTLE_AFTER_TIMEOUT_S, 0)
            try:
                outcome = await asyncio.wait_for(asyncio.shield(future), backstop)
            except TimeoutError:
                ctx.cancel.set()
                raise ctx.deadline.error(f"running the workflow on {ctx.instance.label}, which did not answer in "
                                         "time") from None
            ok = True
            return outcome
        except asyncio.CancelledError:
            ctx.cancel.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(future)  # the follower interrupts our prompt, then returns
            raise
        except ExecutionFailed as error:
            out_of_memory = error.out_of_memory
            raise
        finally:
            metrics.record(ok=ok, wait_ms=wait_ms, execution_ms=ms_since(started), out_of_memory=out_of_memory)
            self._count_job()

    async def deliver(self, ctx: JobContext, outcome: RunOutcome) -> Delivery:
        started = time.monotonic()
        delivery = await self.blocking(ctx.deadline, "delivering the outputs", self._deliver, outcome, ctx.request,
                                       ctx.job_id)
        ctx.timings["delivery_ms"] = ms_since(started)
        return delivery

    def _deliver(self, outcome: RunOutcome, request: JobRequest, job_id: str) -> Delivery:
        files, conversion_warnings = convert_images(outcome.files, request.image_format, request.image_quality)
        delivery = deliver(
            files, outcome.texts, job_id=job_id,
            requested_mode=request.output_mode or self.settings.output_mode,
            limit_bytes=self.settings.output_inline_limit_bytes,
            bucket=request.s3 or self.settings.s3,
            local_dir=self.settings.local_output_dir,
        )
        delivery.warnings[:0] = conversion_warnings
        return delivery

    async def blocking(self, deadline: Deadline, phase: str, function: Callable[..., Any], *args: Any,
                       abandon: Callable[[Future], None] | None = None) -> Any:
        """Runs `function(*args)` in a thread; the job stops waiting for it at its deadline (plus GRACE_S, so that
        the step's own, more precise error comes first) or when the job is cancelled. `abandon(future)` then lets
        go of what the thread still holds or will return."""
        future = self.executor.submit(function, *args)
        waited = asyncio.wrap_future(future)
        waited.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved, even if abandoned
        try:
            return await asyncio.wait_for(asyncio.shield(waited), max(deadline.remaining() + GRACE_S, 0))
        except TimeoutError:
            if abandon is not None:
                abandon(future)
            raise deadline.error(phase) from None
        except asyncio.CancelledError:
            if abandon is not None:
                abandon(future)
            raise

    def _count_job(self) -> None:
        self.jobs_done += 1
        if self.jobs_done % self.settings.metrics_log_every == 0:
            for metrics, instance in zip(self.scheduler.metrics, self.scheduler.instances, strict=True):
                busy = self.scheduler.gpu_busy.figures(instance.spec.gpu)["gpu_busy_pct_60s"]
                log.info("metrics after %d jobs: %s%s", self.jobs_done, metrics.log_line(),
                         "" if busy is None else f" gpu_busy_60s={busy}%")


def _must_wait(scheduler: Scheduler, pin: int | None) -> bool:
    """Whether a job would queue behind another: its pinned GPU's instances, or every healthy one, are busy."""
    indexes = range(len(scheduler.instances))
    if pin is not None:
        with contextlib.suppress(InvalidInput):  # the lease that follows gives the error
            indexes = scheduler.pinned(pin)
    return all(scheduler.load(i) > 0 for i in indexes if scheduler.instances[i].healthy)
