"""Progress shaped like Comfy's API v2, on real ComfyUI: `status`, a `progress` object that only moves forward, the
instance and the elapsed time, at a bounded rate; `queued` while a job waits for its pinned instance; and the
result's own `status`."""

from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import make_job
from workflows import invert, sleep

from comfy_worker.jobs.progress import NodeCounter, ProgressReporter

pytestmark = pytest.mark.comfyui

PROGRESS_KEYS = {"value", "nodes_done", "nodes_total", "current_node", "step", "steps"}


class Recorder:
    def __init__(self) -> None:
        self.by_job: dict[str, list[dict]] = {}
        self._lock = threading.Lock()

    def __call__(self, job: dict, payload: dict) -> None:
        with self._lock:
            self.by_job.setdefault(job["id"], []).append(payload)


@pytest.fixture
def recorder(worker):
    recorder = Recorder()
    worker.progress_sender = recorder
    yield recorder
    worker.progress_sender = None


def test_progress_payloads_are_v2_shaped_and_move_forward(worker, run, recorder):
    job = make_job(sleep(2.5))
    result = run(worker.handle(job))
    assert "error" not in result, result
    assert result["status"] == "succeeded"
    sent = recorder.by_job[job["id"]]
    assert 2 <= len(sent) <= 5  # PROGRESS_INTERVAL_S=1 over 2.5 s of sampling
    for payload in sent:
        assert payload["status"] == "running" and payload["instance"] == result["instance"]
        assert set(payload["progress"]) == PROGRESS_KEYS and 0 <= payload["progress"]["value"] <= 1
        assert payload["progress"]["nodes_total"] == 3
    values = [p["progress"]["value"] for p in sent]
    elapsed = [p["elapsed_s"] for p in sent]
    assert values == sorted(values) and elapsed == sorted(elapsed) and elapsed[-1] >= 1
    stepping = [p for p in sent if p["progress"]["steps"]]
    assert stepping and stepping[-1]["progress"]["current_node"] == "2" and stepping[-1]["progress"]["steps"] == 50
    assert stepping[-1]["progress"]["nodes_done"] == 1  # the EmptyImage before it
    assert 1 / 3 < stepping[-1]["progress"]["value"] <= 2 / 3  # 2/3 when the last payload caught step 50 of 50
    assert stepping[-1]["class_type"] == "WorkerTestSleep"  # the earlier flat keys stay


def test_a_job_behind_another_on_its_pinned_instance_is_reported_queued(worker, run, recorder):
    first, second = make_job(sleep(1.5), gpu=0), make_job(invert(), gpu=0)

    async def both():
        running = asyncio.ensure_future(worker.handle(first))
        await asyncio.sleep(0.5)
        return await asyncio.gather(running, worker.handle(second))

    results = run(both())
    assert all(r["status"] == "succeeded" for r in results), results
    assert recorder.by_job[second["id"]][0]["status"] == "queued"
    assert "queued" not in [p["status"] for p in recorder.by_job[first["id"]]]


def test_a_failed_job_says_failed(worker, run):
    result = run(worker.handle(make_job({"1": {"class_type": "NoSuchNode", "inputs": {}}})))
    assert result["status"] == "failed" and "NoSuchNode" in result["error"]


def test_cached_nodes_count_as_done():
    counter = NodeCounter(4)
    counter.update({"cached_nodes": ["1", "2"]})
    counter.update({"node": "3"})
    counter.update({"node": "3", "step": 5, "steps": 10})
    assert counter.progress() == {"value": 0.625, "nodes_done": 2, "nodes_total": 4, "current_node": "3",
                                  "step": 5, "steps": 10}
    counter.update({"node": "4"})
    assert counter.progress()["nodes_done"] == 3 and counter.value == 0.75


def test_updates_between_sends_still_count(monkeypatch):
    clock = iter([0.0, 0.2, 0.4, 1.1])
    monkeypatch.setattr("comfy_worker.jobs.progress.time.monotonic", lambda: next(clock))
    sent = []
    reporter = ProgressReporter({"id": "j"}, "gpu0", 1.0, lambda job, payload: sent.append(payload), 3, None)
    for update in ({"node": "1"}, {"node": "2"}, {"node": "3"}, {"node": "3", "step": 1, "steps": 2}):
        reporter(update)
    assert [p["progress"]["nodes_done"] for p in sent] == [0, 2]
    assert sent[-1]["progress"]["value"] == round(2.5 / 3, 4) and sent[-1]["elapsed_s"] == 1.1
