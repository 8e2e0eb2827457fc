"""STREAM_RESULTS=1 through RunPod's local API (`python handler.py --rp_serve_api`) on a real ComfyUI: `/run` then
`/stream/{id}` returns the job's progress, its previews when asked for, each output, then the result."""

from __future__ import annotations

import base64
import io

import pytest
import requests
from conftest import local_api
from PIL import Image

pytestmark = pytest.mark.comfyui

PREVIEW_FRAMES = 16  # sent by ComfyUI over 2 s: at most 2 a second may pass


@pytest.fixture(scope="module")
def api(comfyui_dir, tmp_path_factory):
    with local_api(comfyui_dir, tmp_path_factory.mktemp("stream-work"), STREAM_RESULTS="1",
                   PROGRESS_INTERVAL_S="0.2") as url:
        yield url


def previewing_workflow() -> dict:
    """A 600×400 image previewed 16 times (ComfyUI sends each as a 512-px JPEG frame), saved, then after a 1 s step
    saved inverted. ComfyUI runs a ready output node first, so node 3 saves before node 4 starts."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 600, "height": 400, "batch_size": 1, "color": 0x3060C0}},
        "2": {"class_type": "WorkerTestPreview", "inputs": {"image": ["1", 0], "steps": PREVIEW_FRAMES,
                                                            "seconds": 2.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "streamed"}},
        "4": {"class_type": "WorkerTestSleep", "inputs": {"image": ["2", 0], "seconds": 1.0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "streamed_later"}},
    }


def stream(api: str, job_input: dict) -> list[dict]:
    job = requests.post(f"{api}/run", json={"input": job_input}, timeout=30).json()
    assert job["status"] == "IN_PROGRESS", job
    payload = requests.post(f"{api}/stream/{job['id']}", timeout=300).json()
    assert payload["status"] == "COMPLETED", payload
    return [item["output"] for item in payload["stream"]]


def of_kind(items: list[dict], event: str) -> list[dict]:
    return [item for item in items if item.get("event") == event]


def test_stream_yields_progress_previews_each_output_then_the_result(api):
    items = stream(api, {"workflow": previewing_workflow(), "previews": True})
    *events, result = items
    assert "event" not in result and result["status"] == "succeeded", result
    assert all("event" in e for e in events)

    progress = of_kind(events, "progress")
    assert progress and all(p["status"] == "running" and p["instance"] == "cpu0" for p in progress)
    assert any(p["progress"]["current_node"] == "2" and p["progress"]["steps"] == PREVIEW_FRAMES for p in progress)
    assert all(set(p["progress"]) == {"value", "nodes_done", "nodes_total", "current_node", "step", "steps"}
               for p in progress)

    previews = of_kind(events, "preview")
    assert 1 <= len(previews) < PREVIEW_FRAMES, len(previews)  # the rate bound dropped some
    for preview in previews:
        assert preview["node"] == "2" and preview["content_type"] == "image/jpeg" and preview["steps"] == PREVIEW_FRAMES
        image = Image.open(io.BytesIO(base64.b64decode(preview["data"])))  # ComfyUI's frame: 512×341
        assert image.format == "JPEG" and image.size == (preview["width"], preview["height"]) == (256, 170)

    outputs = of_kind(events, "output")
    assert sorted(o["node_id"] for o in outputs) == ["3", "5"]
    by_node = {o["node_id"]: o for o in outputs}
    for image in result["images"]:
        streamed = by_node[image["node_id"]]
        assert streamed["filename"] == image["filename"] and streamed["data"] == image["data"]
        assert streamed["type"] == "image" and streamed["content_type"] == "image/png" and streamed["key"] == "images"
    # node 3's output is streamed as soon as it is saved: before node 4 reports its steps, long before the result
    first_progress_of_4 = min(i for i, item in enumerate(items)
                              if item.get("event") == "progress" and item["progress"]["current_node"] == "4")
    assert items.index(by_node["3"]) < first_progress_of_4 < items.index(by_node["5"]) < len(items) - 1


def test_without_previews_asked_the_stream_has_none(api):
    items = stream(api, {"workflow": previewing_workflow()})
    assert not of_kind(items, "preview")
    assert of_kind(items, "progress") and len(of_kind(items, "output")) == 2
    assert items[-1]["status"] == "succeeded" and len(items[-1]["images"]) == 2


def test_a_failed_job_ends_its_stream_with_the_error(api):
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "WorkerTestRaise", "inputs": {"image": ["1", 0], "message": "streamed failure",
                                                          "out_of_memory": False}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "never"}},
    }
    items = stream(api, {"workflow": workflow})
    assert items[-1]["status"] == "failed" and "streamed failure" in items[-1]["error"]
    assert not any("error" in item for item in items[:-1])


def test_runsync_returns_the_list_of_everything_yielded(api):
    payload = requests.post(f"{api}/runsync", json={"input": {"workflow": previewing_workflow(), "previews": True}},
                            timeout=300).json()
    assert payload["status"] == "COMPLETED"
    *events, result = payload["output"]
    assert of_kind(events, "progress") and of_kind(events, "preview") and len(of_kind(events, "output")) == 2
    assert result["status"] == "succeeded" and len(result["images"]) == 2
