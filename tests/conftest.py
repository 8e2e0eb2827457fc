"""Fixtures: the pinned ComfyUI as two real CPU instances behind one Worker, and a real S3 server (moto)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cpu_worker_env import free_port_block, worker_env

from comfy_worker.fleet.gpus import Gpu
from comfy_worker.logs import configure
from comfy_worker.settings import Settings, load_settings
from comfy_worker.worker import Worker

TESTS = Path(__file__).resolve().parent
REPO_ROOT_FOR_TESTS = TESTS.parent
CUSTOM_NODES = TESTS / "custom_nodes"


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    directory = load_settings().comfyui_dir
    if not (directory / "main.py").is_file():
        pytest.fail(
            f"ComfyUI v0.29.0 is not installed at {directory}: run `make test`, which installs it "
            "(where GitHub cannot be reached, give its source: COMFYUI_SRC=/path/to/ComfyUI-v0.29.0 make test)",
            pytrace=False,
        )
    return directory


@pytest.fixture(scope="session")
def run() -> Iterator[Callable[..., Any]]:
    """Runs a coroutine on one event loop shared by the session, as RunPod's worker does."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture(scope="session")
def worker(comfyui_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    configure("INFO")
    settings = load_settings(worker_env(comfyui_dir, tmp_path_factory.mktemp("work"), instances=2))
    worker = started_worker(settings, [], "the ComfyUI instances")
    yield worker
    worker.stop()


def started_worker(settings: Settings, gpus: list[Gpu], what: str) -> Worker:
    """A started worker; the test fails, naming `what`, when its instances do not start."""
    worker = Worker(settings, gpus=gpus)
    worker.start()
    if worker.startup_error:
        worker.stop()
        pytest.fail(f"{what} did not start: {worker.startup_error}", pytrace=False)
    return worker


def make_job(workflow: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": f"test-{uuid.uuid4().hex[:8]}", "input": {"workflow": workflow, **fields}}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port_block(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def shared_instances_serving(request: pytest.FixtureRequest) -> None:
    """A test that uses the shared worker starts with every instance serving: a test before it may have killed one
    (faults, paid retries), and its restart takes seconds on CPU. Waits up to 3 minutes, then fails with the states."""
    if "worker" not in request.fixturenames:
        return
    shared = request.getfixturevalue("worker")
    deadline = time.monotonic() + 180
    while not all(i.healthy and i.is_alive() for i in shared.fleet.instances):
        if time.monotonic() > deadline:
            states = ", ".join(f"{i.label} healthy={i.healthy} alive={i.is_alive()}" for i in shared.fleet.instances)
            pytest.fail(f"the shared instances did not all come back: {states}")
        time.sleep(0.25)


@contextlib.contextmanager
def trickling_server(announced_bytes: int, path: str = "") -> Iterator[str]:
    """A real HTTP server on loopback that announces `announced_bytes` and sends one every 0.1 s (a stalled CDN, a
    slow-loris source): no read ever waits long, so only a deadline checked inside the read stops it."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(announced_bytes))
            self.end_headers()
            try:
                for _ in range(announced_bytes):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}"
    finally:
        server.shutdown()


@contextlib.contextmanager
def local_api(comfyui_dir: Path, work_dir: Path, **extra: str) -> Iterator[str]:
    """`python handler.py --rp_serve_api` on a free loopback port with one CPU instance: RunPod's local API in front
    of the worker, as a subprocess. Yields its URL."""
    port = free_port_block(1)
    env = {**os.environ, **worker_env(comfyui_dir, work_dir, instances=1, **extra),
           "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
    process = subprocess.Popen(
        [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"],
        cwd=REPO_ROOT_FOR_TESTS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_until(condition, timeout_s: float) -> bool:
    """Polls `condition` until it holds or `timeout_s` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()
