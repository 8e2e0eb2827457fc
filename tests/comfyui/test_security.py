"""Security on real instances: loopback-only listening, uploads that cannot leave the input folder, secrets that never
reach a log or an output (the worker's logs, ComfyUI's, and the RunPod SDK's through the local API), and output names
that are never host paths."""

from __future__ import annotations

import dataclasses
import io
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
from test_model_urls import ModelServer, digest_workflow
from workflows import invert, load_invert

from comfy_worker.settings import REPO_ROOT
from comfy_worker.url_guard import UrlGuard

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


# --- URLs into the worker's own network (issue 17) ------------------------------------------------------------------
@pytest.fixture
def default_url_guard(worker, monkeypatch):
    """The worker as deployed: ALLOW_PRIVATE_URLS unset (the test session lets 127.0.0.1 through)."""
    monkeypatch.setattr(worker, "settings", dataclasses.replace(worker.settings, url_guard=UrlGuard()))
    monkeypatch.setattr(worker.model_cache, "url_guard", UrlGuard())


def test_urls_into_the_workers_own_network_are_refused_by_default(worker, run, default_url_guard, secret_bucket):
    other = worker.fleet.instances[1]
    (other.dirs.input / "someone-elses.png").write_bytes(b"private")
    try:
        view = f"http://127.0.0.1:{other.spec.port}/view?filename=someone-elses.png&type=input"
        stolen = run(worker.handle(make_job(load_invert("in.png"), gpu=0, images=[{"name": "in.png", "image": view}])))
    finally:
        (other.dirs.input / "someone-elses.png").unlink()
    assert "was refused" in stolen["error"] and "loopback" in stolen["error"], stolen
    server = ModelServer()
    server.add("local.safetensors", 1000)
    try:
        url = f"{server.url}/files/local.safetensors"
        by_entry = run(worker.handle(make_job(digest_workflow("local.safetensors"),
                                              models=[{"url": url, "folder": "loras"}])))
        in_loader = run(worker.handle(make_job(digest_workflow(url))))
    finally:
        server.httpd.shutdown()
    for result in (by_entry, in_loader):
        assert f"downloading {url} was refused" in result["error"] and "ALLOW_PRIVATE_URLS" in result["error"]
    assert server.gets == {}
    upload = run(worker.handle(make_job(invert(), s3=secret_bucket, output_mode="s3")))
    assert upload["error"].startswith(f"'s3.endpoint_url' {secret_bucket['endpoint_url']} was refused"), upload


def test_credentials_in_urls_reach_no_log_line_and_no_error(worker, run, every_log_line):
    handler = next(h for h in logging.getLogger("comfy_worker").handlers if getattr(h, "_comfy_worker", False))
    printed = io.StringIO()
    stream = handler.setStream(printed)
    server = ModelServer()
    secrets = ("pw-" + uuid.uuid4().hex, "sig-" + uuid.uuid4().hex, "tok-" + uuid.uuid4().hex)
    query = f"X-Amz-Credential=AKIA%2F{secrets[2]}&X-Amz-Signature={secrets[1]}&token={secrets[2]}"
    base = server.url.replace("http://", f"http://user:{secrets[0]}@")
    try:
        results = [
            run(worker.handle(make_job(load_invert("in.png"),
                                       images=[{"name": "in.png", "image": f"{base}/files/none.png?{query}"}]))),
            run(worker.handle(make_job(digest_workflow("m.safetensors"), models=[
                {"url": f"{base}/files/none.safetensors?{query}", "folder": "loras", "name": "m.safetensors"}]))),
            run(worker.handle(make_job(digest_workflow(f"{base}/files/none.safetensors?{query}")))),
        ]
    finally:
        handler.setStream(stream)
        server.httpd.shutdown()
    assert all("HTTP 404" in r["error"] for r in results), results
    assert "X-Amz-Signature=REDACTED" in results[0]["error"] and "user:" not in results[0]["error"]
    text = json.dumps(results) + printed.getvalue() + "\n".join(every_log_line)
    assert "none.safetensors" in printed.getvalue()
    for secret in secrets:
        assert secret not in text


# --- names ComfyUI would refuse with HTTP 500 or 'not in list' (issue 17) -------------------------------------------
def test_names_comfyui_cannot_take_are_refused_before_upload_with_what_to_change(worker, run):
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
    cases = {
        "3d": "is a folder ComfyUI keeps in its input folder",
        "é" * 128 + ".png": "bytes in UTF-8, over the 255",
        "line\nbreak.png": "holds a control character",
        'quo"te.png': "double quote",
    }
    for name, message in cases.items():
        result = run(worker.handle(make_job(load_invert(name), images=[{"name": name, "image": png}])))
        assert message in result["error"], (name, result)
    folder = worker.fleet.instances[0].dirs.input / "made-by-a-node.png"
    folder.mkdir()
    try:
        result = run(worker.handle(make_job(load_invert(folder.name), gpu=0,
                                            images=[{"name": folder.name, "image": png}])))
    finally:
        folder.rmdir()
    assert "has the name of a folder in ComfyUI's input folder" in result["error"], result
    no_extension = run(worker.handle(make_job(digest_workflow("download"), models=[
        {"url": "https://example.invalid/download?id=7", "folder": "loras"}])))
    assert "does not end in .safetensors" in no_extension["error"] and "'download.safetensors'" in \
        no_extension["error"], no_extension
    in_loader = run(worker.handle(make_job(digest_workflow("https://example.invalid/download?id=7"))))
    assert "does not end in a model file name" in in_loader["error"], in_loader
