"""The regress benchmark's pure parts: P6 from the job rounds, the summary of the phases (P2, P6, memory per process,
which phases ran), and the report: regress.md and the P2/P6 entries of summary.json, taken only from a GPU run whose
jobs of the defaults' configuration all ran compiled on the instance the direct jobs went to."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from plans.regress import p6, regress_summary  # noqa: E402
from reports.regress import defaults_phase, regress_entries, regress_page, why_not_comparable  # noqa: E402


def jobs_round(exec_s: float, jobs: int, compiled: int | None = None, ok: int | None = None) -> dict[str, Any]:
    """What Bench.through_worker records, the fields P6 reads."""
    return {"jobs": jobs, "ok": jobs if ok is None else ok, "exec_s_median": exec_s,
            "compiled_jobs": jobs if compiled is None else compiled,
            "per_instance": {f"gpu0{'ab'[i] if jobs > 1 else ''}": 1 for i in range(jobs)}}


def worker_phase(labels: list[str], worker_s: list[float], direct_s: list[float], rss: int, used: int,
                 first_exec: float, steady_exec: list[float], auto: int = 2, p2_on: str | None = None,
                 compiled: bool = True) -> dict[str, Any]:
    count = len(labels)
    first = jobs_round(first_exec, count, None if compiled else 0)
    steady = [jobs_round(s, count) for s in steady_exec]
    ratio = round(sorted(worker_s)[len(worker_s) // 2] / sorted(direct_s)[len(direct_s) // 2], 4)
    return {
        "configuration": f"the worker's defaults, COMFY_NUM_GPUS=1 INSTANCES_PER_GPU={count}, the jobs' workflow as "
                         "WARMUP_WORKFLOW",
        "instances": labels, "auto_would_run": {"instances": auto, "reason": "two fit"},
        "first": first, "steady": steady, "p6": p6(first, steady),
        "p2": {"worker_s": worker_s, "direct_s": direct_s, "ratio": ratio, "direct_instance": labels[0],
               "worker_median_s": sorted(worker_s)[len(worker_s) // 2],
               "direct_median_s": sorted(direct_s)[len(direct_s) // 2],
               "worker_jobs": [{"instance": p2_on or labels[0], "compiled": compiled} for _ in worker_s]},
        "memory": {"meminfo": {"Used": used},
                   "processes": {**{label: {"Rss": rss, "Pss": rss - 300} for label in labels},
                                 "worker": {"Rss": 900, "Pss": 850}},
                   "vram": {label: {"torch_reserved_mib": 9000, "torch_active_mib": 7000} for label in labels},
                   "gpu_used_mib": {0: 10_000 * count}},
    }


def gpu_results(twins: dict[str, Any] | None = None, one: dict[str, Any] | None = None, cpu: bool = False,
                errors: list[str] | None = None) -> dict[str, Any]:
    phases: dict[str, Any] = {"prime": {"seconds": 140.2, "artifact_bytes": 49_000_000}}
    if twins is None:
        twins = worker_phase(["gpu0", "gpu0b"], [1.02, 1.0, 1.01], [1.0, 0.99, 1.0], 2300, 30_000, 1.9, [1.88, 1.89])
    if twins:
        phases["twins"] = twins
    if one is None:
        one = worker_phase(["gpu0"], [0.99, 1.0, 0.98], [0.98, 0.97, 0.99], 2200, 28_000, 0.99, [0.98, 0.97])
    if one:
        phases["one"] = one
    phases["regress_summary"] = regress_summary(phases, "", cpu)
    return {"plan": "regress", "args": {"cpu": cpu, "phases": ""}, "date": "2026-12-04", "phases": phases,
            "errors": errors or [], "command": "bench/bench.py --plan regress --deadline 480",
            "machine": {"gpus": [] if cpu else ["NVIDIA H200"], "cpus": 16, "memory_mib": 131072}}


def test_p6_is_the_first_jobs_exec_minus_the_steady_rounds_median() -> None:
    first, steady = jobs_round(1.25, 2), [jobs_round(1.0, 2), jobs_round(1.1, 2), jobs_round(0.95, 2)]
    assert p6(first, steady) == {"first_exec_s": 1.25, "steady_exec_s": 1.0, "value_s": 0.25, "all_compiled": True,
                                 "all_ok": True, "first_per_instance": {"gpu0a": 1, "gpu0b": 1}}
    assert not p6(jobs_round(1.25, 2, compiled=1), steady)["all_compiled"]
    assert not p6(first, [*steady, jobs_round(1.0, 2, ok=1)])["all_ok"]
    assert p6(jobs_round(None, 2), steady)["value_s"] is None  # type: ignore[arg-type]


def test_the_summary_gives_each_configuration_and_what_the_twin_adds() -> None:
    summary = gpu_results()["phases"]["regress_summary"]
    assert summary["ran"] == ["prime", "twins", "one"] and summary["not_run"] == [] and summary["note"] is None
    twins = summary["twins"]
    assert twins["instances"] == 2 and twins["P2"] == 1.01 and twins["P6_s"] == 0.015
    assert twins["p2_same_instance"] and twins["p2_compiled"] and twins["p6_compiled"] and twins["jobs_ok"]
    assert twins["rss_mib"] == {"gpu0": 2300, "gpu0b": 2300, "worker": 900}
    assert twins["pss_mib"]["gpu0b"] == 2000 and twins["torch_reserved_mib"] == {"gpu0": 9000, "gpu0b": 9000}
    assert summary["one"]["P2"] == round(0.99 / 0.98, 4) and summary["one"]["gpu_used_mib"] == 10_000
    assert summary["host_used_added_by_twin_mib"] == 2000 and summary["gpu_used_added_by_twin_mib"] == 10_000


def test_a_phase_the_deadline_skipped_is_named_and_nothing_is_made_up_for_it() -> None:
    results = gpu_results(one={}, errors=["one: skipped, 40 s left"])
    summary = results["phases"]["regress_summary"]
    assert summary["ran"] == ["prime", "twins"] and summary["not_run"] == ["one"]
    assert "one" not in summary and "host_used_added_by_twin_mib" not in summary
    page = regress_page(results, "h200_regress.json")
    assert "| one | not run |" in page and "not run: one" in page and "- one: skipped, 40 s left" in page
    entries = regress_entries(results, "h200_regress.json")
    assert entries["P2"]["value"] == 1.01 and "with 1 instance" not in entries["P2"]["what"]
    only_twins = regress_summary({"twins": results["phases"]["twins"]}, "twins", False)
    assert only_twins["prime"] == "not asked (--phases)" and only_twins["not_run"] == []
    del results["phases"]["prime"]
    assert "Artefact: none: the prime phase was not asked." in regress_page(results, "h200_regress.json")
    results["artifacts_before"] = ["nvidia-h200/0123abcd.megacache"]
    assert "Artefact: on disk before the run (nvidia-h200/0123abcd.megacache)." in regress_page(results, "x.json")


def test_p2_and_p6_entries_come_from_the_defaults_configuration_of_a_gpu_run() -> None:
    results = gpu_results()
    assert defaults_phase(results) == "twins" and why_not_comparable(results, "twins") is None
    entries = regress_entries(results, "h200_regress.json")
    assert set(entries) == {"P2", "P6"}
    assert entries["P2"]["value"] == 1.01 and entries["P6"]["value"] == 0.015
    for entry in entries.values():
        assert entry["machine"] == "1× NVIDIA H200 (16 vCPU, 128 GiB)" and entry["date"] == "2026-12-04"
        assert entry["source"] == "raw/h200_regress.json"
        assert entry["command"].startswith("bench/bench.py --plan regress")
    assert "one at a time, alternating, 3 each, our defaults (2 instances" in entries["P2"]["what"]
    assert "1.01 vs 1.0 s; with 1 instance(s) 1.0102" in entries["P2"]["what"]
    p6_what = entries["P6"]["what"]
    assert "first job after the warm-up (1.9 s, one per instance at once) − steady job (1.885 s)" in p6_what
    # where auto runs one instance on the card, the defaults are the one-instance phase
    single = gpu_results()
    for name in ("twins", "one"):
        single["phases"][name]["auto_would_run"]["instances"] = 1
    assert defaults_phase(single) == "one" and regress_entries(single, "x.json")["P2"]["value"] == round(0.99 / 0.98, 4)


@pytest.mark.parametrize(("change", "reason"), [
    ("cpu", "a CPU dry run"),
    ("uncompiled", "P2's worker jobs did not all run compiled"),
    ("other_instance", "P2's worker jobs ran on another instance than the direct"),
    ("no_twins", "the defaults' phase (twins) did not run"),
])
def test_no_p2_or_p6_entry_from_a_run_that_did_not_measure_them_as_defined(change: str, reason: str) -> None:
    twins = {"uncompiled": worker_phase(["gpu0", "gpu0b"], [1.6], [1.5], 2300, 30_000, 1.6, [1.5], compiled=False),
             "other_instance": worker_phase(["gpu0", "gpu0b"], [1.0], [1.0], 2300, 30_000, 1.0, [1.0], p2_on="gpu0b"),
             "no_twins": {}}.get(change)
    results = gpu_results(twins=copy.deepcopy(twins) if twins is not None else None, cpu=change == "cpu")
    assert reason in (why_not_comparable(results, defaults_phase(results) or "twins") or "")
    assert regress_entries(results, "h200_regress.json") == {}
    assert f"not taken from this run: {reason}" in regress_page(results, "h200_regress.json")


def test_the_page_holds_each_configurations_row() -> None:
    page = regress_page(gpu_results(), "h200_regress.json")
    assert page.startswith("<!-- generated by bench/report.py from raw/h200_regress.json")
    assert ("| the worker's defaults, COMFY_NUM_GPUS=1 INSTANCES_PER_GPU=2, the jobs' workflow as WARMUP_WORKFLOW | "
            "2 | **1.01** | 1.01 / 1.0 | **0.015** | 1.9 / 1.885 | yes | 2300 / 2000, 2300 / 2000 | 900 / 850 | "
            "30000 | 9000, 9000 | 20000 |") in page
    assert "adds 2000 MiB of host RAM" in page and "and 10000 MiB on the GPU" in page
    assert "`INSTANCES_PER_GPU=auto` runs 2 instance(s) here: two fit." in page
    assert "summary.json's P2 and P6: from `twins`." in page and "made by the prime phase in 140.2 s" in page


def test_report_writes_a_results_files_page_and_entries_into_another_folder_only(tmp_path: Path) -> None:
    raw = tmp_path / "results.json"
    raw.write_text(json.dumps(gpu_results()))
    report = [sys.executable, str(BENCH / "report.py"), "--regress", str(raw)]
    out = subprocess.run([*report, "--out", str(tmp_path / "out")], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["entries"] == {"P2": 1.01, "P6": 0.015}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["P2"]["goal"] == "≤ 1.01" and summary["P6"]["goal"] == "≤ steady + 2 s"
    assert "| **1.01** |" in (tmp_path / "out" / "regress.md").read_text()
    refused = subprocess.run(report, capture_output=True, text=True)
    assert refused.returncode == 2 and "need --out" in refused.stderr
