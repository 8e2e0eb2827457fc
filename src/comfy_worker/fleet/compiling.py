"""Compile state per instance, and the artefact store the instances load from and the primer saves to.

At an instance's start (Fleet._apply_switches) an instance that is to be compiled looks for the artefact made for
its own setup (compile_artifact.py) and loads it before anything compiles; it is then switched to compiled at once
when it found one (the warm-up compiles in seconds from hot caches), or when COMPILE_IN_BACKGROUND=0 or there is no
warm-up workflow (the compile happens in the warm-up or the first job, as before). Otherwise it serves uncompiled
and compile_rollout.py switches it later.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from comfy_worker.errors import InstanceUnavailable
from comfy_worker.fleet.compile_artifact import ArtifactKey, artifact_key, artifact_path, write_sidecar
from comfy_worker.fleet.vram import GIB, needed_bytes, resident_bytes
from comfy_worker.models.files import ModelFile
from comfy_worker.settings import Settings

if TYPE_CHECKING:
    from comfy_worker.fleet.instance import ComfyInstance

log = logging.getLogger("comfy_worker.compile")

COUNTER_KEYS = (("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
                ("inductor", "fxgraph_cache_bypass"), ("aot_autograd", "autograd_cache_hit"),
                ("aot_autograd", "autograd_cache_miss"), ("aot_autograd", "autograd_cache_bypass"),
                ("stats", "unique_graphs"), ("frames", "total"))


@dataclass
class CompileStatus:
    """Where an instance stands: compile requested, switched on in its process, its artefact and what loading it
    cost, and the last /worker/compile report (counters)."""

    requested: bool = False
    on: bool = False
    artifact: str | None = None
    artifact_found: bool = False
    load: dict[str, Any] = field(default_factory=dict)
    load_s: float | None = None
    report: dict[str, Any] = field(default_factory=dict)
    compiled_at_s: float | None = None  # seconds after the worker's start when it switched to compiled

    def summary(self) -> dict[str, Any]:
        """The short form a job's `tuning` carries."""
        counters = self.report.get("counters", {})
        return {
            "requested": self.requested, "artifact": self.artifact, "artifact_loaded": bool(self.load.get("loaded")),
            "artifact_load_s": self.load_s, "compiled_at_s": self.compiled_at_s,
            "first_call_s": [m.get("first_call_s") for m in self.report.get("models", [])],
            **{name: counters.get(group, {}).get(name, 0) for group, name in COUNTER_KEYS},
        }


def primer_fits(vram_bytes: int | None, files: list[ModelFile], instances_on_gpu: int = 1) -> tuple[bool, str]:
    """Whether a primer process holding the warm-up models fits on a GPU beside its instances (each holding the
    same models), by fleet/vram.py's estimate: weights × overhead + activation headroom, per process."""
    if vram_bytes is None:
        return False, "the GPU's memory size is not known"
    weights = resident_bytes(files)
    if not weights:
        return False, "the warm-up workflow's model files were not found"
    each = needed_bytes(weights)
    needed = each * (instances_on_gpu + 1)
    summary = f"{instances_on_gpu + 1} × {each / GIB:.1f} GiB of {vram_bytes / GIB:.1f} GiB"
    return vram_bytes >= needed, summary


class ArtifactStore:
    """Finds, loads and saves the artefact of an instance's setup, by the key its own process reports."""

    def __init__(self, settings: Settings, warmup_files: list[ModelFile]) -> None:
        self.settings = settings
        self.warmup_files = warmup_files

    def key_of(self, instance: ComfyInstance, compile_options: dict[str, Any]) -> ArtifactKey | None:
        environment = instance.client.compile_report().get("environment", {})
        return artifact_key(environment, compile_options, self.settings.tf32, self.warmup_files)

    def load_into(self, instance: ComfyInstance, compile_options: dict[str, Any]) -> bool:
        """Loads the instance's artefact if there is one; True when its caches were filled from it."""
        status = instance.compile
        try:
            key = self.key_of(instance, compile_options)
        except InstanceUnavailable as error:
            log.warning("[%s] no compile artefact looked up: %s", instance.label, error)
            return False
        if key is None:
            return False
        path = artifact_path(self.settings.compile_artifact_dir, key)
        status.artifact, status.artifact_found = str(path), path.is_file()
        if not status.artifact_found:
            log.info("[%s] no compile artefact for this setup at %s", instance.label, path)
            return False
        started = time.monotonic()
        try:
            status.load = instance.client.load_compile_artifact(str(path))
        except InstanceUnavailable as error:
            status.load = {"error": str(error)}
        status.load_s = round(time.monotonic() - started, 2)
        if status.load.get("error"):
            log.warning("[%s] the compile artefact %s was not loaded: %s", instance.label, path, status.load["error"])
            return False
        log.info("[%s] compile artefact loaded in %.2f s: %s (%s bytes, %s)", instance.label, status.load_s, path,
                 status.load.get("bytes"), status.load.get("entries"))
        return bool(status.load.get("loaded"))

    def save_from(self, instance: ComfyInstance, compile_options: dict[str, Any]) -> dict[str, Any]:
        """Saves what the instance compiled as the artefact of its setup; the node's answer, with the sidecar."""
        key = self.key_of(instance, compile_options)
        if key is None:
            return {"error": f"{instance.label} has no GPU: nothing is compiled there"}
        path = artifact_path(self.settings.compile_artifact_dir, key)
        saved = instance.client.save_compile_artifact(str(path))
        if saved.get("saved"):
            saved["sidecar"] = str(write_sidecar(path, key, saved))
            log.info("[%s] compile artefact saved: %s (%s bytes)", instance.label, path, saved.get("bytes"))
        else:
            log.warning("[%s] compile artefact not saved: %s", instance.label, saved.get("error"))
        return {**saved, "key": key.describe()}
