"""Chooses the instance a job runs on and queues it there: one queue per instance, one job at a time each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass

from comfy_worker.deadline import NO_DEADLINE, Deadline
from comfy_worker.errors import InstanceUnavailable, InvalidInput
from comfy_worker.fleet.gpu_busy import GpuBusySampler
from comfy_worker.fleet.instance import ComfyInstance
from comfy_worker.fleet.metrics import InstanceMetrics

log = logging.getLogger("comfy_worker.scheduler")

HEALTH_WAIT_POLL_S = 0.5


@dataclass
class Lease:
    instance: ComfyInstance
    wait_ms: float


def least_loaded(loads: Sequence[tuple[int, bool, int]], affinity: Mapping[int, int] | None = None) -> int | None:
    """Picks among (index, healthy, load) the healthy instance with the least load; among equally loaded ones, the
    one that already holds most of the job's models (`affinity`: index → models in common), then the lowest index."""
    affinity = affinity or {}
    candidates = [(load, -affinity.get(index, 0), index) for index, healthy, load in loads if healthy]
    return min(candidates)[2] if candidates else None


class Scheduler:
    def __init__(self, instances: Sequence[ComfyInstance], gpu_busy: GpuBusySampler | None = None) -> None:
        self.instances = list(instances)
        self.gpu_busy = gpu_busy or GpuBusySampler.off()
        self.metrics = [InstanceMetrics(instance.label, instance.spec.gpu) for instance in self.instances]
        self._locks = [asyncio.Lock() for _ in self.instances]
        self._resident_models: list[frozenset[str]] = [frozenset() for _ in self.instances]
        self._reserved: set[int] = set()  # instances held off jobs by another thread (a compile switch)

    def remember_models(self, index: int, models: frozenset[str]) -> None:
        """The models a job just ran on an instance (ComfyUI keeps the last workflow's models loaded)."""
        if models:
            self._resident_models[index] = models

    def load(self, index: int) -> int:
        metrics = self.metrics[index]
        return metrics.queue_length + metrics.running + (index in self._reserved)

    @contextlib.contextmanager
    def reserved(self, index: int, closing: threading.Event | None = None, poll_s: float = 0.05) -> Iterator[None]:
        """Holds an instance off jobs from a thread outside the job loop (the switch to a compiled model): it counts
        as busy, so jobs go to other instances; a job already on it finishes first; one that gets it meanwhile
        waits until the reservation ends. (The job raises `running`, then looks at the reservation; this side
        reserves, then looks at `running`: one of the two always sees the other.) `closing` set while it waits
        (the worker stops: a job's lease may never end once the event loop is gone) raises InstanceUnavailable."""
        self._reserved.add(index)
        try:
            while self.metrics[index].running:
                if closing is not None and closing.wait(poll_s):
                    raise InstanceUnavailable(f"{self.instances[index].label} was not reserved: the worker stops")
                if closing is None:
                    time.sleep(poll_s)
            yield
        finally:
            self._reserved.discard(index)

    async def _enter(self, index: int, deadline: Deadline) -> None:
        metrics = self.metrics[index]
        waited = None
        while True:
            metrics.running += 1
            if index not in self._reserved:
                break
            metrics.running -= 1
            if waited is None:
                waited = time.monotonic()
                log.warning("[%s] a job waits while the instance switches to its compiled model",
                            self.instances[index].label)
            if deadline.expired():
                raise deadline.error(f"waiting while {self.instances[index].label} switches to its compiled model")
            await asyncio.sleep(HEALTH_WAIT_POLL_S / 10)
        if waited is not None:
            log.warning("[%s] the job waited %.1f s for the switch to the compiled model", self.instances[index].label,
                        time.monotonic() - waited)

    def pinned(self, pin: int) -> list[int]:
        """The instances a job's `gpu` pin names: every instance of the pin-th GPU (INSTANCES_PER_GPU may run more
        than one on it); on a CPU-only worker, the pin-th CPU instance."""
        groups: dict[object, list[int]] = {}
        for index, instance in enumerate(self.instances):
            gpu = instance.spec.gpu
            groups.setdefault(("gpu", gpu) if gpu is not None else ("cpu", index), []).append(index)
        ordered = list(groups.values())
        if pin >= len(ordered):
            gpus = any(instance.spec.gpu is not None for instance in self.instances)
            runs = (f"{len(ordered)} GPU(s) ({len(self.instances)} instance(s))" if gpus
                    else f"{len(ordered)} CPU instance(s)")
            raise InvalidInput(f"'gpu': {pin} is out of range: this worker runs {runs}, numbered 0 to "
                               f"{len(ordered) - 1}")
        return ordered[pin]

    def choose(self, pin: int | None, models: frozenset[str] = frozenset(), avoid: frozenset[int] = frozenset()) -> int:
        affinity = {i: len(models & resident) for i, resident in enumerate(self._resident_models)}
        if pin is not None:
            members = self.pinned(pin)
            rows = [(i, self.instances[i].healthy, self.load(i)) for i in members]
            chosen = least_loaded([row for row in rows if row[0] not in avoid], affinity)  # a retry: its sibling
            if chosen is None:
                chosen = least_loaded(rows, affinity)
            if chosen is None:
                labels = ", ".join(self.instances[i].label for i in members)
                raise InstanceUnavailable(
                    f"'gpu': {pin} pins {labels}, which {'is' if len(members) == 1 else 'are'} not healthy now "
                    "(restarting or failed); send the job without 'gpu' to run it on another instance"
                )
            return chosen
        loads = [(i, inst.healthy, self.load(i)) for i, inst in enumerate(self.instances)]
        chosen = least_loaded([row for row in loads if row[0] not in avoid], affinity)
        if chosen is None:  # nothing else is healthy: back to an avoided one rather than failing
            chosen = least_loaded(loads, affinity)
        if chosen is None:
            raise InstanceUnavailable("no ComfyUI instance is healthy")
        return chosen

    async def _choose_waiting_for_health(self, pin: int | None, wait_s: float, models: frozenset[str],
                                         avoid: frozenset[int], deadline: Deadline) -> int:
        """Without a pin, waits up to `wait_s` (and the job's deadline) for an instance to come back when none is
        healthy."""
        until = min(time.monotonic() + wait_s, deadline.at)
        while True:
            try:
                return self.choose(pin, models, avoid)
            except InstanceUnavailable:
                if deadline.expired():
                    raise deadline.error("waiting for a healthy ComfyUI instance") from None
                if pin is not None or time.monotonic() >= until:
                    raise
            await asyncio.sleep(HEALTH_WAIT_POLL_S)

    @contextlib.asynccontextmanager
    async def lease(
        self, pin: int | None, health_wait_s: float, models: frozenset[str] = frozenset(),
        avoid: frozenset[int] = frozenset(), deadline: Deadline = NO_DEADLINE,
    ) -> AsyncIterator[Lease]:
        """Holds the chosen instance for one job; jobs for a busy instance wait in its queue, until the job's
        deadline at most. An instance that stopped being healthy while the job queued is not given to it: the job
        chooses again (or, pinned, gets the error)."""
        queued_at = time.monotonic()
        while True:
            index = await self._choose_waiting_for_health(pin, health_wait_s, models, avoid, deadline)
            await self._acquire(index, deadline)
            if self.instances[index].healthy:
                break
            self._locks[index].release()
            log.warning("[%s] became unhealthy while a job queued for it; choosing again", self.instances[index].label)
        metrics = self.metrics[index]
        try:
            await self._enter(index, deadline)
        except BaseException:  # cancelled or out of time while it switched: the queue goes on without this job
            self._locks[index].release()
            raise
        try:
            yield Lease(self.instances[index], (time.monotonic() - queued_at) * 1000)
        finally:
            metrics.running -= 1
            self._locks[index].release()

    async def _acquire(self, index: int, deadline: Deadline) -> None:
        metrics = self.metrics[index]
        ahead = self.load(index)
        metrics.queue_length += 1
        try:
            remaining = deadline.remaining()
            await asyncio.wait_for(self._locks[index].acquire(), None if math.isinf(remaining) else max(remaining, 0))
        except TimeoutError:
            raise deadline.error(f"waiting in the queue of {self.instances[index].label} "
                                 f"({ahead} job(s) ahead of it)") from None
        finally:
            metrics.queue_length -= 1

    def snapshot(self) -> list[dict]:
        """Every instance's metrics, with the busy % of its GPU (shared by the instances on that GPU)."""
        return [m.snapshot() | self.gpu_busy.figures(instance.spec.gpu)
                for m, instance in zip(self.metrics, self.instances, strict=True)]
