"""RunPod entry point: each job goes to the worker's pipeline; one job per ComfyUI instance runs at once.

    python handler.py                      runs ./test_input.json once (RunPod's local harness) and exits
    python handler.py --rp_serve_api       serves /run, /runsync and /status locally
    (on RunPod)                            takes jobs from the endpoint's queue
"""

from __future__ import annotations

import atexit
import signal
import sys
from typing import Any

import runpod

from comfy_worker.logs import configure
from comfy_worker.pipeline import Worker
from comfy_worker.settings import load_settings

settings = load_settings()
configure(settings.log_level)
worker = Worker(settings)


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    return await worker.handle(job)


def concurrency_modifier(current: int) -> int:
    return worker.concurrency


def _stop_on_signal(signum: int, _frame: Any) -> None:
    worker.stop()
    sys.exit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _stop_on_signal)
    atexit.register(worker.stop)
    worker.start()
    runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier})


if __name__ == "__main__":
    main()
