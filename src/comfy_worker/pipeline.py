"""The job pipeline: validate → choose an instance → upload inputs → submit → follow → collect → deliver.

`Worker.handle` is where a job enters and leaves; it is also the one place where a failure becomes
`{"error": "..."}`, so every path returns a message the user can act on and the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .deadline import GRACE_S, Deadline
from .delivery import Delivery, deliver
from .errors import (
    ExecutionFailed,
    InstanceDied,
    InstanceUnavailable,
    InvalidInput,
    JobTimedOut,
    WorkerError,
    WorkerNotReady,
    strip_host_paths,
)
from .fleet import Fleet
from .follower import SETTLE_AFTER_TIMEOUT_S, Execution, JobCancelled, PromptFollower
from .gpus import Gpu
from .image_format import convert_images
from .input_files import decode_input_file
from .instance import ComfyInstance
from .job_files import remove_new, snapshot
from .job_input import JobRequest, parse_job_input, wants_refresh
from .logs import JobLog
from .model_affinity import models_in
from .model_cache import Credentials, Fetched, Limits, ModelCache
from .model_files import ModelFile, workflow_model_files
from .outputs import OutputData, OutputFile, OutputText, find_outputs, read_output
from .prefetch import Prefetcher
from .progress import ProgressReporter, Sender, final_status, queued_payload, runpod_sender
from .recovery import (
    api_node_ids,
    class_types,
    out_of_memory_error,
    paid_nodes_started,
    paid_work_note,
    restart_if_hung,
    retry_reason,
)
from .redaction import redact_text, redact_url
from .request_limits import check_output_size, check_request
from .scheduler import Scheduler
from .settings import Settings
from .slow_paths import job_models, slow_path_warnings
from .tuning import vram_switch
from .url_guard import AddressRefused
from .vram import model_roots
from .warmup import load_warmup_workflow
from .workflow_rewrite import isolate_outputs, job_folder_name

log = logging.getLogger("comfy_worker.pipeline")


@dataclass
class RunOutcome:
    """What one job produced on its instance, read into memory before the instance is handed to the next job."""

    execution: Execution
    files: list[tuple[OutputFile, OutputData]]  # large files stay on disk until delivered
    texts: list[OutputText]
    warnings: list[str]
    timings: dict[str, Any] = field(default_factory=dict)
    job_folder: str = ""


class Worker:
    def __init__(self, settings: Settings, gpus: list[Gpu] | None = None, progress_sender: Sender | None = None):
        self.settings = settings
        self._gpus = gpus
        self.fleet: Fleet | None = None
        self.scheduler: Scheduler | None = None
        self.startup_error: str | None = None
        self.progress_sender = progress_sender or (runpod_sender if settings.send_progress else None)
        self.jobs_done = 0
        self.startup_s: dict[str, float] = {}  # instances_ready, warmup: where a cold start's time went
        self._executor: ThreadPoolExecutor | None = None
        self.model_cache: ModelCache | None = None
        self.prefetcher = Prefetcher(settings.prefetch_threads)
        self.model_roots: list[Path] = []

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
            self.fleet = Fleet(self.settings, self._gpus, (cache_paths,))
            self.fleet.start()
            self.startup_s["instances_ready"] = round(time.monotonic() - started, 2)
        except Exception as error:  # whatever it is, every job is told why instead of the handler crashing
            self.startup_error = str(error) if isinstance(error, WorkerError) else f"{type(error).__name__}: {error}"
            log.exception("the worker could not start: %s", self.startup_error)
            return
        self.scheduler = Scheduler(self.fleet.instances)
        # Each running job holds a thread while it follows its prompt; give every instance room for several.
        self._executor = ThreadPoolExecutor(4 * len(self.fleet.instances) + 4, thread_name_prefix="job")
        started = time.monotonic()
        self.warm_up()
        self.startup_s["warmup"] = round(time.monotonic() - started, 2)

    def _read_ahead_warmup(self) -> None:
        """The warm-up workflow's model files start loading into the page cache while the instances start."""
        with contextlib.suppress(WorkerError):  # a broken warm-up workflow is reported by warm_up
            workflow = load_warmup_workflow(self.settings.warmup_workflow)
            if workflow is not None:
                self.read_ahead(workflow, "warmup")

    def read_ahead(self, workflow: dict[str, Any], label: str) -> None:
        """Starts reading the workflow's model files into the page cache in the background."""
        files = workflow_model_files(workflow, self.model_roots)
        self.prefetcher.start([f.path for f in files], label)

    def warm_up(self) -> None:
        """Runs WARMUP_WORKFLOW on every healthy instance at once (outside the scheduler: no job can be waiting
        yet). A failing warm-up is logged with its reason; the worker still serves."""
        try:
            workflow = load_warmup_workflow(self.settings.warmup_workflow)
        except WorkerError as error:
            log.error("warm-up skipped: %s", error)
            return
        if workflow is None or self.fleet is None or self.scheduler is None:
            return
        request = parse_job_input({"workflow": workflow})
        instances = [i for i in self.fleet.instances if i.healthy]
        started = time.monotonic()
        with ThreadPoolExecutor(len(instances) or 1) as pool:
            results = list(pool.map(lambda instance: self._warm_up_one(instance, request), instances))
        log.info("warm-up ran on %d instance(s) in %.1f s: %s", len(instances), time.monotonic() - started,
                 ", ".join(results))

    def _warm_up_one(self, instance: ComfyInstance, request: JobRequest) -> str:
        job_log = JobLog("warmup")
        job_log.instance = instance.label
        started = time.monotonic()
        try:
            self._execute(instance, request, [], Deadline.after(self.settings.job_timeout_s, started),
                          threading.Event(), ProgressReporter({}, instance.label, 1e9, None), job_log)
        except (WorkerError, JobCancelled) as error:
            job_log.error("warm-up failed: %s", error)
            return f"{instance.label} failed"
        assert self.scheduler is not None
        self.scheduler.remember_models(instance.spec.index, models_in(request.workflow))
        return f"{instance.label} {time.monotonic() - started:.1f} s"

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def concurrency(self) -> int:
        """Jobs run at once: one per instance (a constant, so RunPod's scaler never drains to change it)."""
        return len(self.fleet.instances) if self.fleet else 1

    # --- one job ------------------------------------------------------------------------------------------------
    async def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        job_id = str(job.get("id") or "local")
        job_log = JobLog(job_id)
        result: dict[str, Any]
        try:
            result = await self._run(job, job_id, job_log)
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

    async def _run(self, job: dict[str, Any], job_id: str, job_log: JobLog) -> dict[str, Any]:
        received = time.monotonic()
        if self.startup_error or self.scheduler is None:
            raise WorkerNotReady(f"the worker failed to start: {self.startup_error or 'not started'}")
        check_request(job.get("input"), self.settings.max_request_bytes, self.settings.max_workflow_nodes)
        request = parse_job_input(job.get("input"), self.settings.url_guard)
        self.read_ahead(request.workflow, job_id)
        deadline = Deadline.after(request.timeout_s or self.settings.job_timeout_s, received)
        warnings = [f"ignored unknown input field '{name}'" for name in request.ignored_fields]

        started = time.monotonic()
        inputs = await self._blocking(deadline, "downloading and decoding the input files",
                                      self._decode_inputs, request, deadline)
        decode_ms = _ms_since(started)
        fetched = await self._fetch_models(job, request, job_log, deadline)
        try:
            return await self._run_holding_models(job, job_log, request, inputs, received, deadline,
                                                  warnings, decode_ms, fetched)
        finally:
            if self.model_cache is not None:
                self.model_cache.release(fetched.keys)

    async def _blocking(self, deadline: Deadline, phase: str, function, *args, abandon=None):
        """Runs `function(*args)` in a thread; the job stops waiting for it at its deadline (plus GRACE_S, so that
        the step's own, more precise error comes first) or when the job is cancelled. `abandon(future)` then lets
        go of what the thread still holds or will return."""
        future = self._executor.submit(function, *args)
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

    async def _fetch_models(self, job: dict[str, Any], request: JobRequest, job_log: JobLog,
                            deadline: Deadline) -> Fetched:
        """The job's models by URL, in the shared cache before the job takes an instance. A job cancelled or out
        of time stops its downloads and releases every file it held, whenever the fetch ends."""
        cache = self.model_cache
        if not request.models or cache is None:
            return Fetched((), 0.0, ())
        reporter = ProgressReporter(job, "download", self.settings.progress_interval_s, self.progress_sender)
        credentials = Credentials(request.s3 or self.settings.s3, self.settings.hf_token)
        limits = Limits(deadline, threading.Event())

        def abandon(future) -> None:
            assert limits.stop is not None
            limits.stop.set()
            future.add_done_callback(
                lambda done: done.exception() is None and cache.release(done.result().keys))

        return await self._blocking(deadline, "fetching the models", cache.fetch, request.models, credentials,
                                    reporter, job_log, limits, abandon=abandon)

    async def _run_holding_models(
        self, job: dict[str, Any], job_log: JobLog, request: JobRequest, inputs: list[tuple[str, bytes]],
        received: float, deadline: Deadline, warnings: list[str], decode_ms: float, fetched: Fetched,
    ) -> dict[str, Any]:
        """Runs the job on an instance once its models are in the cache."""
        health_wait_s = self.settings.start_timeout_s
        models = models_in(request.workflow)
        failed_on: set[int] = set()
        outcome: RunOutcome | None = None
        if self.progress_sender and _must_wait(self.scheduler, request.gpu):
            self.progress_sender(job, queued_payload(time.monotonic() - received, "a free instance"))
        while outcome is None:
            async with self.scheduler.lease(request.gpu, health_wait_s, models, frozenset(failed_on),
                                            deadline) as lease:
                instance = lease.instance
                job_log.instance = instance.label
                job_log.info("running on %s (waited %.0f ms)", instance.label, lease.wait_ms)
                reporter = ProgressReporter(job, instance.label, self.settings.progress_interval_s,
                                            self.progress_sender, len(request.workflow), received)
                try:
                    outcome = await self._run_on_instance(
                        instance, lease.wait_ms, request, inputs, deadline, reporter, job_log
                    )
                except WorkerError as error:
                    retry = await self._recover(instance, error, request, bool(failed_on), job_log, deadline)
                    if retry is None:
                        raise
                    job_log.warning("%s", retry)
                    warnings.append(retry)
                    failed_on.add(instance.spec.index)
                    continue
                self.scheduler.remember_models(instance.spec.index, models)
        warnings += outcome.warnings

        started = time.monotonic()
        delivery = await self._blocking(deadline, "delivering the outputs", self._deliver, outcome, request,
                                        job_log.job_id)
        delivery_ms = _ms_since(started)

        timings = {
            "queue_wait_ms": round(lease.wait_ms, 1),
            "input_decode_ms": decode_ms,
            "download_ms": fetched.download_ms,
            **outcome.timings,
            "delivery_ms": delivery_ms,
            "s3_upload_ms": delivery.upload_ms if delivery.mode == "s3" else 0.0,
            "total_ms": _ms_since(received),
        }
        job_log.info("done in %.0f ms: %s", timings["total_ms"],
                     ", ".join(f"{len(v)} {k}" for k, v in delivery.outputs.items()) or "no outputs")
        return {
            "images": [],
            **delivery.outputs,
            "outputs": delivery.typed,
            "output_mode": delivery.mode,
            "gpu": instance.spec.gpu,
            "instance": instance.label,
            "prompt_id": outcome.execution.prompt_id,
            "tuning": _tuning_report(instance),
            "timings": timings,
            "metrics": self.scheduler.snapshot(),
            "models_downloaded": list(fetched.downloaded),
            "warnings": [redact_text(w) for w in warnings + delivery.warnings],
        }

    async def _recover(self, instance: ComfyInstance, error: WorkerError, request: JobRequest, retried: bool,
                       job_log: JobLog, deadline: Deadline) -> str | None:
        """After a failed run: frees memory after OOM, restarts a hung instance; returns why the job runs once more,
        or None when the (possibly reworded) error stands."""
        loop = asyncio.get_running_loop()
        if isinstance(error, JobTimedOut) or (isinstance(error, InstanceUnavailable)
                                              and not isinstance(error, InstanceDied)):
            hung_s = self.settings.hung_instance_s
            if deadline.remaining() + GRACE_S < hung_s:  # judged after the job answered, kept out of service meanwhile
                threading.Thread(target=restart_if_hung, args=(instance, hung_s, instance.launches, True),
                                 name=f"probe-{instance.label}", daemon=True).start()
                return None
            if await loop.run_in_executor(self._executor, restart_if_hung, instance, hung_s, instance.launches):
                raise type(error)(f"{error}. ComfyUI on {instance.label} then stopped answering for "
                                  f"{hung_s:g} s; the worker restarts it") from error
            return None
        if deadline.expired():
            return None
        retry = retry_reason(error, self.settings, instance.label, request.gpu is not None, retried)
        if retry is not None and error.paid_nodes_started:
            error.args = (f"{error}. {paid_work_note(error.paid_nodes_started)}",)
            retry = None
        if isinstance(error, ExecutionFailed) and error.out_of_memory:
            try:
                await loop.run_in_executor(self._executor, instance.client.free_memory)
            except InstanceUnavailable as free_error:
                job_log.error("could not free memory on %s: %s", instance.label, free_error)
            if retry is None:
                raise out_of_memory_error(error, instance.label, self._gpu_of(instance), retried) from error
        return retry

    def _gpu_of(self, instance: ComfyInstance) -> Gpu | None:
        if instance.spec.gpu is None or self.fleet is None:
            return None
        return next((g for g in self.fleet.gpus if g.index == instance.spec.gpu), None)

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

    async def _run_on_instance(
        self, instance, wait_ms, request, inputs, deadline: Deadline, reporter, job_log
    ) -> RunOutcome:
        """Runs the blocking part in a thread; a cancelled job interrupts its prompt before the instance is freed."""
        assert self.scheduler is not None
        metrics = self.scheduler.metrics[instance.spec.index]
        stop = threading.Event()
        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._execute, instance, request, inputs, deadline, stop, reporter, job_log
        )
        ok = out_of_memory = False
        try:
            # The follower answers at the deadline (interrupting the prompt); this wait is the backstop for a call
            # that outlasts it, e.g. to an instance that stopped answering.
            backstop = max(deadline.remaining() + GRACE_S + SETTLE_AFTER_TIMEOUT_S, 0)
            try:
                outcome = await asyncio.wait_for(asyncio.shield(future), backstop)
            except TimeoutError:
                stop.set()
                raise deadline.error(f"running the workflow on {instance.label}, which did not answer in time") \
                    from None
            ok = True
            return outcome
        except asyncio.CancelledError:
            stop.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(future)  # the follower interrupts our prompt, then returns
            raise
        except ExecutionFailed as error:
            out_of_memory = error.out_of_memory
            raise
        finally:
            metrics.record(ok=ok, wait_ms=wait_ms, execution_ms=_ms_since(started), out_of_memory=out_of_memory)
            self._count_job()

    def _execute(self, instance: ComfyInstance, request: JobRequest, inputs, deadline: Deadline, stop, reporter,
                 job_log) -> RunOutcome:
        """Runs the job on its instance and reads its outputs into memory; then every file the job caused in the
        instance's folders is removed (job_files), whatever happened."""
        before = snapshot(instance.dirs)
        try:
            return self._execute_job(instance, request, inputs, deadline, stop, reporter, job_log)
        finally:
            self._remove_inputs(instance, inputs)
            remove_new(instance.dirs, before)

    def _execute_job(self, instance: ComfyInstance, request: JobRequest, inputs, deadline: Deadline, stop, reporter,
                     job_log) -> RunOutcome:
        timings: dict[str, Any] = {}
        model_files = workflow_model_files(request.workflow, self.model_roots)
        vram_warnings = self._match_vram_mode(instance, model_files, timings, job_log)
        client = instance.client
        launches = instance.launches
        log_mark = instance.lines_logged
        started = time.monotonic()
        job_folder = job_folder_name(job_log.job_id)
        follower: PromptFollower | None = None
        api_nodes: set[str] = set()
        try:
            for name, data in inputs:
                if (instance.dirs.input / name).is_dir():  # ComfyUI would answer HTTP 500
                    raise InvalidInput(f"input file {name!r} has the name of a folder in ComfyUI's input folder: "
                                       "give the file another name")
                deadline.check(f"uploading the input files to {instance.label}")
                client.upload_input(name, data)
            timings["upload_ms"] = _ms_since(started)
            workflow = isolate_outputs(request.workflow, job_folder)
            api_nodes = api_node_ids(request.workflow, client.api_node_classes(class_types(request.workflow)))
            follower = PromptFollower(client, uuid.uuid4().hex, self.settings.websocket_quiet_s, job_log)
            follower.connect()
            try:
                extra_data = {"api_key_comfy_org": request.comfy_org_api_key} if request.comfy_org_api_key else {}
                deadline.check(f"preparing the workflow on {instance.label} (it was not submitted)")
                prompt_id, warnings = client.submit(workflow, follower.client_id, extra_data)
                job_log.info("prompt %s submitted", prompt_id)
                execution = follower.follow(prompt_id, request.workflow, deadline, stop, reporter)
            finally:
                follower.close()
        except BaseException as error:
            if isinstance(error, WorkerError) and api_nodes:
                error.paid_nodes_started = paid_nodes_started(request.workflow, api_nodes, follower)
            if isinstance(error, JobCancelled):
                raise asyncio.CancelledError() from None
            if isinstance(error, InstanceUnavailable):
                outputs_seen = follower.outputs_seen if follower else False
                explained = self._explain_instance_failure(instance, launches, error, outputs_seen)
                explained.paid_nodes_started = error.paid_nodes_started
                raise explained from None
            if isinstance(error, ExecutionFailed):  # ComfyUI's exception text names files by their host paths
                error.args = (strip_host_paths(str(error), (self.settings.work_dir, self.settings.comfyui_dir)),)
            raise
        timings.update(_execution_timings(execution, request.workflow))
        gpu_mib = self._gpu_memory_mib(instance)
        models = job_models(model_files, gpu_mib, (s.its for s in execution.sampling.values()))
        warnings = vram_warnings + warnings + slow_path_warnings(
            instance.lines_since(log_mark), request.workflow, gpu_mib, timings["phases_ms"], execution.execution_ms,
            models)
        started = time.monotonic()
        deadline.check(f"collecting the outputs from {instance.label}")
        files, texts = find_outputs(execution.history.get("outputs") or {}, request.include_previews, job_folder)
        check_output_size(_sizes(files, instance), self.settings.max_output_bytes)
        read = []
        for output in files:
            try:
                read.append((output, read_output(output, instance.dirs)))
            except (OSError, ValueError) as error:
                warnings.append(f"output {output.name} of node {output.node_id} could not be read: {error}")
        timings["collect_ms"] = _ms_since(started)
        client.forget(execution.prompt_id)
        return RunOutcome(execution, read, texts, warnings, timings, job_folder)

    def _match_vram_mode(self, instance: ComfyInstance, files: list[ModelFile], timings: dict[str, Any],
                         job_log: JobLog) -> list[str]:
        """Restarts the instance in the VRAM mode this job's models need when its current one does not suit them
        (--highvram for models that fit, dynamic loading for models that do not: vram.py)."""
        gpu_mib = self._gpu_memory_mib(instance)
        if self.fleet is None or gpu_mib is None:
            return []
        switched = vram_switch(self.settings, instance.tuning, gpu_mib << 20, files)
        if switched is None or switched.vram is None:
            return []
        started = time.monotonic()
        previous = instance.tuning.vram.mode if instance.tuning.vram else "?"
        note = (f"{instance.label} restarted in VRAM mode {switched.vram.mode} for this job "
                f"({switched.vram.reason}); it was in mode {previous}")
        job_log.info("%s", note)
        self.fleet.relaunch(instance, switched)
        timings["vram_switch_ms"] = _ms_since(started)
        return [f"{note}: {timings['vram_switch_ms'] / 1000:.1f} s"]

    def _gpu_memory_mib(self, instance: ComfyInstance) -> int | None:
        gpu = self._gpu_of(instance)
        return gpu.memory_total_mib if gpu else None

    @staticmethod
    def _explain_instance_failure(
        instance: ComfyInstance, launches: int, error: InstanceUnavailable, outputs_seen: bool
    ) -> InstanceUnavailable:
        time.sleep(0.5)  # a process that just died may not be reaped yet
        if not instance.died_since(launches):
            return error
        code = instance.exit_code() if instance.launches == launches else instance.last_exit_code
        if instance.launches == launches:  # not restarted yet: no job goes to it before the fleet's watcher sees it
            instance.healthy = False
        return InstanceDied(
            f"ComfyUI on {instance.label} died during the job (exit code {code}); the worker restarts it. "
            f"Its last log lines:\n{instance.log_tail(10)}",
            outputs_seen=outputs_seen,
        )

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

    @staticmethod
    def _remove_inputs(instance: ComfyInstance, inputs: list[tuple[str, bytes]]) -> None:
        for name, _ in inputs:
            with contextlib.suppress(OSError):
                (instance.dirs.input / name).unlink()

    def _count_job(self) -> None:
        self.jobs_done += 1
        if self.scheduler and self.jobs_done % self.settings.metrics_log_every == 0:
            for metrics in self.scheduler.metrics:
                log.info("metrics after %d jobs: %s", self.jobs_done, metrics.log_line())


def _sizes(files: list[OutputFile], instance: ComfyInstance) -> list[int]:
    sizes = []
    for output in files:
        with contextlib.suppress(OSError, ValueError):  # an unreadable file is reported when it is read
            sizes.append(output.path_in(instance.dirs).stat().st_size)
    return sizes


def _tuning_report(instance: ComfyInstance) -> dict[str, Any]:
    """How the instance that ran the job is tuned: VRAM mode, CPU cores, and the switches its process applied."""
    tuning = instance.tuning
    switches = instance.switches
    return {
        "vram_mode": tuning.vram.mode if tuning.vram else None,
        "cpus": tuning.cpu_set.describe() if tuning.cpu_set else None,
        "flags": list(tuning.flags),
        "applied": switches.get("applied", []) if "error" not in switches else [switches["error"]],
        "torch": switches.get("torch", {}),
        "compiled_models": switches.get("compiled_models", 0),
    }


def _must_wait(scheduler: Scheduler, pin: int | None) -> bool:
    """Whether a job would queue behind another: its pinned instance, or every healthy one, is busy."""
    indexes = [pin] if pin is not None and pin < len(scheduler.instances) else range(len(scheduler.instances))
    return all(scheduler.load(i) > 0 for i in indexes if scheduler.instances[i].healthy)


def phase_of(class_type: str, sampling_node: bool) -> str:
    if sampling_node or "Sampler" in class_type:
        return "sampling_ms"
    if "Loader" in class_type:
        return "model_load_ms"
    if class_type.startswith("VAEDecode"):
        return "vae_decode_ms"
    if class_type.startswith("Save") or class_type.startswith("Preview"):
        return "save_ms"
    return "other_nodes_ms"


def _phases(execution: Execution, workflow: dict[str, Any]) -> dict[str, float]:
    """Where the execution time went, from the per-node timings: model load, sampling, VAE decode, saving, rest.
    ComfyUI moves weights to the GPU inside the sampler, so a first job's sampling includes that upload."""
    phases = dict.fromkeys(("model_load_ms", "sampling_ms", "vae_decode_ms", "save_ms", "other_nodes_ms"), 0.0)
    for node, ms in execution.node_ms.items():
        class_type = str(workflow.get(node, {}).get("class_type", ""))
        phases[phase_of(class_type, node in execution.sampling)] += ms
    return {name: round(ms, 1) for name, ms in phases.items()}


def _execution_timings(execution: Execution, workflow: dict[str, Any]) -> dict[str, Any]:
    return {
        "execution_ms": execution.execution_ms,
        "phases_ms": _phases(execution, workflow),
        "nodes_ms": {
            node: {"class_type": workflow.get(node, {}).get("class_type", "?"), "ms": ms}
            for node, ms in execution.node_ms.items()
        },
        "cached_nodes": execution.cached_nodes,
        "sampling": {
            node: {"steps": s.total_steps, "it_per_s": s.its} for node, s in execution.sampling.items()
        },
        "websocket_drops": execution.websocket_drops,
        "history_polls": execution.history_polls,
    }


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
