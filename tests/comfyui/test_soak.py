"""The soak of scripts/soak.py at its `make test` size: 1000 model-free jobs from 4 concurrent clients through
RunPod's local API onto 2 real CPU instances, every answer checked. The hour-long run is in docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import free_port_block

from comfy_worker.settings import REPO_ROOT

pytestmark = pytest.mark.comfyui


def test_a_thousand_concurrent_jobs_lose_nothing_and_hold_memory_and_disk(comfyui_dir, tmp_path):
    out = tmp_path / "soak.json"
    finished = subprocess.run(
        [sys.executable, "scripts/soak.py", "--jobs", "1000", "--clients", "4", "--instances", "2",
         "--port", str(free_port_block(1)), "--comfyui-dir", str(comfyui_dir), "--work", str(tmp_path / "work"),
         "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.exists(), finished.stdout[-2000:] + finished.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["jobs"] == 1000
    assert summary["lost"] == 0, summary["lost_examples"]
    assert summary["duplicated"] == 0 and summary["given_another_jobs_answer"] == 0
    assert summary["rss_growth"] < 0.10 and summary["instances_rss_growth"] < 0.10, summary["samples"]
    assert summary["disk_growth"] < 0.10, summary["samples"]
    assert min(summary["per_instance"].values()) >= 400, summary["per_instance"]  # balanced across both
    assert finished.returncode == 0
