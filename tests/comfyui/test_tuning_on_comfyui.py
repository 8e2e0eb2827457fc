"""The worker's tuning node and warm-up against real ComfyUI CPU instances."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
from conftest import make_job, worker_env
from workflows import invert

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
    ]
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
