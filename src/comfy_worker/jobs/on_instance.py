"""The part of a job that runs on its leased instance, in a thread: match the instance's VRAM mode, upload the
inputs, submit and follow the prompt, collect the outputs; then every file the job caused in the instance's folders
is removed (job_files), whatever happened."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

from comfy_worker.comfy.follower import Execution, JobCancelled, PromptFollower
from comfy_worker.comfy.workflow_rewrite import isolate_outputs, job_folder_name
from comfy_worker.delivery.outputs import OutputFile, find_outputs, read_output
from comfy_worker.errors import (
    ExecutionFailed,
    InstanceDied,
    InstanceUnavailable,
    InvalidInput,
    WorkerError,
    strip_host_paths,
)
from comfy_worker.fleet.fleet import Fleet
from comfy_worker.fleet.instance import ComfyInstance
from comfy_worker.fleet.recovery import api_node_ids, class_types, paid_nodes_started
from comfy_worker.fleet.slow_paths import job_models, slow_path_warnings
from comfy_worker.fleet.tuning import shared_gpu_offload_warning, vram_switch
from comfy_worker.jobs.context import JobContext, RunOutcome, ms_since
from comfy_worker.jobs.job_files import remove_new, snapshot
from comfy_worker.jobs.report import execution_timings
from comfy_worker.jobs.request_limits import check_output_size
from comfy_worker.models.files import ModelFile, workflow_model_files
from comfy_worker.settings import Settings


class OnInstance:
    def __init__(self, settings: Settings, fleet: Fleet, model_roots: list[Path]) -> None:
        self.settings = settings
        self.fleet = fleet
        self.model_roots = model_roots

    def run(self, ctx: JobContext) -> RunOutcome:
        instance = ctx.instance
        assert instance is not None
        before = snapshot(instance.dirs)
        try:
            return self._run(ctx, instance)
        finally:
            _remove_inputs(instance, ctx.inputs)
            remove_new(instance.dirs, before)

    def _run(self, ctx: JobContext, instance: ComfyInstance) -> RunOutcome:
        timings: dict[str, Any] = {}
        model_files = workflow_model_files(ctx.request.workflow, self.model_roots)
        warnings = self._match_vram_mode(ctx, instance, model_files, timings)
        log_mark = instance.lines_logged
        job_folder = job_folder_name(ctx.job_id)
        execution, submit_warnings = self._submit_and_follow(ctx, instance, job_folder, timings)
        timings.update(execution_timings(execution, ctx.request.workflow))
        warnings += submit_warnings + self._slow_paths(ctx, instance, log_mark, model_files, execution, timings)
        return self._collect(ctx, instance, execution, job_folder, timings, warnings)

    def _match_vram_mode(self, ctx: JobContext, instance: ComfyInstance, files: list[ModelFile],
                         timings: dict[str, Any]) -> list[str]:
        """Restarts the instance in the VRAM mode this job's models need when its current one does not suit them
        (--highvram for models that fit, dynamic loading for models that do not: fleet/vram.py)."""
        gpu_mib = self.fleet.vram_share_mib(instance)  # its card's, split between the instances sharing it
        if gpu_mib is None:
            return []
        switched = vram_switch(self.settings, instance.tuning, gpu_mib << 20, files)
        if switched is None or switched.vram is None:
            return []
        started = time.monotonic()
        previous = instance.tuning.vram.mode if instance.tuning.vram else "?"
        note = (f"{instance.label} restarted in VRAM mode {switched.vram.mode} for this job "
                f"({switched.vram.reason}); it was in mode {previous}")
        ctx.log.info("%s", note)
        if not self.fleet.relaunch(instance, switched, wait_s=max(0.0, ctx.deadline.remaining())):
            raise ctx.deadline.error(f"restarting {instance.label} in VRAM mode {switched.vram.mode} for this job's "
                                     "models (the instance goes on starting)")
        timings["vram_switch_ms"] = ms_since(started)
        warnings = [f"{note}: {timings['vram_switch_ms'] / 1000:.1f} s"]
        shared = shared_gpu_offload_warning(instance.spec, switched.vram.mode,
                                            [i.label for i in self.fleet.siblings(instance)])
        if shared:
            ctx.log.warning("%s", shared)
            warnings.append(shared)
        return warnings

    def _submit_and_follow(self, ctx: JobContext, instance: ComfyInstance, job_folder: str,
                           timings: dict[str, Any]) -> tuple[Execution, list[str]]:
        """Uploads the inputs, submits the workflow and follows it to its end; a failure is explained (_explain)."""
        request, client = ctx.request, instance.client
        launches = instance.launches
        follower: PromptFollower | None = None
        api_nodes: set[str] = set()
        try:
            started = time.monotonic()
            _upload_inputs(ctx, instance)
            timings["upload_ms"] = ms_since(started)
            workflow = isolate_outputs(request.workflow, job_folder)
            api_nodes = api_node_ids(request.workflow, client.api_node_classes(class_types(request.workflow)))
            follower = self._follower(ctx, instance, job_folder)
            follower.connect()
            try:
                extra_data = {"api_key_comfy_org": request.comfy_org_api_key} if request.comfy_org_api_key else {}
                if ctx.stream is not None and request.previews:
                    extra_data["preview_method"] = request.previews  # ComfyUI v0.29 reads it per prompt
                ctx.deadline.check(f"preparing the workflow on {instance.label} (it was not submitted)")
                submitted = time.monotonic()
                prompt_id, warnings = client.submit(workflow, follower.client_id, extra_data)
                ctx.log.info("prompt %s submitted", prompt_id)
                execution = follower.follow(prompt_id, request.workflow, ctx.deadline, ctx.cancel, ctx.progress)
                timings["gpu_busy_pct"] = self.fleet.gpu_busy.busy_between(instance.spec.gpu, submitted,
                                                                           time.monotonic())
                return execution, warnings
            finally:
                follower.close()
        except BaseException as error:
            explained = self._explain(error, ctx, instance, launches, follower, api_nodes)
            if explained is error:
                raise
            raise explained from None

    def _follower(self, ctx: JobContext, instance: ComfyInstance, job_folder: str) -> PromptFollower:
        """The prompt's follower; in the streaming mode it also hands on previews and each output once saved."""
        stream, request = ctx.stream, ctx.request
        on_preview = on_output = None
        if stream is not None:
            on_preview = stream.preview if request.previews else None
            inline = (request.output_mode or self.settings.output_mode) != "s3"
            limit = self.settings.output_inline_limit_bytes

            def on_output(node_id: str, output: dict[str, Any]) -> None:
                stream.outputs_saved(node_id, output, instance.dirs, job_folder, request, inline, limit)
        return PromptFollower(instance.client, uuid.uuid4().hex, self.settings.websocket_quiet_s, ctx.log,
                              on_preview, on_output)

    def _explain(self, error: BaseException, ctx: JobContext, instance: ComfyInstance, launches: int,
                 follower: PromptFollower | None, api_nodes: set[str]) -> BaseException:
        """The error as the job reports it: which paid nodes had started, whether the instance died, no host
        paths; a cancelled prompt becomes the job's cancellation."""
        if isinstance(error, WorkerError) and api_nodes:
            error.paid_nodes_started = paid_nodes_started(ctx.request.workflow, api_nodes, follower)
        if isinstance(error, JobCancelled):
            return asyncio.CancelledError()
        if isinstance(error, InstanceUnavailable):
            outputs_seen = follower.outputs_seen if follower else False
            explained = _explain_instance_failure(instance, launches, error, outputs_seen)
            explained.paid_nodes_started = error.paid_nodes_started
            return explained
        if isinstance(error, ExecutionFailed):  # ComfyUI's exception text names files by their host paths
            error.args = (strip_host_paths(str(error), (self.settings.work_dir, self.settings.comfyui_dir)),)
        return error

    def _slow_paths(self, ctx: JobContext, instance: ComfyInstance, log_mark: int, model_files: list[ModelFile],
                    execution: Execution, timings: dict[str, Any]) -> list[str]:
        gpu_mib = self.gpu_memory_mib(instance)
        models = job_models(model_files, gpu_mib, (s.its for s in execution.sampling.values()))
        return slow_path_warnings(instance.lines_since(log_mark), ctx.request.workflow, gpu_mib, timings["phases_ms"],
                                  execution.execution_ms, models)

    def _collect(self, ctx: JobContext, instance: ComfyInstance, execution: Execution, job_folder: str,
                 timings: dict[str, Any], warnings: list[str]) -> RunOutcome:
        """Reads the job's outputs into memory, so that the instance can take the next job."""
        started = time.monotonic()
        ctx.deadline.check(f"collecting the outputs from {instance.label}")
        files, texts = find_outputs(execution.history.get("outputs") or {}, ctx.request.include_previews, job_folder)
        check_output_size(_sizes(files, instance), self.settings.max_output_bytes)
        read = []
        for output in files:
            try:
                read.append((output, read_output(output, instance.dirs)))
            except (OSError, ValueError) as error:
                warnings.append(f"output {output.name} of node {output.node_id} could not be read: {error}")
        timings["collect_ms"] = ms_since(started)
        instance.client.forget(execution.prompt_id)
        return RunOutcome(execution, read, texts, warnings, timings, job_folder)

    def gpu_memory_mib(self, instance: ComfyInstance) -> int | None:
        gpu = self.fleet.gpu_of(instance)
        return gpu.memory_total_mib if gpu else None


def _upload_inputs(ctx: JobContext, instance: ComfyInstance) -> None:
    for name, data in ctx.inputs:
        if (instance.dirs.input / name).is_dir():  # ComfyUI would answer HTTP 500
            raise InvalidInput(f"input file {name!r} has the name of a folder in ComfyUI's input folder: "
                               "give the file another name")
        ctx.deadline.check(f"uploading the input files to {instance.label}")
        instance.client.upload_input(name, data)


def _remove_inputs(instance: ComfyInstance, inputs: list[tuple[str, bytes]]) -> None:
    for name, _ in inputs:
        with contextlib.suppress(OSError):
            (instance.dirs.input / name).unlink()


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


def _sizes(files: list[OutputFile], instance: ComfyInstance) -> list[int]:
    sizes = []
    for output in files:
        with contextlib.suppress(OSError, ValueError):  # an unreadable file is reported when it is read
            sizes.append(output.path_in(instance.dirs).stat().st_size)
    return sizes
