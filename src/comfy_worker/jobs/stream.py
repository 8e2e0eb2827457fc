"""The streaming mode (STREAM_RESULTS=1): a job yields its progress, small latent previews (when it asks for
`previews`) and each output as soon as ComfyUI saved it, then the result the default mode returns. The shapes are
in docs/streaming.md.

The job's threads (the prompt follower, progress reporters) put events on the job's queue; `stream_job` yields them
on the event loop while the job runs, then the result."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from comfy_worker.comfy.previews import PreviewFrame, shrink_to_jpeg
from comfy_worker.delivery.image_format import convert_images
from comfy_worker.delivery.outputs import OutputData, data_size, find_outputs, read_output
from comfy_worker.delivery.typed_outputs import describe_file
from comfy_worker.fleet.instance import InstanceDirs
from comfy_worker.jobs.job_input import JobRequest
from comfy_worker.jobs.progress import Sender

log = logging.getLogger("comfy_worker.stream")

PREVIEW_MIN_INTERVAL_S = 0.5  # at most 2 previews a second
PREVIEW_BUDGET_BYTES = 2_000_000  # per job: every preview is also in the aggregated /run and /runsync result


class JobStream:
    """One job's events, put from any thread and read on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.previews_sent = 0
        self.preview_bytes = 0
        self._last_preview = float("-inf")

    def put(self, event: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def progress_sender(self, also: Sender | None) -> Sender:
        """Progress goes into the stream, and to RunPod's progress update too where that is on."""
        def send(job: dict[str, Any], payload: dict[str, Any]) -> None:
            self.put({"event": "progress", **payload})
            if also is not None:
                also(job, payload)
        return send

    def preview(self, frame: PreviewFrame, where: dict[str, Any]) -> None:
        """A latent preview, shrunk to a small JPEG; dropped when one was sent less than PREVIEW_MIN_INTERVAL_S ago
        or the job's preview budget is spent."""
        now = time.monotonic()
        if now - self._last_preview < PREVIEW_MIN_INTERVAL_S or self.preview_bytes >= PREVIEW_BUDGET_BYTES:
            return
        try:
            jpeg, width, height = shrink_to_jpeg(frame.image)
        except (OSError, ValueError) as error:
            log.debug("a preview frame is not an image: %s", error)
            return
        self._last_preview = now
        self.previews_sent += 1
        self.preview_bytes += len(jpeg)
        self.put({"event": "preview", "node": where.get("node"), "step": where.get("step"),
                  "steps": where.get("steps"), "content_type": "image/jpeg", "width": width, "height": height,
                  "size_bytes": len(jpeg), "data": base64.b64encode(jpeg).decode("ascii")})

    def outputs_saved(self, node_id: str, output: dict[str, Any], dirs: InstanceDirs, job_folder: str,
                      request: JobRequest, inline: bool, inline_limit_bytes: int) -> None:
        """One event per file or text a node just saved (its `executed` message). A file carries `data` (base64,
        converted to the job's `image_format`) when the job returns base64 and the file is within the inline
        limit; otherwise the result carries it."""
        try:
            files, texts = find_outputs({node_id: output}, request.include_previews, job_folder)
            for found in files:
                read = [(found, read_output(found, dirs))]
                [(converted, data)], _ = convert_images(read, request.image_format, request.image_quality)
                self.put(_file_event(converted, data, inline and data_size(data) <= inline_limit_bytes))
            for text in texts:
                self.put({"event": "output", "node_id": text.node_id, "type": "text",
                          "content_type": "text/plain; charset=utf-8", "size_bytes": len(text.text.encode()),
                          "key": "text", "data": text.text})
        except Exception as error:  # the result still carries every output; a stream event is a courtesy
            log.warning("output of node %s not streamed: %s", node_id, error)


def _file_event(found: Any, data: OutputData, with_data: bool) -> dict[str, Any]:
    event: dict[str, Any] = {"event": "output", **describe_file(found, data)}
    if with_data:
        raw = data if isinstance(data, bytes) else data.read_bytes()
        event["data"] = base64.b64encode(raw).decode("ascii")
    return event


async def stream_job(handle: Callable[[dict[str, Any], JobStream], Awaitable[dict[str, Any]]],
                     job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Runs `handle(job, stream)` and yields the stream's events while it runs, then its result. A consumer that
    stops (RunPod cancelling the job) cancels the job."""
    events = JobStream(asyncio.get_running_loop())
    task = asyncio.ensure_future(handle(job, events))
    try:
        while True:
            getter = asyncio.ensure_future(events.queue.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()  # an item it was woken for stays in the queue
            break
        while not events.queue.empty():
            yield events.queue.get_nowait()
        yield task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
