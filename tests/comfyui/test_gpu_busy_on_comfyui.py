"""GPU busy % in a job's answer, on the CPU instances (no NVML): the fields are there, and null."""

from __future__ import annotations

import pytest
from conftest import make_job
from workflows import invert

pytestmark = pytest.mark.comfyui


def test_a_job_on_a_cpu_instance_reports_gpu_busy_as_unknown(worker, run):
    result = run(worker.handle(make_job(invert(color=0x406080))))
    assert "error" not in result, result
    assert "gpu_busy_pct" in result["timings"] and result["timings"]["gpu_busy_pct"] is None
    assert result["timings"]["execution_ms"] > 0
    assert {m["instance"] for m in result["metrics"]} == {"cpu0", "cpu1"}
    for metrics in result["metrics"]:
        assert "gpu_busy_pct_60s" in metrics and metrics["gpu_busy_pct_60s"] is None
        assert "gpu_busy_pct_total" in metrics and metrics["gpu_busy_pct_total"] is None
    assert not worker.fleet.gpu_busy.sampling
