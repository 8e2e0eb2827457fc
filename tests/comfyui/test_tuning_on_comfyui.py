"""The worker's tuning node and warm-up against real ComfyUI CPU instances."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import struct

import pytest
from conftest import make_job, worker_env
from PIL import Image
from workflows import invert

from comfy_worker.fleet.tuning import node_request
from comfy_worker.settings import load_settings
from comfy_worker.worker import Worker

pytestmark = pytest.mark.comfyui


def test_every_job_reports_the_switches_its_instance_applied_and_where_time_went(worker, run):
    result = run(worker.handle(make_job(invert(color=0x5A5A01))))  # a colour no other test uses: nothing cached
    assert "error" not in result, result
    tuning = result["tuning"]
    assert tuning["applied"] == [
        "✗ Disabled TF32 for matmul and cuDNN", "✗ Disabled cudnn.benchmark",
        "✗ Disabled torch.compile of diffusion models",  # CPU instances are never compiled
        "✓ PNG compress level 1 for SaveImage",
    ]
    assert tuning["png_compress_level"] == 1  # the default, measured best (docs/benchmarks/stream.md)
    assert tuning["torch"]["matmul_tf32"] is False and tuning["torch"]["cudnn_benchmark"] is False
    assert tuning["vram_mode"] is None and tuning["cpus"] is None  # CPU instances: ComfyUI's own defaults
    phases = result["timings"]["phases_ms"]
    assert set(phases) == {"model_load_ms", "sampling_ms", "vae_decode_ms", "save_ms", "other_nodes_ms"}
    assert phases["save_ms"] > 0 and phases["other_nodes_ms"] > 0  # SaveImage; EmptyImage and ImageInvert


def test_the_switches_can_be_changed_and_read_back_in_the_running_instance(worker):
    client = worker.fleet.instances[1].client
    try:
        state = client.apply_tuning({"tf32": True, "cudnn_benchmark": True, "compile": None})
        assert state["torch"]["matmul_tf32"] is True and state["torch"]["cudnn_tf32"] is True
        assert state["torch"]["cudnn_benchmark"] is True
        assert "✓ Enabled TF32 for matmul and cuDNN" in state["applied"]
    finally:
        worker.fleet.instances[1].switches = client.apply_tuning({"tf32": False, "cudnn_benchmark": False})


def zlib_level_bits(png: bytes) -> int:
    """FLEVEL of the first IDAT's zlib stream (the top 2 bits of its second byte): zlib writes 0 for levels 0-1, 1 for
    2-5, 2 for 6 and 3 for 7-9."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    position = 8
    while position < len(png):
        length, kind = struct.unpack(">I4s", png[position:position + 8])
        if kind == b"IDAT":
            return png[position + 9] >> 6
        position += 12 + length
    raise AssertionError("no IDAT chunk")


def test_saveimage_writes_its_pngs_at_the_configured_level_and_previewimage_keeps_its_own(worker, run):
    instance = worker.fleet.instances[1]
    try:
        for level, bits in ((1, 0), (9, 3), (6, 2), (4, 1)):
            workflow = invert(color=0x5A5A10 + level, size=64)  # colours no other test uses: nothing cached
            workflow["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
            state = instance.client.apply_tuning({**node_request(worker.settings, False), "png_compress_level": level})
            instance.switches = state
            assert state["png_compress_level"] == level and f"✓ PNG compress level {level} for SaveImage" in \
                state["applied"]
            # the same node ids each time: ComfyUI keeps their objects between prompts, the level is read at each save
            result = run(worker.handle(make_job(workflow, gpu=1, include_previews=True)))
            assert "error" not in result, result
            assert result["tuning"]["png_compress_level"] == level
            saved = [i for i in result["images"] if "_temp_" not in i["filename"]]
            previews = [i for i in result["images"] if "_temp_" in i["filename"]]
            assert len(saved) == 1 and len(previews) == 1, result["images"]
            png = base64.b64decode(saved[0]["data"])
            assert zlib_level_bits(png) == bits, level
            assert zlib_level_bits(base64.b64decode(previews[0]["data"])) == 0  # PreviewImage's own level 1
            image = Image.open(io.BytesIO(png))
            assert image.format == "PNG" and image.size == (64, 64)
            assert image.convert("RGB").getpixel((5, 5)) == (0xA5, 0xA5, 0xEF - level)  # the colour inverted
    finally:
        instance.switches = instance.client.apply_tuning(node_request(worker.settings, False))


def test_a_warmup_runs_on_every_instance_at_start_and_a_bad_one_never_stops_the_worker(
    comfyui_dir, tmp_path, run, caplog
):
    warmup = json.dumps(invert(prefix="warmup"))
    settings = load_settings(worker_env(comfyui_dir, tmp_path, instances=1, WARMUP_WORKFLOW=warmup))
    worker = Worker(settings, gpus=[])
    try:
        with caplog.at_level(logging.INFO, logger="comfy_worker"):
            worker.start()
        assert worker.startup_error is None
        assert worker.startup_s["warmup"] > 0
        assert "warm-up ran on 1 instance(s)" in caplog.text and "cpu0 failed" not in caplog.text
        output = worker.fleet.instances[0].dirs.output
        assert not any(output.rglob("warmup*.png"))  # the warm-up's outputs are removed like a job's

        caplog.clear()
        worker.settings = dataclasses.replace(settings, warmup_workflow=json.dumps(
            {"1": {"class_type": "NoSuchNode", "inputs": {}}}))
        with caplog.at_level(logging.INFO, logger="comfy_worker"):
            worker.warm_up()
        assert "warm-up failed" in caplog.text and "NoSuchNode" in caplog.text

        result = run(worker.handle(make_job(invert())))
        assert "error" not in result, result
    finally:
        worker.stop()
