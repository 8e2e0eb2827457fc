"""`python handler.py --rp_serve_api`: RunPod's local API in front of the worker, driven over HTTP as a client
of worker-comfyui would, with the same request body."""

from __future__ import annotations

import json

import pytest
import requests
from conftest import local_api

from comfy_worker.settings import REPO_ROOT

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def api(comfyui_dir, tmp_path_factory):
    with local_api(comfyui_dir, tmp_path_factory.mktemp("api-work")) as url:
        yield url


def test_runsync_with_a_worker_comfyui_request_body(api):
    body = json.loads((REPO_ROOT / "test_input.json").read_text())
    response = requests.post(f"{api}/runsync", json=body, timeout=120)
    assert response.status_code == 200
    payload = response.json()
    assert payload["status"] == "COMPLETED", payload
    [image] = payload["output"]["images"]
    assert image["type"] == "base64" and image["filename"].endswith(".png")


def test_runsync_returns_a_bad_input_as_a_failed_job_with_a_string_error(api):
    response = requests.post(f"{api}/runsync", json={"input": {"images": []}}, timeout=60)
    payload = response.json()
    assert payload["status"] == "FAILED"
    assert isinstance(payload["error"], str) and "no 'workflow'" in payload["error"]


def test_the_default_mode_registers_a_plain_handler_that_does_not_stream(api):
    """STREAM_RESULTS unset: RunPod gets the coroutine handler, so `/run` answers one result and `/stream` refuses."""
    body = json.loads((REPO_ROOT / "test_input.json").read_text())
    job = requests.post(f"{api}/run", json=body, timeout=30).json()
    payload = requests.post(f"{api}/stream/{job['id']}", timeout=120).json()
    assert payload["status"] == "FAILED" and "handler must be a generator" in payload["error"]
