"""`python handler.py --rp_serve_api`: RunPod's local API in front of the worker, driven over HTTP as a client
of worker-comfyui would, with the same request body."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests
from conftest import free_port_block, worker_env

from comfy_worker.settings import REPO_ROOT

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def api(comfyui_dir, tmp_path_factory):
    port = free_port_block(1)
    env = {**os.environ, **worker_env(comfyui_dir, tmp_path_factory.mktemp("api-work"), instances=1),
           "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
    process = subprocess.Popen(
        [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{url}/docs", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"the local API did not come up:\n{process.stdout.read()[-3000:]}", pytrace=False)
    yield url
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


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
