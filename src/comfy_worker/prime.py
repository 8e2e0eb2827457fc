"""Makes the compile artefact: `python -m comfy_worker.prime` (docs/deployment.md).

Starts the worker as configured (same settings, same environment) with the compile in the warm-up
(COMPILE_IN_BACKGROUND off), waits for the warm-up to finish compiled, saves the artefact (fleet/compiling.py) from
one instance of each GPU type, prints a JSON summary and exits 0; 1 with {"error": ...} when nothing was saved.
Run it on a first worker with the network volume mounted (the artefact lands in COMPILE_ARTIFACT_DIR on the volume)
or in a GPU build stage (the artefact lands in the image).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

from comfy_worker.errors import WorkerError
from comfy_worker.fleet.gpus import detect_gpus
from comfy_worker.fleet.tuning import node_request
from comfy_worker.logs import configure
from comfy_worker.settings import Settings, SettingsError, load_settings
from comfy_worker.worker import Worker


class PrimeError(Exception):
    pass


def prime(settings: Settings, worker_factory=Worker) -> dict[str, Any]:
    """The artefacts saved, with the seconds each step took; raises PrimeError with what to fix."""
    if not settings.warmup_workflow:
        raise PrimeError("WARMUP_WORKFLOW is not set: the prime command compiles the warm-up workflow's models; set "
                         "it to the workflow (a file path or inline JSON) the workers warm up with")
    if settings.torch_compile == "off":
        raise PrimeError("TORCH_COMPILE=off: nothing to compile; unset it (auto compiles with inductor when "
                         "WARMUP_WORKFLOW is set) or set TORCH_COMPILE=inductor")
    if settings.num_gpus == 0 or not detect_gpus():
        raise PrimeError("no GPU instance to compile on: compile runs on GPU instances only (no NVIDIA GPU found, "
                         "or COMFY_NUM_GPUS=0)")
    settings = dataclasses.replace(settings, compile_in_background=False)
    started = time.monotonic()
    worker = worker_factory(settings)
    try:
        worker.start()
        if worker.startup_error or worker.fleet is None:
            raise PrimeError(f"the worker did not start: {worker.startup_error}")
        compiled = [i for i in worker.fleet.instances if i.compile.on and i.healthy]
        if not compiled:
            raise PrimeError("no instance was compiled: compile runs on GPU instances only (this machine has "
                             f"{len(worker.fleet.instances)} CPU instance(s))")
        options = node_request(settings, on_gpu=True)["compile"]
        artifacts, gpu_types = [], set()
        for instance in compiled:
            gpu = worker.fleet.gpu_of(instance)
            name = gpu.name if gpu else instance.label
            if name in gpu_types:
                continue
            gpu_types.add(name)
            saved_at = time.monotonic()
            try:
                saved = worker.fleet.artifacts.save_from(instance, options)
            except WorkerError as error:
                saved = {"error": str(error)}
            artifacts.append({"gpu": name, "instance": instance.label, **saved,
                              "save_s": round(time.monotonic() - saved_at, 2)})
        summary = {
            "artifacts": artifacts, "startup_s": dict(worker.startup_s),
            "total_s": round(time.monotonic() - started, 2),
            "compile": {i.label: i.compile.summary() for i in compiled},
        }
        if not any(a.get("saved") for a in artifacts):
            raise PrimeError("no artefact was saved: " + "; ".join(str(a.get("error")) for a in artifacts))
        return summary
    finally:
        worker.stop()


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as error:
        print(json.dumps({"error": f"the worker's configuration is invalid: {error}"}))
        return 1
    configure(settings.log_level)
    try:
        summary = prime(settings)
    except PrimeError as error:
        print(json.dumps({"error": str(error)}))
        return 1
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
