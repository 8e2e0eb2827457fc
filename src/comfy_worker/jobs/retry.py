"""The recovery step after a failed run on an instance: free memory after an out-of-memory error, restart a hung
instance, and decide whether the job runs once more on another instance (fleet/recovery.py holds the rules)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor

from comfy_worker.deadline import GRACE_S
from comfy_worker.errors import ExecutionFailed, InstanceDied, InstanceUnavailable, JobTimedOut, WorkerError
from comfy_worker.fleet.fleet import Fleet
from comfy_worker.fleet.instance import ComfyInstance
from comfy_worker.fleet.recovery import out_of_memory_error, paid_work_note, restart_if_hung, retry_reason
from comfy_worker.fleet.scheduler import Scheduler
from comfy_worker.jobs.context import JobContext
from comfy_worker.settings import Settings


class Recovery:
    def __init__(self, settings: Settings, fleet: Fleet, scheduler: Scheduler, executor: Executor) -> None:
        self.settings = settings
        self.fleet = fleet
        self.scheduler = scheduler
        self.executor = executor

    async def retries(self, ctx: JobContext, error: WorkerError) -> bool:
        """Whether the job runs once more after `error` (the reason joins its warnings); when not, the caller
        raises the error, which this step may have reworded."""
        instance = ctx.instance
        assert instance is not None
        reason = await self._reason_to_retry(ctx, instance, error)
        if reason is None:
            return False
        ctx.log.warning("%s", reason)
        ctx.warnings.append(reason)
        ctx.failed_on.add(instance.spec.index)
        return True

    async def _reason_to_retry(self, ctx: JobContext, instance: ComfyInstance, error: WorkerError) -> str | None:
        loop = asyncio.get_running_loop()
        if isinstance(error, JobTimedOut) or (isinstance(error, InstanceUnavailable)
                                              and not isinstance(error, InstanceDied)):
            hung_s = self.settings.hung_instance_s
            if ctx.deadline.remaining() + GRACE_S < hung_s:  # judged after the job answered; kept out of service
                threading.Thread(target=restart_if_hung, args=(instance, hung_s, instance.launches, True),
                                 name=f"probe-{instance.label}", daemon=True).start()
                return None
            if await loop.run_in_executor(self.executor, restart_if_hung, instance, hung_s, instance.launches):
                raise type(error)(f"{error}. ComfyUI on {instance.label} then stopped answering for "
                                  f"{hung_s:g} s; the worker restarts it") from error
            return None
        if ctx.deadline.expired():
            return None
        retried = bool(ctx.failed_on)
        pin = ctx.request.gpu
        retry = retry_reason(error, self.settings, instance.label, pin is not None, retried,
                             self._healthy_siblings(pin, instance) if pin is not None else ())
        if retry is not None and error.paid_nodes_started:
            error.args = (f"{error}. {paid_work_note(error.paid_nodes_started)}",)
            retry = None
        if isinstance(error, ExecutionFailed) and error.out_of_memory:
            try:
                await loop.run_in_executor(self.executor, instance.client.free_memory)
            except InstanceUnavailable as free_error:
                ctx.log.error("could not free memory on %s: %s", instance.label, free_error)
            if retry is None:
                raise out_of_memory_error(error, instance.label, self.fleet.gpu_of(instance), retried) from error
        return retry

    def _healthy_siblings(self, pin: int, instance: ComfyInstance) -> list[str]:
        """The healthy instances other than `instance` that the pin names (the other instances of its GPU)."""
        others = (self.scheduler.instances[i] for i in self.scheduler.pinned(pin))
        return [other.label for other in others if other is not instance and other.healthy]
