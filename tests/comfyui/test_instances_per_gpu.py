"""INSTANCES_PER_GPU=2 on real ComfyUI: two instances planned for one GPU record, run on CPU.

This machine has no GPU, so the GPU record is given (`Worker(settings, gpus=[Gpu(...)])`) and the instances are
started with `--cpu` (COMFY_EXTRA_ARGS; ComfyUI then ignores the `--cuda-device 0` the worker adds); everything
else (planning, ports, folders, CPU split, tuning, scheduling, the `gpu` pin, the answer and the metrics) is the
GPU path.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import make_job, started_worker, wait_until
from cpu_worker_env import worker_env
from workflows import sleep, through

from comfy_worker.fleet.cpu_layout import available_cpus
from comfy_worker.fleet.gpus import Gpu
from comfy_worker.logs import configure
from comfy_worker.settings import load_settings

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def twins(comfyui_dir, tmp_path_factory):
    configure("INFO")
    env = worker_env(comfyui_dir, tmp_path_factory.mktemp("twins"), instances=2, COMFY_NUM_GPUS="1",
                     INSTANCES_PER_GPU="2", COMFY_EXTRA_ARGS="--cpu", COMFY_VRAM_MODE="dynamic", TORCH_COMPILE="off")
    worker = started_worker(load_settings(env), [Gpu(0, "a GPU record for CPU tests", 143771)],
                            "the two instances of GPU 0")
    yield worker
    worker.stop()


def test_two_instances_share_one_gpu_and_take_jobs_side_by_side(twins, run):
    first, second = twins.fleet.instances
    assert (first.label, second.label) == ("gpu0", "gpu0.1")
    assert (first.spec.gpu, second.spec.gpu) == (0, 0) and second.spec.port == first.spec.port + 1
    assert first.dirs.root != second.dirs.root and first.dirs.root.parent == second.dirs.root.parent
    if len(available_cpus()) >= 2:  # the GPU's cores are split between its instances
        assert first.tuning.cpu_set and second.tuning.cpu_set
        assert set(first.tuning.cpu_set.cpus).isdisjoint(second.tuning.cpu_set.cpus)

    async def both():
        return await asyncio.gather(twins.handle(make_job(sleep(1.5))), twins.handle(make_job(sleep(1.5))))

    results = run(both())
    assert all("error" not in r for r in results), results
    assert sorted(r["instance"] for r in results) == ["gpu0", "gpu0.1"]  # the second job did not queue
    assert all(r["gpu"] == 0 and r["timings"]["queue_wait_ms"] < 1000 for r in results)
    assert {m["instance"]: m["gpu"] for m in results[-1]["metrics"]} == {"gpu0": 0, "gpu0.1": 0}
    assert all(m["jobs"] >= 1 for m in twins.scheduler.snapshot())  # both have counted their job by now


def test_a_gpu_pin_means_the_gpu_and_an_out_of_range_one_says_how_many_there_are(twins, run):
    async def pinned_pair():
        return await asyncio.gather(twins.handle(make_job(sleep(1.5), gpu=0)),
                                    twins.handle(make_job(sleep(1.5), gpu=0)))

    results = run(pinned_pair())
    assert all("error" not in r for r in results), results
    assert sorted(r["instance"] for r in results) == ["gpu0", "gpu0.1"]  # the less loaded instance of GPU 0

    result = run(twins.handle(make_job(sleep(0.1), gpu=1)))
    assert result["error"].startswith("'gpu': 1 is out of range: this worker runs 1 GPU(s) (2 instance(s)), "
                                      "numbered 0 to 0"), result


def test_a_pinned_job_whose_instance_dies_runs_again_on_the_other_instance_of_its_gpu(twins, run, tmp_path):
    """`gpu: 0` names both instances of GPU 0: the job's instance is killed before any output, and the job runs once
    more on its sibling (never on another GPU), with a warning naming it."""
    restarts = {i.label: i.restarts for i in twins.fleet.instances}
    workflow = through("WorkerTestCrash", seconds=0.3, once_marker=str(tmp_path / "crashed-once"))
    result = run(twins.handle(make_job(workflow, gpu=0)))
    assert "error" not in result, result
    assert wait_until(lambda: any(i.restarts > restarts[i.label] for i in twins.fleet.instances), 30)
    [crashed] = [i for i in twins.fleet.instances if i.restarts > restarts[i.label]]
    assert result["instance"] != crashed.label and result["gpu"] == 0
    assert any(f"ComfyUI on {crashed.label} died during the job before it produced any output; the job ran once more, "
               f"on another instance of the GPU it pins ({result['instance']})" in w for w in result["warnings"]), \
        result["warnings"]
    assert len(result["images"]) == 1
    assert wait_until(lambda: crashed.healthy, 120), crashed.log_tail()
