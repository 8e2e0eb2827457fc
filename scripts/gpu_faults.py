"""The faults of tests/comfyui/test_instance_faults.py on a GPU machine, where only a GPU shows them for real: a real
CUDA out-of-memory error, and how long a GPU instance takes to come back after it was killed or hung. Writes one
JSON.

    python scripts/gpu_faults.py --comfy DIR --out results.json [--fe DIR]

It drives comfy_worker.worker.Worker with every GPU and the test nodes of tests/custom_nodes; docs/reliability.md
quotes its results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from workflows import invert, through  # noqa: E402

from comfy_worker.logs import configure  # noqa: E402
from comfy_worker.settings import load_settings  # noqa: E402
from comfy_worker.worker import Worker  # noqa: E402


def job(workflow: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": f"fault-{uuid.uuid4().hex[:8]}", "input": {"workflow": workflow, **fields}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfy", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fe", default="", help="--front-end-root for ComfyUI where the frontend is absent")
    args = parser.parse_args()
    configure("INFO")
    work = Path(tempfile.mkdtemp(prefix="gpu-faults-"))
    settings = load_settings({
        "COMFYUI_DIR": args.comfy, "COMFY_WORK_DIR": str(work),
        "COMFY_CUSTOM_NODES_DIRS": str(REPO_ROOT / "tests" / "custom_nodes"),
        "COMFY_EXTRA_ARGS": f"--front-end-root {args.fe}" if args.fe else "", "HUNG_INSTANCE_S": "5",
        "COMFY_BASE_PORT": "8600",
    })
    worker = Worker(settings)
    started = time.monotonic()
    worker.start()
    results: dict[str, Any] = {"start_s": round(time.monotonic() - started, 1), "startup_error": worker.startup_error,
                               "gpus": [(g.name, g.memory_total_mib) for g in worker.fleet.gpus]}
    loop = asyncio.new_event_loop()

    def timed(name: str, payload: dict[str, Any]) -> dict[str, Any]:
        begun = time.monotonic()
        answer = loop.run_until_complete(worker.handle(payload))
        results[name] = {"s": round(time.monotonic() - begun, 2), "error": answer.get("error"),
                         "warnings": answer.get("warnings"), "instance": answer.get("instance")}
        print(name, json.dumps(results[name])[:600], flush=True)
        return answer

    def back(name: str) -> None:
        begun = time.monotonic()
        while not all(i.healthy for i in worker.fleet.instances) and time.monotonic() - begun < 300:
            time.sleep(0.2)
        results[name] = round(time.monotonic() - begun, 2)

    try:
        timed("normal", job(invert()))
        if worker.fleet.gpus:  # a CPU allocation is lazy: only a GPU refuses it at once
            vram_gib = worker.fleet.gpus[0].memory_total_mib / 1024
            timed("oom_real", job(through("WorkerTestAllocate", gib=round(vram_gib * 2))))
            results["oom_counted"] = sum(m.out_of_memory for m in worker.scheduler.metrics)
            timed("after_oom", job(through("WorkerTestAllocate", gib=round(vram_gib * 0.5))))
        marker = work / "crash-once"
        timed("killed_mid_job_retried", job(through("WorkerTestCrash", seconds=0.5, once_marker=str(marker))))
        back("back_after_kill_s")
        timed("hung", job(through("WorkerTestHang"), gpu=0))
        back("back_after_hang_s")
        timed("after_hang", job(invert(), gpu=0))
        results["restarts"] = {i.label: i.restarts for i in worker.fleet.instances}
    finally:
        worker.stop()
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
