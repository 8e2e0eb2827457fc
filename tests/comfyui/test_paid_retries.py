"""Retries never repeat paid work: a job whose ComfyUI API node (a paid call) had started is not run again after
out of memory or a dead instance; one that failed before any API node started still is. Real CPU instances, with a
test node marked `API_NODE` as ComfyUI's API nodes are."""

from __future__ import annotations

import pytest
from conftest import make_job

pytestmark = pytest.mark.comfyui


def chain(*nodes: tuple[str, dict]) -> dict:
    """EmptyImage → each (class_type, inputs) in turn → SaveImage."""
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}}}
    for number, (class_type, inputs) in enumerate(nodes, start=2):
        workflow[str(number)] = {"class_type": class_type, "inputs": {"image": [str(number - 1), 0], **inputs}}
    last = str(len(nodes) + 1)
    workflow["99"] = {"class_type": "SaveImage", "inputs": {"images": [last, 0], "filename_prefix": "paid"}}
    return workflow


def calls(ledger) -> int:
    return len(ledger.read_text().splitlines()) if ledger.exists() else 0


def test_out_of_memory_after_a_paid_node_started_is_not_retried(worker, run, tmp_path):
    ledger = tmp_path / "ledger"
    workflow = chain(("WorkerTestPaidCall", {"ledger": str(ledger)}),
                     ("WorkerTestRaise", {"message": "x", "out_of_memory": True,
                                          "once_marker": str(tmp_path / "oom-once")}))
    result = run(worker.handle(make_job(workflow)))
    assert "out of GPU memory" in result["error"], result
    assert "It was not run again: API node(s) 2 (WorkerTestPaidCall) had started" in result["error"]
    assert calls(ledger) == 1


def test_out_of_memory_before_any_paid_node_is_retried(worker, run, tmp_path):
    ledger = tmp_path / "ledger"
    workflow = chain(("WorkerTestRaise", {"message": "x", "out_of_memory": True,
                                          "once_marker": str(tmp_path / "oom-once")}),
                     ("WorkerTestPaidCall", {"ledger": str(ledger)}))
    result = run(worker.handle(make_job(workflow)))
    assert "error" not in result, result
    assert any("the job ran once more" in w for w in result["warnings"])
    assert calls(ledger) == 1


def test_an_instance_dying_after_a_paid_node_started_is_not_retried(worker, run, tmp_path):
    ledger = tmp_path / "ledger"
    workflow = chain(("WorkerTestPaidCall", {"ledger": str(ledger)}),
                     ("WorkerTestCrash", {"seconds": 0.2, "once_marker": str(tmp_path / "crash-once")}))
    result = run(worker.handle(make_job(workflow)))
    assert "died during the job" in result["error"], result
    assert "It was not run again: API node(s) 2 (WorkerTestPaidCall) had started" in result["error"]
    assert calls(ledger) == 1
