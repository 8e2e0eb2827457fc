"""Unit tests of the streaming mode's pure parts: preview frames decoded and shrunk, the preview rate and budget, the
follower handing on only its prompt's previews, the order of a stream, its cancellation, and the request field."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import struct
import threading

import pytest
from PIL import Image

from comfy_worker.comfy.follower import PromptFollower
from comfy_worker.comfy.previews import decode_frame, shrink_to_jpeg
from comfy_worker.errors import InvalidInput
from comfy_worker.jobs import stream as stream_module
from comfy_worker.jobs.job_input import parse_job_input
from comfy_worker.jobs.stream import JobStream, stream_job
from comfy_worker.settings import SettingsError, load_settings

NODE = {"1": {"class_type": "EmptyImage", "inputs": {}}}


def picture(size=(600, 400), image_format="JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (40, 90, 200)).save(out, format=image_format)
    return out.getvalue()


def frame_v1(image: bytes, image_type: int = 1) -> bytes:
    """server.py send_image: >I PREVIEW_IMAGE, >I image type, the image."""
    return struct.pack(">II", 1, image_type) + image


def frame_with_metadata(image: bytes, metadata: dict) -> bytes:
    """server.py send_image_with_metadata: >I PREVIEW_IMAGE_WITH_METADATA, >I length, JSON, the image."""
    encoded = json.dumps(metadata).encode()
    return struct.pack(">II", 4, len(encoded)) + encoded + image


def test_both_preview_frame_formats_decode():
    jpeg, png = picture(), picture(image_format="PNG")
    assert decode_frame(frame_v1(jpeg)).image == jpeg
    assert decode_frame(frame_v1(png, 2)).content_type == "image/png"
    frame = decode_frame(frame_with_metadata(png, {"node_id": "3", "prompt_id": "p", "image_type": "image/png"}))
    assert frame.image == png and frame.content_type == "image/png" and frame.metadata["node_id"] == "3"


@pytest.mark.parametrize("raw", [
    struct.pack(">I", 3) + b"\x00\x00\x00\x05hello",  # TEXT: not a preview
    struct.pack(">II", 1, 7) + b"xx",  # unknown image type
    struct.pack(">I", 1),  # too short
    struct.pack(">II", 4, 500) + b"{}",  # metadata longer than the frame
    struct.pack(">II", 4, 3) + b"[1]" + b"img",  # metadata not an object
])
def test_other_binary_frames_are_not_previews(raw):
    assert decode_frame(raw) is None


def test_previews_shrink_to_256_px_jpeg_and_small_ones_keep_their_size():
    jpeg, width, height = shrink_to_jpeg(picture((600, 400), "PNG"))
    assert (width, height) == (256, 171) and Image.open(io.BytesIO(jpeg)).format == "JPEG"
    assert shrink_to_jpeg(picture((64, 32)))[1:] == (64, 32)
    with pytest.raises(OSError):
        shrink_to_jpeg(b"not an image")


def drain(events: JobStream, loop: asyncio.AbstractEventLoop) -> list[dict]:
    loop.run_until_complete(asyncio.sleep(0))
    items = []
    while not events.queue.empty():
        items.append(events.queue.get_nowait())
    return items


def test_previews_are_bounded_in_rate_and_in_bytes(monkeypatch):
    loop = asyncio.new_event_loop()
    try:
        events = JobStream(loop)
        frame = decode_frame(frame_v1(picture()))
        events.preview(frame, {"node": "3", "step": 1, "steps": 20})
        events.preview(frame, {"node": "3", "step": 2, "steps": 20})  # within 0.5 s: dropped
        [sent] = drain(events, loop)
        assert sent["event"] == "preview" and sent["step"] == 1 and (sent["width"], sent["height"]) == (256, 171)
        assert Image.open(io.BytesIO(base64.b64decode(sent["data"]))).size == (256, 171)
        monkeypatch.setattr(stream_module, "PREVIEW_MIN_INTERVAL_S", 0)
        monkeypatch.setattr(stream_module, "PREVIEW_BUDGET_BYTES", sent["size_bytes"] * 2)
        for step in range(3, 10):
            events.preview(frame, {"node": "3", "step": step, "steps": 20})
        assert len(drain(events, loop)) == 1 and events.previews_sent == 2  # the budget is spent
    finally:
        loop.close()


def test_the_follower_hands_on_only_its_own_prompts_previews():
    seen = []
    follower = PromptFollower(None, "client", 1.0, logging.LoggerAdapter(logging.getLogger("t"), {}),
                              on_preview=lambda frame, where: seen.append(where))
    follower._prompt_id = "mine"
    follower._sampling_at = {"node": "3", "step": 4, "steps": 20}
    image = picture((32, 32))
    follower._preview(frame_with_metadata(image, {"prompt_id": "other", "node_id": "9"}))
    follower._preview(struct.pack(">I", 3) + b"text")
    follower._preview(frame_with_metadata(image, {"prompt_id": "mine", "node_id": "7"}))
    follower._preview(frame_v1(image))
    assert seen == [{"node": "7", "step": 4, "steps": 20}, {"node": "3", "step": 4, "steps": 20}]


def test_a_stream_yields_events_put_from_a_thread_in_order_then_the_result():
    async def handle(job, events):
        def work():
            for i in range(50):
                events.put({"event": "progress", "i": i})
        await asyncio.get_running_loop().run_in_executor(None, work)
        return {"images": [], "status": "succeeded"}

    async def collect():
        return [item async for item in stream_job(handle, {"id": "j"})]

    items = asyncio.run(collect())
    assert [item["i"] for item in items[:-1]] == list(range(50))
    assert items[-1] == {"images": [], "status": "succeeded"}


def test_a_consumer_that_stops_cancels_the_job():
    cancelled = threading.Event()

    async def handle(job, events):
        events.put({"event": "progress"})
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def first_item_then_stop():
        items = stream_job(handle, {"id": "j"})
        first = await items.__anext__()
        await items.aclose()
        return first

    assert asyncio.run(first_item_then_stop()) == {"event": "progress"}
    assert cancelled.is_set()


def test_the_previews_field():
    assert parse_job_input({"workflow": NODE}).previews is None
    assert parse_job_input({"workflow": NODE, "previews": False}).previews is None
    assert parse_job_input({"workflow": NODE, "previews": True}).previews == "latent2rgb"
    assert parse_job_input({"workflow": NODE, "previews": "TAESD"}).previews == "taesd"
    with pytest.raises(InvalidInput, match="'previews' must be true, false or one of latent2rgb, taesd, auto"):
        parse_job_input({"workflow": NODE, "previews": "fast"})


def test_stream_results_is_off_by_default():
    assert load_settings({}).stream_results is False
    assert load_settings({"STREAM_RESULTS": "1"}).stream_results is True
    with pytest.raises(SettingsError, match="STREAM_RESULTS='maybe' is not a switch"):
        load_settings({"STREAM_RESULTS": "maybe"})
