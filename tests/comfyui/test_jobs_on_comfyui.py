"""Jobs through the Worker against two real ComfyUI CPU instances: every output kind, inputs, concurrency,
pinning, timeouts, rejected and failing workflows, a dropped websocket, cancellation and progress."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import struct
import time
import wave

import pytest
from conftest import make_job
from PIL import Image
from workflows import invert, load_invert, sleep, through

pytestmark = pytest.mark.comfyui


def decode_image(item: dict) -> Image.Image:
    assert item["type"] == "base64"
    return Image.open(io.BytesIO(base64.b64decode(item["data"])))


def png_base64(color: tuple[int, int, int], size: int = 8) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(("image_format", "quality", "pil_format", "suffix"), [
    ("webp", 90, "WEBP", ".webp"), ("jpeg", 60, "JPEG", ".jpg"), (None, None, "PNG", ".png"),
])
def test_images_come_back_in_the_requested_format(worker, run, image_format, quality, pil_format, suffix):
    fields = {key: value for key, value in (("image_format", image_format), ("image_quality", quality)) if value}
    result = run(worker.handle(make_job(invert(color=0x204060, size=64), **fields)))
    assert "error" not in result, result
    [item] = result["images"]
    image = decode_image(item)
    assert image.format == pil_format and image.size == (64, 64)
    assert item["filename"].endswith(suffix) and item["content_type"] == Image.MIME[pil_format]
    red, green, blue = image.convert("RGB").getpixel((32, 32))
    assert abs(red - 0xDF) <= 3 and abs(green - 0xBF) <= 3 and abs(blue - 0x9F) <= 3  # lossy, but the same picture


def test_invert_returns_the_inverted_png_in_worker_comfyui_shape(worker, run):
    result = run(worker.handle(make_job(invert(color=0x102030))))
    assert "error" not in result, result
    [image] = result["images"]
    assert set(image) >= {"filename", "type", "data"}
    assert image["filename"].startswith("inverted_") and image["filename"].endswith(".png")
    assert decode_image(image).convert("RGB").getpixel((0, 0)) == (255 - 0x10, 255 - 0x20, 255 - 0x30)
    assert result["instance"] in ("cpu0", "cpu1")
    assert result["timings"]["execution_ms"] > 0
    assert {m["instance"] for m in result["metrics"]} == {"cpu0", "cpu1"}


def test_the_same_workflow_twice_returns_its_image_both_times(worker, run):
    """ComfyUI caches unchanged nodes; each job must still get its own file."""
    first = run(worker.handle(make_job(invert(), gpu=0)))
    second = run(worker.handle(make_job(invert(), gpu=0)))
    assert "error" not in second, second
    assert decode_image(second["images"][0]).tobytes() == decode_image(first["images"][0]).tobytes()
    instance = worker.fleet.instances[0]
    assert not [p for p in instance.dirs.output.rglob("*") if p.is_file()], "outputs were left on the instance"


@pytest.mark.parametrize("as_data_uri", [False, True])
def test_uploaded_image_goes_through_loadimage_and_is_removed_after(worker, run, as_data_uri):
    encoded = png_base64((200, 10, 0))
    if as_data_uri:
        encoded = "data:image/png;base64," + encoded
    result = run(worker.handle(make_job(load_invert("red.png"), images=[{"name": "red.png", "image": encoded}])))
    assert "error" not in result, result
    pixel = decode_image(result["images"][0]).convert("RGB").getpixel((3, 3))
    assert all(abs(got - want) <= 1 for got, want in zip(pixel, (55, 245, 255), strict=True)), pixel
    # the upload is one HTTP request on loopback: never under the timer's 0.1 ms resolution, never the whole job
    assert 0 < result["timings"]["upload_ms"] < result["timings"]["total_ms"], result["timings"]
    for instance in worker.fleet.instances:
        assert not (instance.dirs.input / "red.png").exists()


def two_frames() -> dict:
    """A batch of two different frames (identical frames would be merged by the encoders)."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0x0000FF}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
    }


def animated_webp(method: str = "default") -> dict:
    return {**two_frames(), "4": {"class_type": "SaveAnimatedWEBP", "inputs": {
        "images": ["3", 0], "filename_prefix": "anim", "fps": 6.0, "lossless": True, "quality": 80, "method": method}}}


def test_animated_webp_is_returned_as_an_animated_image(worker, run):
    result = run(worker.handle(make_job(animated_webp())))
    assert "error" not in result, result
    [image] = result["images"]
    assert image["filename"].endswith(".webp") and image.get("animated") is True
    assert decode_image(image).n_frames == 2


def test_gifs_output_of_a_video_node_is_returned(worker, run):
    workflow = {**two_frames(), "4": {"class_type": "WorkerTestSaveGif",
                                      "inputs": {"images": ["3", 0], "filename_prefix": "clip"}}}
    result = run(worker.handle(make_job(workflow)))
    assert "error" not in result, result
    [gif] = result["gifs"]
    assert gif["filename"].endswith(".gif") and gif["content_type"] == "image/gif"
    assert decode_image(gif).n_frames == 2


def test_text_output_is_returned(worker, run):
    workflow = {
        "1": {"class_type": "StringConcatenate", "inputs": {"string_a": "hello ", "string_b": "world",
                                                             "delimiter": ""}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    result = run(worker.handle(make_job(workflow)))
    assert "error" not in result, result
    assert result["text"] == [{"node_id": "2", "type": "text", "data": "hello world"}]


def test_audio_output_is_returned(worker, run):
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(4000)))
    workflow = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": "tone.wav"}},
        "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": "audio/tone"}},
    }
    tone = base64.b64encode(buffer.getvalue()).decode()
    result = run(worker.handle(make_job(workflow, images=[{"name": "tone.wav", "image": tone}])))
    assert "error" not in result, result
    [audio] = result["audio"]
    assert audio["filename"].endswith(".flac")
    assert base64.b64decode(audio["data"])[:4] == b"fLaC"


def test_four_concurrent_jobs_run_on_both_instances_at_once(worker, run):
    async def four():
        async def one():
            started = time.monotonic()
            result = await worker.handle(make_job(sleep(1.5)))
            return started, time.monotonic(), result

        return await asyncio.gather(*(one() for _ in range(4)))

    started = time.monotonic()
    runs = run(four())
    wall = time.monotonic() - started
    results = [r for _, _, r in runs]
    assert all("error" not in r for r in results), results
    assert sorted(r["instance"] for r in results) == ["cpu0", "cpu0", "cpu1", "cpu1"]
    spans = {inst: [(s, e) for s, e, r in runs if r["instance"] == inst] for inst in ("cpu0", "cpu1")}
    first_end_cpu0 = min(e for _, e in spans["cpu0"])
    first_end_cpu1 = min(e for _, e in spans["cpu1"])
    # The first job of each instance ran at the same time as the other's: their spans overlap.
    assert max(s for s, _ in spans["cpu0"]) < first_end_cpu1 or max(s for s, _ in spans["cpu1"]) < first_end_cpu0
    # A ratio, not a fixed bound: one after another they would take at least the sum of their own execution times
    # (each at least 1.5 s, longer on a loaded machine); two at a time, about half of it.
    executed_s = sum(r["timings"]["execution_ms"] for r in results) / 1000
    assert wall < 0.8 * executed_s, f"4 jobs of {executed_s:.1f} s in all took {wall:.1f} s: not run in parallel"
    waited = sorted(r["timings"]["queue_wait_ms"] for r in results)
    assert waited[-1] > 1000  # the second job of an instance queued behind the first


def test_a_pinned_job_runs_on_its_instance(worker, run):
    result = run(worker.handle(make_job(invert(), gpu=1)))
    assert result["instance"] == "cpu1" and result["gpu"] is None


def test_a_pin_out_of_range_is_a_clear_error(worker, run):
    result = run(worker.handle(make_job(invert(), gpu=7)))
    assert "out of range" in result["error"] and "0 to 1" in result["error"]


def test_a_job_past_its_timeout_is_interrupted_and_the_instance_serves_the_next(worker, run):
    started = time.monotonic()
    result = run(worker.handle(make_job(sleep(60), gpu=0, timeout_s=2)))
    assert time.monotonic() - started < 20
    assert "timeout of 2 s" in result["error"] and "WorkerTestSleep" in result["error"]
    started = time.monotonic()
    after = run(worker.handle(make_job(invert(color=0x010203), gpu=0)))
    assert "error" not in after, after
    assert time.monotonic() - started < 10


def test_a_ui_format_workflow_gets_export_advice(worker, run):
    result = run(worker.handle(make_job({"nodes": [], "links": [], "version": 0.4})))
    assert "Export (API)" in result["error"]


def test_a_missing_node_class_is_named(worker, run):
    result = run(worker.handle(make_job(through("NoSuchNode"))))
    assert "NoSuchNode" in result["error"] and result["error"].startswith("ComfyUI rejected the workflow")


def test_a_missing_model_file_is_named_with_advice(worker, run):
    workflow = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}},
                "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    result = run(worker.handle(make_job(workflow)))
    assert "node 1 (CheckpointLoaderSimple): ckpt_name 'missing.safetensors' not in list" in result["error"], result
    assert "is the model file installed" in result["error"]
    assert result["details"]


def test_a_value_not_in_list_lists_the_available_choices(worker, run):
    result = run(worker.handle(make_job(animated_webp(method="bogus"))))
    assert "node 4 (SaveAnimatedWEBP): method 'bogus' not in list; available: default, fastest, slowest" in (
        result["error"]
    ), result


def test_a_missing_input_image_is_named(worker, run):
    result = run(worker.handle(make_job(load_invert("nope.png"))))
    assert "node 1 (LoadImage)" in result["error"] and "nope.png" in result["error"], result


def test_an_execution_error_names_the_node_and_the_exception(worker, run):
    result = run(worker.handle(make_job(through("WorkerTestRaise", message="bad seed", out_of_memory=False))))
    assert result["error"] == "node 2 (WorkerTestRaise) failed: ValueError: bad seed"


def test_out_of_memory_is_reported_and_counted(worker, run):
    before = sum(m.out_of_memory for m in worker.scheduler.metrics)
    result = run(worker.handle(make_job(through("WorkerTestRaise", message="x", out_of_memory=True))))
    assert "out of GPU memory" in result["error"] and "OutOfMemoryError" in result["error"]
    assert "(a CPU instance) ran out of memory even after its memory was freed and the job ran once more" \
        in result["error"]
    assert sum(m.out_of_memory for m in worker.scheduler.metrics) == before + 2  # the job and its one retry


def test_a_dropped_websocket_does_not_lose_the_job(worker, run):
    workflow = through("WorkerTestDropWebsockets")
    workflow["4"] = {"class_type": "WorkerTestSleep", "inputs": {"image": ["2", 0], "seconds": 1.0}}
    workflow["3"]["inputs"]["images"] = ["4", 0]
    result = run(worker.handle(make_job(workflow)))
    assert "error" not in result, result
    assert result["timings"]["websocket_drops"] >= 1
    assert len(result["images"]) == 1


def test_cancelling_a_job_interrupts_its_instance_only(worker, run):
    async def scenario():
        doomed = asyncio.create_task(worker.handle(make_job(sleep(60), gpu=0)))
        other = asyncio.create_task(worker.handle(make_job(sleep(2), gpu=1)))
        await asyncio.sleep(1.0)
        doomed.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        cancel_s = time.monotonic() - started
        return cancel_s, await other

    cancel_s, other = run(scenario())
    assert cancel_s < 15
    assert "error" not in other, other
    after = run(worker.handle(make_job(invert(color=0x0A0B0C), gpu=0)))
    assert "error" not in after and after["timings"]["total_ms"] < 10_000


def test_progress_is_forwarded_throttled(worker, run):
    sent = []
    worker.progress_sender = lambda job, payload: sent.append(payload)
    try:
        result = run(worker.handle(make_job(sleep(2.5))))
    finally:
        worker.progress_sender = None
    assert "error" not in result, result
    steps = [p for p in sent if "step" in p]
    assert steps and steps[0]["class_type"] == "WorkerTestSleep" and steps[0]["steps"] == 50
    assert 2 <= len(sent) <= 5  # about once a second over 2.5 s
    assert all(p["gpu"] == result["instance"] for p in sent)


def test_the_handler_module_runs_jobs_in_process(worker, run):
    import handler

    original = handler.worker
    handler.worker = worker
    try:
        result = run(handler.handler(make_job(invert())))
        assert "error" not in result and result["images"]
        assert handler.concurrency_modifier(1) == 2
    finally:
        handler.worker = original
