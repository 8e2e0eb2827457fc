"""Faults on real CPU instances: an instance killed mid-job (the job runs again elsewhere, or gets a clear error when
pinned), one that hangs (killed and restarted while jobs go around it), out of memory (memory freed, one retry),
one that fails at start (the others serve), and refresh_worker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT_FOR_TESTS, make_job, wait_until, worker_env
from workflows import invert, sleep, through

from comfy_worker.fleet.tuning import LaunchTuning
from comfy_worker.settings import load_settings
from comfy_worker.worker import Worker

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


def wait_healthy(instance, restarts: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not (instance.healthy and instance.restarts >= restarts) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert instance.healthy and instance.restarts >= restarts, instance.log_tail()


def test_a_job_whose_instance_dies_before_any_output_runs_again_on_another(worker, run, tmp_path):
    restarts = {i.label: i.restarts for i in worker.fleet.instances}
    workflow = through("WorkerTestCrash", seconds=0.3, once_marker=str(tmp_path / "crashed-once"))
    result = run(worker.handle(make_job(workflow)))
    assert "error" not in result, result
    deadline = time.monotonic() + 30
    while not any(i.restarts > restarts[i.label] for i in worker.fleet.instances) and time.monotonic() < deadline:
        time.sleep(0.2)
    [crashed] = [i for i in worker.fleet.instances if i.restarts > restarts[i.label]]
    assert crashed.label != result["instance"]
    assert any(f"ComfyUI on {crashed.label} died during the job before it produced any output; the job ran once "
               "more" in w for w in result["warnings"]), result["warnings"]
    assert len(result["images"]) == 1
    wait_healthy(crashed, restarts[crashed.label] + 1)
    for gpu in (0, 1):
        assert "error" not in run(worker.handle(make_job(invert(), gpu=gpu)))


def test_out_of_memory_frees_the_instance_and_runs_the_job_once_more(worker, run, tmp_path):
    before = sum(m.out_of_memory for m in worker.scheduler.metrics)
    workflow = through("WorkerTestRaise", message="x", out_of_memory=True, once_marker=str(tmp_path / "oom-once"))
    result = run(worker.handle(make_job(workflow)))
    assert "error" not in result, result
    assert any("its memory was freed (models unloaded) and the job ran once more" in w for w in result["warnings"])
    assert sum(m.out_of_memory for m in worker.scheduler.metrics) == before + 1


def test_refresh_worker_in_the_input_ends_the_worker_after_the_job(worker, run):
    assert run(worker.handle(make_job(invert(), refresh_worker=True)))["refresh_worker"] is True
    assert "refresh_worker" not in run(worker.handle(make_job(invert())))
    failed = run(worker.handle({"id": "bad", "input": {"refresh_worker": True}}))  # asked for, even on bad input
    assert "no 'workflow'" in failed["error"] and failed["refresh_worker"] is True
    wrong = run(worker.handle(make_job(invert(), refresh_worker="yes")))
    assert "'refresh_worker' must be true or false" in wrong["error"]


def test_the_worker_level_refresh_switch_reaches_the_runpod_sdk():
    code = "import handler; print(handler.serverless_config()['refresh_worker'])"
    for value, expected in (("1", "True"), ("0", "False")):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT_FOR_TESTS, capture_output=True, text=True,
                              env={**os.environ, "REFRESH_WORKER": value}, timeout=120)
        assert done.stdout.strip().splitlines()[-1] == expected, done.stderr[-2000:]


@pytest.fixture(scope="module")
def quick_to_call_hung(comfyui_dir, tmp_path_factory):
    """Two CPU instances that count as hung after 3 s without an answer."""
    settings = load_settings(worker_env(comfyui_dir, tmp_path_factory.mktemp("hung"), instances=2,
                                        HUNG_INSTANCE_S="3"))
    hung_worker = Worker(settings, gpus=[])
    hung_worker.start()
    assert not hung_worker.startup_error, hung_worker.startup_error
    yield hung_worker
    hung_worker.stop()


def test_a_hung_instance_is_killed_and_restarted_while_jobs_go_around_it(quick_to_call_hung, run):
    worker = quick_to_call_hung
    frozen = worker.fleet.instances[0]

    async def scenario():
        hung = asyncio.create_task(worker.handle(make_job(through("WorkerTestHang"), gpu=0)))
        await asyncio.sleep(2)
        others = await asyncio.gather(*(worker.handle(make_job(invert(color=0x101010 * n))) for n in range(1, 4)))
        return await hung, others

    started = time.monotonic()
    hung, others = run(scenario())
    assert time.monotonic() - started < 60
    assert "ComfyUI on cpu0 did not answer GET /history" in hung["error"], hung
    assert "stopped answering for 3 s; the worker restarts it" in hung["error"]
    assert [o.get("instance") for o in others] == ["cpu1"] * 3, others  # routed around the frozen one
    wait_healthy(frozen, 1)
    assert "error" not in run(worker.handle(make_job(invert(), gpu=0)))


def test_with_several_instances_one_failing_at_start_leaves_the_others_serving(comfyui_dir, tmp_path, run):
    env = worker_env(comfyui_dir, tmp_path, instances=2)
    env["COMFY_CUSTOM_NODES_DIRS"] += os.pathsep + str(Path(__file__).parents[1] / "custom_nodes_failing")
    partial = Worker(load_settings(env), gpus=[])
    partial.start()
    try:
        assert partial.startup_error is None
        assert "cpu0" in partial.fleet.start_errors and "cpu1" not in partial.fleet.start_errors
        assert "exit_in_cpu0: this test node refuses to load in cpu0" in partial.fleet.start_errors["cpu0"]
        served = run(partial.handle(make_job(invert())))
        assert served.get("instance") == "cpu1", served
        pinned = run(partial.handle(make_job(invert(), gpu=0)))
        assert "not healthy" in pinned["error"]
    finally:
        partial.stop()


def test_an_instance_relaunched_with_another_tuning_serves_with_it(worker, run):
    """The restart a job's VRAM mode calls for (vram.py, Fleet.relaunch), on a real instance: the new launch tuning
    is the one running, and the instance serves the next job."""
    instance = worker.fleet.instances[1]
    launches, tuning = instance.launches, instance.tuning
    marked = LaunchTuning(tuning.flags, {**tuning.env, "WORKER_TEST_RELAUNCH": "1"}, tuning.cpu_set, tuning.vram)
    try:
        worker.fleet.relaunch(instance, marked)
        assert instance.launches == launches + 1 and instance.healthy and instance.tuning is marked
        environ = Path(f"/proc/{instance.pid}/environ").read_bytes().split(b"\0")
        assert b"WORKER_TEST_RELAUNCH=1" in environ
        result = run(worker.handle(make_job(invert(), gpu=1)))
        assert "error" not in result and result["instance"] == "cpu1", result
    finally:
        worker.fleet.relaunch(instance, tuning)


def test_a_relaunch_bounded_by_a_jobs_time_leaves_the_instance_starting_and_it_comes_back(worker, run):
    """A VRAM-mode restart waits no longer than the job has left (on_instance raises the job's timeout then); the
    instance is not killed for it: it finishes starting on its own and serves again."""
    instance = worker.fleet.instances[1]
    launches = instance.launches
    assert worker.fleet.relaunch(instance, instance.tuning, wait_s=0.05) is False
    assert instance.launches == launches + 1 and not instance.healthy and instance.is_alive()
    assert wait_until(lambda: instance.healthy, 120), "the instance did not come back after the bounded wait"
    result = run(worker.handle(make_job(invert(), gpu=1)))
    assert "error" not in result and result["instance"] == "cpu1", result
