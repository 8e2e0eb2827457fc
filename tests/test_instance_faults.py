"""An instance that dies mid-job: the job gets a clear error, the instance is restarted, the other instance's job
is untouched, and the next job on the restarted instance succeeds."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import make_job
from workflows import invert, sleep, through

pytestmark = pytest.mark.comfyui


def test_an_instance_killed_mid_job_is_reported_restarted_and_serves_again(worker, run):
    crashing = worker.fleet.instances[0]
    restarts_before = crashing.restarts

    async def both():
        return await asyncio.gather(
            worker.handle(make_job(through("WorkerTestCrash", seconds=0.5), gpu=0)),
            worker.handle(make_job(sleep(2), gpu=1)),
        )

    crashed, other = run(both())
    assert "ComfyUI on cpu0 died during the job" in crashed["error"], crashed
    assert "exit code -9" in crashed["error"]
    assert "error" not in other, other

    deadline = time.monotonic() + 120
    while not crashing.healthy and time.monotonic() < deadline:
        time.sleep(0.5)
    assert crashing.healthy and crashing.restarts == restarts_before + 1
    after = run(worker.handle(make_job(invert(), gpu=0)))
    assert "error" not in after, after


def test_a_pin_to_an_unhealthy_instance_is_a_clear_error(worker, run):
    instance = worker.fleet.instances[1]
    instance.healthy = False
    try:
        result = run(worker.handle(make_job(invert(), gpu=1)))
    finally:
        instance.healthy = True
    assert "not healthy" in result["error"] and "without 'gpu'" in result["error"]


def test_an_instance_that_fails_at_start_is_reported_with_its_log(comfyui_dir, tmp_path):
    from conftest import worker_env

    from comfy_worker.pipeline import Worker
    from comfy_worker.settings import load_settings

    settings = load_settings(worker_env(comfyui_dir, tmp_path, instances=1, COMFY_EXTRA_ARGS="--no-such-flag"))
    broken = Worker(settings, gpus=[])
    broken.start()
    try:
        assert "exited with code 2 while starting" in broken.startup_error
        assert "unrecognized arguments: --no-such-flag" in broken.startup_error
        result = asyncio.run(broken.handle(make_job(invert())))
        assert result["error"].startswith("the worker failed to start: no ComfyUI instance started")
    finally:
        broken.stop()
