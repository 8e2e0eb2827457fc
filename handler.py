"""RunPod entry point: each job goes to the worker's pipeline; one job per ComfyUI instance runs at once.

    python handler.py                      runs ./test_input.json once (RunPod's local harness) and exits
    python handler.py --rp_serve_api       serves /run, /runsync and /status locally
    (on RunPod)                            takes jobs from the endpoint's queue
"""

from __future__ import annotations

import atexit
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from comfy_worker.settings import SettingsError, load_settings, quiet_runpod_sdk

quiet_runpod_sdk()
import runpod  # noqa: E402 - reads RUNPOD_LOG_LEVEL when imported

from comfy_worker.logs import configure  # noqa: E402
from comfy_worker.worker import Worker  # noqa: E402

configuration_error: str | None = None
worker: Worker | None = None
try:
    settings = load_settings()
    configure(settings.log_level)
    worker = Worker(settings)
except SettingsError as error:
    configure("INFO")
    configuration_error = f"the worker's configuration is invalid: {error}"
    logging.getLogger("comfy_worker").error(configuration_error)


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    if worker is None:
        return {"error": configuration_error}
    return await worker.handle(job)


async def stream_handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """STREAM_RESULTS=1: progress, previews and outputs as they come, then the result (docs/streaming.md)."""
    if worker is None:
        yield {"error": configuration_error}
        return
    async for item in worker.stream(job):
        yield item


def concurrency_modifier(current: int) -> int:
    return worker.concurrency if worker else 1


def _stop(signum: int | None = None, _frame: Any = None) -> None:
    if worker is not None:
        worker.stop()
    if signum is not None:
        sys.exit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    atexit.register(_stop)
    if worker is not None:
        worker.start()
    runpod.serverless.start(serverless_config())


def serverless_config() -> dict[str, Any]:
    """RunPod's worker options; REFRESH_WORKER ends the worker after every job. RunPod decides once, from the handler
    it is given, whether jobs stream: STREAM_RESULTS=1 gives it the generator, whose yields /run and /runsync return
    as one list (return_aggregate_stream)."""
    refresh = worker is not None and worker.settings.refresh_worker
    if worker is not None and worker.settings.stream_results:
        return {"handler": stream_handler, "return_aggregate_stream": True,
                "concurrency_modifier": concurrency_modifier, "refresh_worker": refresh}
    return {"handler": handler, "concurrency_modifier": concurrency_modifier, "refresh_worker": refresh}


if __name__ == "__main__":
    main()
