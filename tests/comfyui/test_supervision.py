"""Supervision on real CPU instances: an instance SIGKILLed while it restarts comes back; instances killed at random
moments (starting, running a job, restarting) for a bounded time all end up serving, and every job sent meanwhile
got an answer; a worker that cannot launch ComfyUI at all says why to every job."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time

import pytest
from conftest import make_job, wait_until, worker_env
from workflows import invert, sleep

from comfy_worker.settings import load_settings
from comfy_worker.worker import Worker

pytestmark = pytest.mark.comfyui

CHAOS_S = 40


@pytest.fixture(scope="module")
def fleet_worker(comfyui_dir, tmp_path_factory):
    settings = load_settings(worker_env(comfyui_dir, tmp_path_factory.mktemp("chaos"), instances=2,
                                        HUNG_INSTANCE_S="5"))
    chaos = Worker(settings, gpus=[])
    chaos.start()
    assert not chaos.startup_error, chaos.startup_error
    yield chaos
    chaos.stop()


def kill(instance) -> None:
    if instance.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(instance.pid, signal.SIGKILL)


def test_an_instance_killed_while_it_restarts_comes_back(fleet_worker, run):
    instance = fleet_worker.fleet.instances[0]
    launches = instance.launches
    kill(instance)
    assert wait_until(lambda: instance.launches > launches, 10), "the watcher did not relaunch it"
    time.sleep(0.5)
    assert not instance.healthy
    kill(instance)  # the new process, while it starts
    assert wait_until(lambda: instance.healthy, 90), instance.log_tail()
    assert "error" not in run(fleet_worker.handle(make_job(invert(), gpu=0)))


def test_instances_killed_at_random_moments_all_end_up_serving_and_no_job_is_lost(fleet_worker, run):
    rng = random.Random(17)
    results = []

    async def jobs_until(stop_at: float) -> None:
        while time.monotonic() < stop_at:
            results.append(await fleet_worker.handle(make_job(sleep(rng.choice((0.2, 1.0))), timeout_s=60)))

    async def killer(stop_at: float) -> list[str]:
        killed = []
        while time.monotonic() < stop_at:
            await asyncio.sleep(rng.uniform(0.5, 6))
            instance = rng.choice(fleet_worker.fleet.instances)
            moment = "starting" if not instance.healthy else "serving"
            kill(instance)
            killed.append(f"{instance.label} {moment}")
        return killed

    async def scenario():
        stop_at = time.monotonic() + CHAOS_S
        done = await asyncio.wait_for(asyncio.gather(jobs_until(stop_at), jobs_until(stop_at), killer(stop_at)),
                                      CHAOS_S + 120)
        return done[2]

    killed = run(scenario())
    assert len(killed) >= 6 and any("starting" in k for k in killed), killed
    assert results and all(isinstance(r.get("error", ""), str) for r in results)
    assert all("error" in r or r["images"] for r in results), "a job answered without its image"
    assert any("error" not in r for r in results)
    for instance in fleet_worker.fleet.instances:
        assert wait_until(lambda instance=instance: instance.healthy and instance.is_alive(), 90), instance.log_tail()
    for gpu in (0, 1):
        after = run(fleet_worker.handle(make_job(invert(), gpu=gpu)))
        assert "error" not in after, after


def test_a_python_that_does_not_exist_is_reported_to_every_job(comfyui_dir, tmp_path):
    broken = Worker(load_settings(worker_env(comfyui_dir, tmp_path, instances=2, COMFY_PYTHON="/no/such")), gpus=[])
    broken.start()
    try:
        assert "could not be launched with /no/such (COMFY_PYTHON)" in broken.startup_error
        result = asyncio.run(broken.handle(make_job(invert())))
        assert result["error"].startswith("the worker failed to start: no ComfyUI instance started")
        assert "No such file or directory" in result["error"]
    finally:
        broken.stop()
