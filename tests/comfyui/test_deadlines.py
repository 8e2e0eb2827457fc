"""A job's `timeout_s` bounds all of it, from the moment the worker receives it: waiting in the queue, downloading
inputs and models from a server that trickles bytes, running. Each job answers within its deadline + 5 s with an
error naming the phase that ran out; a job cancelled or out of time while a model downloads holds nothing in the
cache. One real CPU instance; the HTTP servers are on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import make_job, trickling_server, worker_env
from workflows import invert, load_invert, sleep

from comfy_worker.settings import load_settings
from comfy_worker.worker import Worker

pytestmark = pytest.mark.comfyui

ANSWER_WITHIN_S = 5.0  # past the deadline


@pytest.fixture(scope="module")
def single(comfyui_dir, tmp_path_factory):
    settings = load_settings(worker_env(comfyui_dir, tmp_path_factory.mktemp("deadlines"), instances=1,
                                        ALLOW_PRIVATE_URLS="1"))
    one = Worker(settings, gpus=[])
    one.start()
    assert not one.startup_error, one.startup_error
    yield one
    one.stop()


@pytest.fixture(scope="module")
def trickle():
    with trickling_server(1_000_000) as url:
        yield url


def timed(run, coroutine):
    started = time.monotonic()
    result = run(coroutine)
    return result, time.monotonic() - started


def test_a_short_job_queued_behind_a_long_one_answers_at_its_deadline(single, run):
    async def scenario():
        long = asyncio.create_task(single.handle(make_job(sleep(10))))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        short = await single.handle(make_job(invert(), timeout_s=2))
        return short, time.monotonic() - started, await long

    short, seconds, long = run(scenario())
    assert seconds < 2 + ANSWER_WITHIN_S, seconds
    assert "timeout of 2 s while waiting in the queue of cpu0 (1 job(s) ahead of it)" in short["error"], short
    assert "error" not in long, long
    after = run(single.handle(make_job(invert(color=0x0F0F0F))))
    assert "error" not in after, after


def test_a_job_past_its_timeout_mid_run_answers_within_five_seconds(single, run):
    result, seconds = timed(run, single.handle(make_job(sleep(60), timeout_s=2)))
    assert seconds < 2 + ANSWER_WITHIN_S, seconds
    assert "timeout of 2 s while running the workflow, at node 2 (WorkerTestSleep)" in result["error"], result


def test_an_input_url_that_trickles_ends_at_the_jobs_deadline(single, run, trickle):
    job = make_job(load_invert("slow.png"), images=[{"name": "slow.png", "image": f"{trickle}/slow.png"}],
                   timeout_s=2)
    result, seconds = timed(run, single.handle(job))
    assert seconds < 2 + ANSWER_WITHIN_S, seconds
    assert "still downloading when the job's timeout of 2 s ran out" in result["error"], result


def wait_released(worker, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while worker.model_cache._in_use and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not worker.model_cache._in_use, dict(worker.model_cache._in_use)


def lora_job(url: str, **fields):
    workflow = {"1": {"class_type": "WorkerTestLoraDigest", "inputs": {"lora_name": "slow.safetensors"}},
                "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    return make_job(workflow, models=[{"url": url, "folder": "loras", "name": "slow.safetensors"}], **fields)


def test_a_model_that_trickles_ends_at_the_jobs_deadline_and_is_released(single, run, trickle):
    result, seconds = timed(run, single.handle(lora_job(f"{trickle}/a.safetensors", timeout_s=2)))
    assert seconds < 2 + ANSWER_WITHIN_S, seconds
    assert "timeout of 2 s while" in result["error"] and "a.safetensors" in result["error"], result
    wait_released(single)


def test_cancelling_a_job_while_its_model_downloads_releases_the_cache(single, run, trickle):
    async def scenario():
        job = asyncio.create_task(single.handle(lora_job(f"{trickle}/b.safetensors")))
        await asyncio.sleep(1.5)
        assert single.model_cache._in_use  # the download holds its file
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job

    run(scenario())
    wait_released(single)
    assert not list(single.model_cache.blobs.glob("*.part-*")), "the abandoned download left its part file"
