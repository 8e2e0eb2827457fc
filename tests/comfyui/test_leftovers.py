"""Files a job causes never outlive it, whatever their names: outputs under odd or escaping `filename_prefix`
values, previews in the temp folder, uploaded inputs, and the model cache's lock and partial files. Real instances."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import make_job
from test_model_urls import ModelServer

pytestmark = pytest.mark.comfyui

PREFIXES = ["../escaped", "", "a\nb", "a\rb", 'quo"te', "/absolute", "..", "sub/../../up", "./.", "x/./../..//y",
            "..\\back", "deep/er/name", "%date:yyyy%/../d", " "]
INPUT_NAMES = ["in.png", "späce ä.png", "x" * 200 + ".png", "-dash.png", "'single'.png"]
JOBS = int(os.environ.get("LEFTOVER_JOBS", "300"))  # issue 17's 300: about 18 s on two CPU instances
PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")


def job_for(i: int, model_url: str) -> dict:
    prefix = PREFIXES[i % len(PREFIXES)]
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": i}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "PrimitiveString", "inputs": {"value": f"linked-{i}/x"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": ["4", 0]}},
        "6": {"class_type": "LoadImage", "inputs": {"image": INPUT_NAMES[i % len(INPUT_NAMES)]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
        "8": {"class_type": "WorkerTestLoraDigest", "inputs": {"lora_name": f"m{i}.safetensors"}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["8", 0]}},
    }
    return make_job(workflow, include_previews=i % 2 == 0,
                    images=[{"name": INPUT_NAMES[i % len(INPUT_NAMES)], "image": PNG_1PX}],
                    models=[{"url": f"{model_url}/m{i}.safetensors", "folder": "loras"}])


def files_a_job_may_leave(worker) -> set[str]:
    """Everything under the instances' input, output and temp folders; the model cache's lock and partial files."""
    found = set()
    for instance in worker.fleet.instances:
        for folder in (instance.dirs.input, instance.dirs.output, instance.dirs.temp):
            found |= {str(p) for p in folder.rglob("*")}
    found |= {p.name for p in Path(worker.model_cache.blobs).iterdir() if ".lock" in p.name or ".part-" in p.name}
    return found


def test_jobs_with_odd_names_leave_the_disk_as_they_found_it(worker, run):
    server = ModelServer()
    for i in range(JOBS + 1):
        server.add(f"m{i}.safetensors", 1000)
    model_url = f"{server.url}/files"
    try:
        first = run(worker.handle(job_for(0, model_url)))  # ComfyUI makes the folders it makes once
        assert "error" not in first, first
        before = files_a_job_may_leave(worker)
        results = [run(worker.handle(job_for(i, model_url))) for i in range(1, JOBS + 1)]
    finally:
        server.httpd.shutdown()
    assert [r for r in results if "error" in r] == []
    assert all(len(r["images"]) >= 3 for r in results), results[0]
    left = files_a_job_may_leave(worker) - before
    assert left == set(), sorted(left)[:20]
