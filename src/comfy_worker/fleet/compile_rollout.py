"""No job waits for a compile: instances that started uncompiled (no artefact for their setup) are switched to
compiled in the background.

1. The primer: one extra ComfyUI process, launched like an instance on the first such instance's GPU (its own port
   and folders, compile on, not pinned to CPU cores so the compile has them all), runs the warm-up workflow,
   saves the artefact (fleet/compiling.py) and exits. The instances serve uncompiled meanwhile. It starts only
   where the warm-up models fit beside the instances on that GPU (fleet/vram.py's estimate); where they do not, the
   instances stay uncompiled, with a warning naming the prime command.
2. Each such instance, when idle, is reserved (jobs go to the others; on a one-instance machine a job arriving
   then waits, logged), loads the artefact, switches compile on (its loaded models are wrapped in place) and runs
   the warm-up again with new seeds (compiled from hot caches: seconds), then serves compiled.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from comfy_worker.errors import InstanceUnavailable, WorkerError
from comfy_worker.fleet.compiling import primer_fits
from comfy_worker.fleet.fleet import Fleet
from comfy_worker.fleet.instance import ComfyInstance, InstanceSpec
from comfy_worker.fleet.scheduler import Scheduler
from comfy_worker.fleet.tuning import LaunchTuning, node_request
from comfy_worker.settings import Settings

log = logging.getLogger("comfy_worker.compile")

# runs the warm-up workflow on an instance (reseeded: True); raises its WorkerError
WarmUp = Callable[[ComfyInstance, bool], str]
PRIMER_LOG_LINES = 20  # kept in the state when the primer fails
SWITCH_ERROR_CHARS = 300


@dataclass(frozen=True)
class PrimerSpec(InstanceSpec):
    @property
    def label(self) -> str:
        return "primer"


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class CompileRollout:
    def __init__(self, settings: Settings, fleet: Fleet, scheduler: Scheduler, warm_up: WarmUp,
                 started_at: float) -> None:
        self.settings = settings
        self.fleet = fleet
        self.scheduler = scheduler
        self.warm_up = warm_up
        self.started_at = started_at  # the worker's start (monotonic): compiled_at_s counts from it
        self.state: dict[str, Any] = {"state": "not needed"}
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._primer: ComfyInstance | None = None

    def pending(self) -> list[ComfyInstance]:
        return [i for i in self.fleet.instances if i.compile.requested and not i.compile.on and i.healthy]

    def start(self) -> None:
        if not self.pending():
            return
        self.state = {"state": "starting"}
        self._thread = threading.Thread(target=self.run, name="compile-rollout", daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Waits for the rollout to end; True when it has (or never started)."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self._thread is None or not self._thread.is_alive()

    def stop(self) -> None:
        """Ends the rollout with the worker: a primer still compiling is stopped (it would outlive the worker's
        instances otherwise)."""
        self._closing.set()
        primer = self._primer
        if primer is not None:
            primer.stop()

    def run(self) -> None:
        try:
            pending = self.pending()
            if not pending:
                return
            artifact = self.prime(pending[0])
            if artifact is None:
                return
            for instance in self.pending():  # read again: an instance restarting before the primer ran is back now
                if self._closing.is_set():
                    self._stopped()
                    return
                self.switch(instance, artifact)
            self.state["state"] = "done"
        except Exception as error:  # a background failure never stops the worker: the instances stay uncompiled
            if self._closing.is_set():  # the worker stopped the instances under it
                self._stopped()
                return
            log.exception("the background compile failed; the instances stay uncompiled")
            self.state.update(state="failed", error=f"{type(error).__name__}: {error}")

    def _stopped(self) -> None:
        log.info("the background compile ended with the worker (state was %s)", self.state.get("state"))
        self.state.update(state="stopped", reason="the worker stopped before the background compile ended")

    def prime(self, first: ComfyInstance) -> str | None:
        """Runs the primer on `first`'s GPU; the artefact's path, or None (why is logged and kept in `state`)."""
        gpu = self.fleet.gpu_of(first)
        beside = sum(1 for i in self.fleet.instances if i.spec.gpu == first.spec.gpu)
        fits, why = primer_fits(gpu.memory_total_mib << 20 if gpu else None, self.fleet.artifacts.warmup_files,
                                beside)
        if not fits:
            log.warning("no background compile: the warm-up models do not fit twice on %s (%s); the instances serve "
                        "uncompiled. Make an artefact with `python -m comfy_worker.prime` (docs/deployment.md)",
                        first.label, why)
            self.state = {"state": "uncompiled", "reason": f"the primer does not fit: {why}"}
            return None
        self.state = {"state": "priming", "fits": why}
        return self.run_primer(first)

    def run_primer(self, first: ComfyInstance) -> str | None:
        """The primer itself, launched like `first`: the artefact's path, or None."""
        started = time.monotonic()
        self.state["state"] = "priming"
        tuning = LaunchTuning(first.tuning.flags, first.tuning.env, None, first.tuning.vram)
        spec = PrimerSpec(len(self.fleet.instances), first.spec.gpu, free_port(self.settings.host))
        primer = self._primer = ComfyInstance(spec, self.settings, self.fleet.model_paths, tuning)
        try:
            if self._closing.is_set():
                self._stopped()
                return None
            primer.launch()
            self.state["primer_pid"] = primer.pid
            if self._closing.is_set():  # stop() ran while it launched, before the process was there to stop
                self._stopped()
                return None
            primer.wait_ready(self.settings.start_timeout_s)
            request = node_request(self.settings, on_gpu=True)
            primer.switches = primer.client.apply_tuning(request)
            primer.compile.requested = primer.compile.on = True
            try:
                outcome = self.warm_up(primer, False)
            except WorkerError as error:
                if self._closing.is_set():  # stop() killed the primer under its warm-up
                    self._stopped()
                    return None
                ended = "" if primer.is_alive() else f" (ComfyUI exited with code {primer.exit_code()})"
                self.state.update(state="uncompiled", reason=f"the primer's warm-up failed{ended}: {error}",
                                  log_tail=primer.log_tail(PRIMER_LOG_LINES))
                log.warning("the compile primer's warm-up failed%s; the instances serve uncompiled: %s", ended, error)
                return None
            saved = self.fleet.artifacts.save_from(primer, request["compile"])
            self.state.update(primer_s=round(time.monotonic() - started, 1), warm_up=outcome,
                              report=primer.client.compile_report(), saved=saved)
        except InstanceUnavailable as error:
            if self._closing.is_set():  # stop() killed the primer: not its failure
                self._stopped()
                return None
            self.state.update(state="uncompiled", reason=f"the primer failed: {error}")
            log.warning("the compile primer failed; the instances serve uncompiled: %s", error)
            return None
        finally:
            primer.stop()
            self._primer = None
        if not saved.get("saved"):
            self.state.update(state="uncompiled", reason=f"no artefact saved: {saved.get('error')}")
            return None
        log.info("compile primer done in %.1f s: %s", self.state["primer_s"], saved.get("path"))
        self.state["state"] = "switching"
        return str(saved["path"])

    def switch(self, instance: ComfyInstance, artifact: str) -> bool:
        """Loads the artefact into an idle instance and switches it to compiled (reserved meanwhile); False, and the
        instance stays uncompiled, when the artefact does not load."""
        index = self.fleet.instances.index(instance)
        started = time.monotonic()
        with self.scheduler.reserved(index, self._closing):
            waited = time.monotonic() - started
            status = instance.compile
            loaded_at = time.monotonic()
            try:
                status.load = instance.client.load_compile_artifact(artifact)
            except InstanceUnavailable as error:
                status.load = {"error": str(error)}
            status.artifact, status.load_s = artifact, round(time.monotonic() - loaded_at, 2)
            if not status.load.get("loaded"):
                log.warning("[%s] stays uncompiled: the artefact %s did not load: %s", instance.label, artifact,
                            status.load.get("error") or "nothing in it")
                return False
            request = node_request(self.settings, on_gpu=True)
            try:
                instance.switches = instance.client.apply_tuning(request)
                status.on = True
                outcome = self.warm_up(instance, True)
                status.report = instance.client.compile_report()
            except WorkerError as error:  # it died meanwhile (the watcher restarts it) or its warm-up failed
                why = str(error)[:SWITCH_ERROR_CHARS]
                self.state.setdefault("switch_failed", {})[instance.label] = why
                log.warning("[%s] the compiled warm-up after the switch failed (%s); %s", instance.label, why,
                            "compile is on: its first job compiles" if instance.is_alive()
                            else "it restarts from the artefact")
                return False
            status.compiled_at_s = round(time.monotonic() - self.started_at, 1)
        log.info("[%s] switched to compiled in %.1f s (%.1f s waiting for it to be idle; warm-up %s)",
                 instance.label, time.monotonic() - started, waited, outcome)
        return True
