"""Security on real instances: loopback-only listening, uploads that cannot leave the input folder, secrets that never
reach a log or an output (the worker's logs, ComfyUI's, and the RunPod SDK's through the local API), and output names
that are never host paths."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import requests
from conftest import free_port_block, make_job, worker_env
from workflows import invert, load_invert

from comfy_worker.settings import REPO_ROOT

pytestmark = pytest.mark.comfyui

SECRET_KEY = "sEcReT-" + uuid.uuid4().hex
API_KEY = "comfyui-" + uuid.uuid4().hex
KEY_ID = "KEYID" + uuid.uuid4().hex[:12].upper()


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp*) that listen on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as file:
            for line in file.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.rsplit(":", 1)
                if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def test_instances_listen_on_loopback_only(worker):
    for instance in worker.fleet.instances:
        addresses = listening_addresses(instance.spec.port)
        assert addresses, f"nothing listens on {instance.label}'s port"
        assert addresses <= {"0100007F", "00000000000000000000000001000000"}, addresses  # 127.0.0.1, ::1


def test_an_upload_name_cannot_leave_the_input_folder(worker, run, tmp_path):
    png = (REPO_ROOT / "test_input.json").read_text()  # any content: the name is refused before it is written
    for name in ("../escaped.png", "../../escaped.png", str(tmp_path / "escaped.png"), "sub/escaped.png"):
        result = run(worker.handle(make_job(load_invert(name), images=[{"name": name, "image": png[:64]}])))
        assert "must be a plain file name" in result["error"], result
    work = worker.settings.work_dir
    assert not list(work.rglob("escaped.png")) and not (tmp_path / "escaped.png").exists()


@pytest.fixture
def secret_bucket(s3_server):
    bucket = f"secret-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET_KEY,
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    return {"endpoint_url": s3_server, "access_key_id": KEY_ID, "secret_access_key": SECRET_KEY,
            "bucket": bucket, "region": "us-east-1"}


@pytest.fixture
def every_log_line():
    """Every record logged anywhere in this process at DEBUG and above, the worker's own included."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.name} {record.getMessage()}")

    handler, worker_logger = Keep(logging.DEBUG), logging.getLogger("comfy_worker")
    levels = (logging.root.level, worker_logger.level)
    for logger in (logging.root, worker_logger):
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield lines
    for logger, level in zip((logging.root, worker_logger), levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_secrets_never_reach_the_logs_or_the_outputs(worker, run, secret_bucket, every_log_line):
    jobs = [
        make_job(invert(), s3=secret_bucket, output_mode="s3", comfy_org_api_key=API_KEY),
        make_job(invert(), comfy_org_api_key=API_KEY),
        make_job({"1": {"class_type": "NoSuchNode", "inputs": {}}}, s3=secret_bucket, comfy_org_api_key=API_KEY),
        make_job(invert(), s3={**secret_bucket, "endpoint_url": "http://127.0.0.1:9"}, output_mode="s3",
                 comfy_org_api_key=API_KEY),  # an upload that fails: its error must not quote the keys either
    ]
    results = [run(worker.handle(job)) for job in jobs]
    assert "error" not in results[0] and results[0]["images"][0]["type"] == "s3_url"
    assert "error" in results[2] and "error" in results[3]
    time.sleep(0.5)  # the instances' log lines arrive through their pump threads
    outputs, logs = json.dumps(results), "\n".join(every_log_line)
    assert "comfy_worker.job" in logs and "comfy_worker.comfyui" in logs  # the worker's and ComfyUI's lines
    assert SECRET_KEY not in outputs and SECRET_KEY not in logs
    assert API_KEY not in outputs and API_KEY not in logs
    # the key ID is part of every SigV4 presigned URL by design, and of nothing else
    assert KEY_ID not in logs and KEY_ID not in json.dumps([r for r in results if "images" not in r])


def test_output_names_are_the_instances_never_host_paths(worker, run):
    result = run(worker.handle(make_job(invert())))
    text = json.dumps(result)
    for folder in {str(worker.settings.work_dir), str(worker.settings.comfyui_dir), str(Path.home())}:
        assert folder not in text
    assert all("/" not in image["filename"] for image in result["images"])
    failed = run(worker.handle(make_job(load_invert("missing.png"))))
    assert str(worker.settings.work_dir) not in failed["error"]


def test_the_runpod_sdk_logs_no_secret_through_the_local_api(comfyui_dir, tmp_path):
    port = free_port_block(1)
    env = {**os.environ, **worker_env(comfyui_dir, tmp_path / "work", instances=1),
           "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
    env.pop("RUNPOD_LOG_LEVEL", None)  # the worker's default applies
    log_path = tmp_path / "api.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_port", str(port), "--rp_api_host",
             "127.0.0.1"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/docs", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        body = {"input": {"workflow": invert(), "comfy_org_api_key": API_KEY,
                          "s3": {"endpoint_url": "http://127.0.0.1:9", "access_key_id": KEY_ID,
                                 "secret_access_key": SECRET_KEY, "bucket": "b"}}}
        answer = requests.post(f"{url}/runsync", json=body, timeout=120).json()
        assert answer["status"] in ("COMPLETED", "FAILED"), answer
    finally:
        process.terminate()
        process.wait(30)
    text = log_path.read_text()
    assert "runsync" in text or "Uvicorn" in text or "Started server" in text, text[-2000:]
    for secret in (SECRET_KEY, API_KEY, KEY_ID):
        assert secret not in text, f"{secret} in the local API's log"
    assert "iVBORw0KGgo" not in text, "the SDK logged a base64 image: RUNPOD_LOG_LEVEL is not applied"
