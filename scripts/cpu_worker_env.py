"""The environment of a worker with CPU instances on free loopback ports, with the test nodes of tests/custom_nodes:
shared by the tests (tests/conftest.py) and the soak script (scripts/soak.py)."""

from __future__ import annotations

import socket
from pathlib import Path

CUSTOM_NODES = Path(__file__).resolve().parents[1] / "tests" / "custom_nodes"


def free_port_block(count: int) -> int:
    """The first port of `count` consecutive free loopback ports."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65000:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no block of free ports")


def worker_env(comfyui_dir: Path, work_dir: Path, instances: int, **extra: str) -> dict[str, str]:
    return {
        "COMFYUI_DIR": str(comfyui_dir),
        "COMFY_WORK_DIR": str(work_dir),
        "COMFY_NUM_GPUS": "0",
        "COMFY_CPU_INSTANCES": str(instances),
        "COMFY_BASE_PORT": str(free_port_block(instances)),
        "COMFY_CUSTOM_NODES_DIRS": str(CUSTOM_NODES),
        "WEBSOCKET_QUIET_S": "1",
        "COMFY_START_TIMEOUT_S": "180",
        "ALLOW_PRIVATE_URLS": "127.0.0.1",  # the tests' own HTTP and S3 servers; test_url_guard.py checks the default
        **extra,
    }
