"""The set of ComfyUI instances: one per GPU (or CPU instances), started together, watched, restarted."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from comfy_worker.errors import InstanceUnavailable, WorkerNotReady
from comfy_worker.fleet.compiling import ArtifactStore
from comfy_worker.fleet.gpu_busy import GpuBusySampler, start_gpu_busy
from comfy_worker.fleet.gpus import Gpu, detect_gpus
from comfy_worker.fleet.instance import ComfyInstance, InstanceSpec
from comfy_worker.fleet.tuning import WORKER_NODES_DIR, LaunchTuning, node_request, plan_launch_tuning
from comfy_worker.fleet.vram import instances_for_card
from comfy_worker.models.files import ModelFile
from comfy_worker.settings import Settings

log = logging.getLogger("comfy_worker.fleet")

WATCH_INTERVAL_S = 1.0
RESTART_BACKOFF_MAX_S = 10.0


def plan_instances(settings: Settings, gpus: list[Gpu], warmup_files: list[ModelFile] | None = None
                   ) -> list[InstanceSpec]:
    """Which instances to run: INSTANCES_PER_GPU on each usable GPU (consecutive indexes and ports), else CPU
    instances. `auto` decides per card from the warm-up workflow's model files."""
    usable = gpus[: settings.num_gpus] if settings.num_gpus is not None else list(gpus)
    if not settings.multi_gpu:
        usable = usable[:1]
    if not usable:
        count = settings.cpu_instances if settings.multi_gpu else 1
        return [InstanceSpec(i, None, settings.base_port + i) for i in range(count)]
    specs: list[InstanceSpec] = []
    for gpu in usable:
        count, reason = instances_for_card(settings.instances_per_gpu, gpu.memory_total_mib << 20, warmup_files or [])
        if settings.instances_per_gpu != "1":
            log.info("GPU %d (%s): %d instance(s): %s", gpu.index, gpu.name, count, reason)
        for slot in range(count):
            index = len(specs)
            specs.append(InstanceSpec(index, gpu.index, settings.base_port + index, slot))
    return specs


def write_custom_nodes_config(settings: Settings) -> Path:
    """An extra_model_paths.yaml that adds the worker's own node and the configured custom-node folders to every
    instance."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    path = settings.work_dir / "custom_nodes_paths.yaml"
    folders = "".join(f"{folder.resolve()}\n" for folder in (WORKER_NODES_DIR, *settings.custom_nodes_dirs))
    path.write_text(yaml.safe_dump({"comfy_worker": {"custom_nodes": folders}}))
    return path


class Fleet:
    def __init__(self, settings: Settings, gpus: list[Gpu] | None = None, more_model_paths: tuple[Path, ...] = (),
                 warmup_files: list[ModelFile] | None = None) -> None:
        """`warmup_files`: the warm-up workflow's model files, which the VRAM mode of each instance is planned for."""
        self.settings = settings
        self.gpus = detect_gpus() if gpus is None else gpus
        self.model_paths = [*settings.extra_model_paths, *more_model_paths, write_custom_nodes_config(settings)]
        self.artifacts = ArtifactStore(settings, warmup_files or [])
        specs = plan_instances(settings, self.gpus, warmup_files)
        tunings = plan_launch_tuning(settings, self.gpus, [spec.gpu for spec in specs], warmup_files or [])
        self.instances = [
            ComfyInstance(spec, settings, self.model_paths, tuning) for spec, tuning in zip(specs, tunings, strict=True)
        ]
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self.start_errors: dict[str, str] = {}  # instance label → why it did not start, with its log tail
        self._failed_restarts: dict[str, int] = {}  # consecutive restarts that did not come up, per instance
        self._next_restart: dict[str, float] = {}
        self.gpu_busy = GpuBusySampler.off()  # sampling from start() to stop()

    def start(self) -> None:
        """Starts every instance at once and waits for all. Instances that fail are reported with their log tail;
        the worker goes on with the others, and fails only when none started."""
        if not (self.settings.comfyui_dir / "main.py").is_file():
            raise WorkerNotReady(
                f"no ComfyUI at {self.settings.comfyui_dir} (COMFYUI_DIR): run scripts/setup.sh or set COMFYUI_DIR"
            )
        started = time.monotonic()
        self.gpu_busy = start_gpu_busy([i.spec.gpu for i in self.instances], self.settings.gpu_busy_sample_ms)
        launch_errors = {instance.label: self._launch(instance) for instance in self.instances}
        with ThreadPoolExecutor(len(self.instances)) as pool:
            failures = list(pool.map(lambda i: launch_errors[i.label] or self._wait_ready(i, first_start=True),
                                     self.instances))
        self.start_errors = {i.label: error for i, error in zip(self.instances, failures, strict=True) if error}
        if len(self.start_errors) == len(self.instances):
            self.stop()
            raise WorkerNotReady("no ComfyUI instance started:\n" + "\n".join(self.start_errors.values()))
        log.info("%d of %d ComfyUI instances ready in %.1f s: %s", len(self.instances) - len(self.start_errors),
                 len(self.instances), time.monotonic() - started,
                 ", ".join(f"{i.label}@{i.spec.port}" for i in self.instances if i.healthy))
        self._watcher = threading.Thread(target=self._watch, name="fleet-watch", daemon=True)
        self._watcher.start()

    def _launch(self, instance: ComfyInstance) -> str | None:
        """Starts the process; why it could not be started (no such COMFY_PYTHON, no permission), or None."""
        try:
            instance.launch()
        except OSError as error:
            log.error("[%s] ComfyUI could not be launched: %s", instance.label, error)
            return (f"ComfyUI on {instance.label} could not be launched with {self.settings.comfy_python} "
                    f"(COMFY_PYTHON) in {self.settings.comfyui_dir}: {error}")
        return None

    def _wait_ready(self, instance: ComfyInstance, first_start: bool) -> str | None:
        """Waits for the process launched last to answer, then puts it in service. An instance that fails its
        first start is stopped for good (a broken configuration would fail again); one that fails a restart is
        killed and left to the watcher, which tries again."""
        launches = instance.launches
        try:
            instance.wait_ready(self.settings.start_timeout_s)
        except InstanceUnavailable as error:
            log.error("[%s] %s", instance.label, error)
            if first_start:
                instance.stop()
            elif instance.launches == launches:
                instance.kill_hung()
            return str(error)
        if instance.launches != launches or not instance.is_alive():
            return f"ComfyUI on {instance.label} exited just after it started"
        self._apply_switches(instance)
        if instance.launches == launches and not instance.stopping:
            instance.healthy = True
        return None

    def _apply_switches(self, instance: ComfyInstance) -> None:
        request = node_request(self.settings, instance.spec.gpu is not None)
        instance.compile.requested = request["compile"] is not None
        if request["compile"] is not None and not self._compile_now(instance, request["compile"]):
            request = {**request, "compile": None}
        try:
            instance.switches = instance.client.apply_tuning(request)
        except InstanceUnavailable as error:  # the node failed to load: ComfyUI runs with its own defaults
            instance.switches = {"error": str(error)}
            log.error("[%s] the worker's tuning node did not answer; torch switches not applied: %s",
                      instance.label, error)
            return
        instance.compile.on = request["compile"] is not None
        log.info("[%s] %s", instance.label, "; ".join(instance.switches.get("applied", [])))

    def _compile_now(self, instance: ComfyInstance, compile_options: dict) -> bool:
        """Whether an instance to be compiled starts compiled: yes with its artefact loaded (fleet/compiling.py),
        after a restart of one already switched, or where the compile is to happen in the warm-up or the first job
        (COMPILE_IN_BACKGROUND=0, no warm-up workflow); otherwise it serves uncompiled until the background compile
        (fleet/compile_rollout.py) switches it."""
        if self.artifacts.load_into(instance, compile_options) or instance.compile.on:
            return True
        if not self.settings.compile_in_background or not self.settings.warmup_workflow:
            return True
        log.info("[%s] serves uncompiled until its compile artefact is made in the background", instance.label)
        return False

    def _watch(self) -> None:
        while not self._closing.wait(WATCH_INTERVAL_S):
            for instance in self.instances:
                try:
                    self._check(instance)
                except Exception:  # the watcher must outlive anything one instance does
                    log.exception("[%s] the fleet's watcher failed on this instance; it goes on", instance.label)

    def _check(self, instance: ComfyInstance) -> None:
        # A starting process is alive; one stopped on purpose (at the fleet's stop, or after a failed first start)
        # is `stopping`.
        if instance.pid is None or instance.stopping or instance.is_alive() or self._closing.is_set():
            return
        if time.monotonic() < self._next_restart.get(instance.label, 0.0):
            return
        log.error("[%s] ComfyUI exited with code %s; last log lines:\n%s",
                  instance.label, instance.exit_code(), instance.log_tail())
        if not self.settings.restart_dead:
            instance.terminate()  # marks it stopped, so it is reported once
            return
        instance.healthy = False
        instance.restarts += 1
        log.warning("[%s] restarting ComfyUI (restart %d)", instance.label, instance.restarts)
        # Launched from this long-lived thread: a child dies with the thread that started it.
        error = self._launch(instance)
        if error is None:
            threading.Thread(target=self._await_restart, args=(instance,), daemon=True).start()
        else:
            self._restart_failed(instance)

    def gpu_of(self, instance: ComfyInstance) -> Gpu | None:
        if instance.spec.gpu is None:
            return None
        return next((g for g in self.gpus if g.index == instance.spec.gpu), None)

    def siblings(self, instance: ComfyInstance) -> list[ComfyInstance]:
        """The other instances on the same GPU (INSTANCES_PER_GPU)."""
        if instance.spec.gpu is None:
            return []
        return [i for i in self.instances if i.spec.gpu == instance.spec.gpu and i is not instance]

    def vram_share_mib(self, instance: ComfyInstance) -> int | None:
        """The part of its card an instance plans its VRAM mode for: the card, split evenly between the instances
        that share it."""
        gpu = self.gpu_of(instance)
        return gpu.memory_total_mib // (1 + len(self.siblings(instance))) if gpu else None

    def relaunch(self, instance: ComfyInstance, tuning: LaunchTuning, wait_s: float | None = None) -> bool:
        """Restarts an instance with another launch tuning (another VRAM mode) and waits until it answers; called
        by the job that leased it, so no other job is on it. Raises InstanceUnavailable if it does not come back
        (then the watcher restarts it with the new tuning). With `wait_s` (what is left of the job's time) shorter
        than the start timeout, returns False once that has passed: the instance goes on starting and is put in
        service when it answers."""
        instance.stop()
        instance.tuning = tuning
        instance.launch()
        if wait_s is not None and wait_s < self.settings.start_timeout_s:
            try:
                instance.wait_ready(wait_s)
            except InstanceUnavailable:
                if instance.is_alive():
                    threading.Thread(target=self._await_restart, args=(instance,), daemon=True,
                                     name=f"restart-{instance.label}").start()
                    return False
        error = self._wait_ready(instance, first_start=False)
        if error is not None:
            raise InstanceUnavailable(error)
        return True

    def _await_restart(self, instance: ComfyInstance) -> None:
        ready = self._wait_ready(instance, first_start=False) is None
        if self._closing.is_set():
            return
        if ready:
            self._failed_restarts.pop(instance.label, None)
            self._next_restart.pop(instance.label, None)
            log.info("[%s] ComfyUI is back", instance.label)
        else:
            self._restart_failed(instance)

    def _restart_failed(self, instance: ComfyInstance) -> None:
        """The next restart waits longer after each failed one (1, 2, 4 … 10 s), so a crash loop does not spin."""
        failures = self._failed_restarts[instance.label] = self._failed_restarts.get(instance.label, 0) + 1
        delay = min(2.0 ** (failures - 1), RESTART_BACKOFF_MAX_S)
        self._next_restart[instance.label] = time.monotonic() + delay
        log.warning("[%s] restart %d did not come up; the next try in %g s", instance.label, instance.restarts, delay)

    def stop(self) -> None:
        self._closing.set()
        self.gpu_busy.stop()
        for instance in self.instances:  # all at once, then wait for each
            instance.terminate()
        for instance in self.instances:
            instance.stop()
