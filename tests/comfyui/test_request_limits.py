"""Size limits: too many workflow nodes and too large a request are refused before any work starts, with the limit
and the count; outputs over MAX_OUTPUT_MB are refused before they are read into memory. Real CPU instances."""

from __future__ import annotations

import dataclasses
import time

import pytest
from conftest import make_job
from workflows import invert

pytestmark = pytest.mark.comfyui


def many_previews(count: int) -> dict:
    workflow = {}
    for n in range(count):
        workflow[f"e{n}"] = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                     "color": n}}
        workflow[f"p{n}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"e{n}", 0]}}
    return workflow


def test_a_workflow_with_too_many_nodes_is_refused_at_once(worker, run):
    started = time.monotonic()
    result = run(worker.handle(make_job(many_previews(10_000))))
    assert time.monotonic() - started < 5
    assert result["error"] == ("the workflow has 20000 nodes, over the limit of 1000 (MAX_WORKFLOW_NODES): split it "
                               "into several jobs")
    assert sum(m.running + m.queue_length for m in worker.scheduler.metrics) == 0


def test_a_request_over_its_size_limit_is_refused(worker, run):
    big = "A" * 101_000_000
    result = run(worker.handle(make_job(invert(), images=[{"name": "big.png", "image": big}])))
    assert "the job input is 101.0 MB, over the 100 MB limit (MAX_REQUEST_MB)" in result["error"], result["error"]


def test_outputs_over_their_limit_are_refused_and_removed(worker, run):
    original = worker.settings
    worker.settings = dataclasses.replace(original, max_output_bytes=50)
    try:
        result = run(worker.handle(make_job(invert(size=64))))
    finally:
        worker.settings = original
    assert "output files total" in result["error"] and "over the 5e-05 MB limit (MAX_OUTPUT_MB)" in result["error"]
    assert "the job's 1 output files" in result["error"]
    for instance in worker.fleet.instances:
        assert not [p for p in instance.dirs.output.rglob("*") if p.is_file()]
