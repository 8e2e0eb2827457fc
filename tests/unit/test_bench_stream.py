"""The stream benchmark's pure parts: the busy figures from NVML samples, P8/P5b from the phases, and the report
(table, page section, timeline plot) from a results file with GPU samples, which a CPU dry run cannot produce."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from plans.stream import stream_summary  # noqa: E402
from probes import GpuSampler  # noqa: E402
from reports.stream import BEGIN, END, stream_entries, stream_plot, stream_table, write_stream_page  # noqa: E402
from runner import stream_details  # noqa: E402
from test_unit_gpu_busy import StandInNvml  # noqa: E402

from comfy_worker.fleet.gpu_busy import NvmlReader  # noqa: E402


def sampler_with(busy: dict[int, list[tuple[float, int]]]) -> GpuSampler:
    sampler = GpuSampler(gpus=[])
    sampler.busy = busy
    return sampler


def test_busy_figures_cover_only_the_window() -> None:
    sampler = sampler_with({0: [(99.0, 0), (100.0, 50), (100.5, 100), (101.0, 90), (102.5, 0)]})
    # each sample stands for the stretch before it: (100, 100.5] at 100 %, (100.5, 101] at 90 %
    assert sampler.busy_pct(0, 100.0, 101.0) == 95.0
    assert sampler.timeline(0, 100.0, 101.0) == [(0.0, 50), (0.5, 100), (1.0, 90)]
    record = sampler.busy_record(100.0, 101.0)
    assert record["busy_pct"] == {0: 95.0} and record["gpu_timeline"][0][-1] == (1.0, 90)
    assert sampler.busy_pct(1, 100.0, 101.0) is None and sampler.busy_pct(0, 200.0, 300.0) is None
    assert sampler.summary() == {0: {"util_pct": 48.0, "mem_used_mib_max": 0, "samples": 5}}


def test_without_nvml_the_sampler_samples_nothing_and_says_why() -> None:
    pytest.importorskip("pynvml")
    sampler = GpuSampler()
    if sampler.ok:
        pytest.skip("this machine has an NVIDIA driver")
    with sampler:
        pass
    assert sampler.busy == {} and sampler.summary() == {} and "NVML" in sampler.error
    assert sampler.busy_record(0, 1e12) == {"gpu_timeline": {}, "busy_pct": {},
                                            "sampler": {"method": "none", "error": sampler.error}}


class NvmlWithMemory(StandInNvml):
    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=1024 * 2**20, total=2**37)


def running_sampler(nvml: NvmlWithMemory, seconds: float) -> GpuSampler:
    sampler = GpuSampler(gpus=[])
    sampler.nvml, sampler._handles, sampler._reader, sampler.ok = nvml, {0: 0}, NvmlReader(nvml, [0]), True
    with sampler:
        time.sleep(seconds)
    return sampler


def test_the_bench_sampler_puts_the_drivers_samples_on_the_unix_clock() -> None:
    nvml = NvmlWithMemory(keeps_samples=True)
    now_us = int(time.time() * 1e6)
    nvml.kept = [(now_us - 5_000_000, 100), (now_us + 1000, 60), (now_us + 167_000, 80)]  # the first predates it
    sampler = running_sampler(nvml, 0.4)
    assert [busy for _, busy in sampler.busy[0]] == [60.0, 80.0] and sampler.method == "samples"
    assert sampler.busy[0][0][0] == pytest.approx(now_us / 1e6 + 0.001, abs=0.05)
    assert sampler.memory[0][0][1] == 1024


def test_a_gpu_without_samples_is_polled_at_20_hz() -> None:
    sampler = running_sampler(NvmlWithMemory(keeps_samples=False), 0.5)
    assert sampler.method == "utilization_rates" and {busy for _, busy in sampler.busy[0]} == {42.0}
    assert len(sampler.busy[0]) >= 5
    assert sampler.busy[0][0][0] == pytest.approx(time.time() - 0.5, abs=0.2)


def test_stream_details_place_each_job_on_its_instance() -> None:
    png = base64.b64encode(b"\x89PNG" + bytes(2000)).decode()

    def answer(instance: str, wait_ms: float, busy: float) -> dict:
        return {"instance": instance, "images": [{"type": "base64", "data": png}],
                "timings": {"queue_wait_ms": wait_ms, "delivery_ms": 3.0, "total_ms": 2000.0, "gpu_busy_pct": busy},
                "metrics": [{"instance": "gpu0", "gpu_busy_pct_60s": 71.5, "gpu_busy_pct_total": 60.0},
                            {"instance": "gpu0b", "gpu_busy_pct_60s": 70.0, "gpu_busy_pct_total": 59.0}]}

    done = [(0.0, 2.5, answer("gpu0b", 0.0, 90.0)), (0.01, 1.2, answer("gpu0", 0.0, 80.0)),
            (0.02, 3.0, answer("gpu0", 1200.0, 85.0)), (0.03, 3.1, {"error": "out of memory"})]
    sampler = sampler_with({0: [(1000.0 + t / 10, 90) for t in range(40)]})
    details = stream_details(done, sampler, 1000.0, 3.0)
    spans = details["job_spans"]
    assert [(s["instance"], s["ok"], s["done_s"]) for s in spans] == [
        ("gpu0", True, 1.2), ("gpu0b", True, 2.5), ("gpu0", True, 3.0), ("failed", False, 3.1)]
    assert spans[2]["started_s"] == 1.22 and spans[2]["png_bytes"] == 2004 and spans[2]["gpu_busy_pct"] == 85.0
    assert details["busy_pct"] == {0: 90.0} and len(details["gpu_timeline"][0]) == 31
    assert details["timings_ms_median"]["gpu_busy_pct"] == 85.0 and details["png_bytes_median"] == 2004
    assert details["worker_gpu_busy_pct"] == {"gpu0": {"60s": 71.5, "total": 60.0},
                                              "gpu0b": {"60s": 70.0, "total": 59.0}}


def phase(rate: float, busy: float | None, failed: int = 0, instances: int = 1) -> dict:
    spans = [{"instance": f"gpu0{'ab'[i % instances] if instances > 1 else ''}", "ok": i != 0 or not failed,
              "submitted_s": 0.0, "started_s": i * 1.0, "done_s": i * 1.0 + 1.4, "png_bytes": 1_500_000}
             for i in range(6)]
    return {"configuration": "x", "instances": sorted({s["instance"] for s in spans}), "images_per_min": rate,
            "jobs": 6, "ok": 6 - failed, "failed": failed, "busy_pct_stream": busy, "job_spans": spans,
            "gpu_timeline": {"0": [[t / 5, 60 + (t % 4) * 10] for t in range(40)]} if busy is not None else {},
            "phases_ms_median": {"save_ms": 210.0, "vae_decode_ms": 100.0, "sampling_ms": 690.0},
            "timings_ms_median": {"delivery_ms": 12.0}, "png_bytes_median": 1_500_000}


def results_with(phases: dict) -> dict:
    phases["stream_summary"] = stream_summary(phases, cpu=False)
    return {"phases": phases, "errors": ["s_w1_png1: skipped, 40 s left"], "date": "2026-12-03",
            "args": {"cpu": False, "stream_jobs": 6, "deadline": 330},
            "machine": {"gpus": ["NVIDIA H200"], "cpus": 16, "memory_mib": 131072}}


def test_p8_is_the_best_worker_phase_without_failures_over_vanilla() -> None:
    phases = {"s_vanilla": phase(20.0, 70.0), "s_w1": phase(50.0, 75.0), "s_w2_png1": phase(90.0, 95.0, failed=1),
              "s_w2": phase(80.0, 92.0, instances=2)}
    summary = stream_summary(phases, cpu=False)
    assert summary["best_phase"] == "s_w2" and summary["P8"] == 4.0 and summary["P5b"] == 92.0
    assert summary["ratio_to_vanilla"]["s_w1"] == 2.5


def test_without_vanilla_or_a_clean_phase_p8_is_none() -> None:
    assert stream_summary({"s_w1": phase(50.0, 75.0)}, cpu=False)["P8"] is None
    summary = stream_summary({"s_vanilla": phase(20.0, 70.0), "s_w1": phase(50.0, 75.0, failed=2)}, cpu=True)
    assert summary["best_phase"] is None and summary["P8"] is None and summary["P5b"] is None and summary["note"]


def test_the_report_of_a_gpu_run(tmp_path: Path) -> None:
    results = json.loads(json.dumps(results_with({"s_vanilla": phase(20.0, 70.0), "s_w1": phase(50.0, 75.0),
                                                  "s_w2": phase(80.0, 92.0, instances=2)})))  # as read from disk
    entries = stream_entries(results, "h200_stream.json")
    assert entries["P8"]["value"] == 4.0 and entries["P5b"]["value"] == 92.0
    assert entries["P8"]["machine"].startswith("1× NVIDIA H200") and entries["P8"]["date"] == "2026-12-03"
    assert "--plan stream --stream-jobs 6" in entries["P8"]["command"]
    table = stream_table(results)
    assert "| s_w2 | x | 2 | 80.0 | 4.0 | 92.0 | 6 / 0 | 210.0 | 100.0 | 690.0 | 12.0 | 1465 |" in table
    assert "Not measured (skipped or failed): s_w1_png1." in table
    plot = tmp_path / "stream_gpu_busy.png"
    pytest.importorskip("matplotlib")
    assert stream_plot(results, plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_keeps_hand_written_text_around_the_generated_section(tmp_path: Path) -> None:
    page = tmp_path / "stream.md"
    write_stream_page(page, "generated-one\n")
    assert page.read_text().startswith("# A stream of jobs") and f"{BEGIN}\ngenerated-one\n{END}" in page.read_text()
    page.write_text(page.read_text().replace("# A stream of jobs", "# Mine") + "\nFindings by hand.\n")
    write_stream_page(page, "generated-two\n")
    text = page.read_text()
    assert text.startswith("# Mine") and "generated-two" in text and "generated-one" not in text
    assert text.endswith("Findings by hand.\n")
