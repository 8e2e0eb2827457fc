"""The scaling run (N instances on one machine): its summary entries, its table and its plot."""

from __future__ import annotations

from typing import Any

from reports.common import (
    DOCS,
    H200X4,
    SCALING,
    entry,
)


def scaling_entries(s: dict) -> dict[str, Any]:
    summary, soak = s["scaling_summary"], s["soak_4"]
    rates = summary["images_per_min"]
    return {
        "N4 throughput": entry(
            summary["ratio_to_one"]["4"], H200X4, SCALING,
            f"images/min of a 4-GPU worker / a 1-GPU worker, SDXL 1024² uncompiled, {s['scale_1']['jobs']} and "
            f"{s['scale_4']['jobs']} concurrent jobs: {rates['4']} vs {rates['1']}; 2 GPUs: "
            f"{summary['ratio_to_one']['2']}",
        ),
        "N4 RAM": entry(
            summary["ram_per_extra_instance_over_model"]["4"], H200X4, SCALING,
            f"host RAM (MemTotal − MemAvailable) added per extra instance, 1 → 4 instances: "
            f"{summary['ram_per_extra_instance_mib']['4']} MiB / {s['scaling_baseline']['model_files_mib']} MiB of "
            f"SDXL model files (1 → 2: {summary['ram_per_extra_instance_over_model']['2']})",
        ),
        "N4 5-minute run": entry(
            soak["failures"], H200X4, SCALING,
            f"failures among {soak['jobs']} jobs from {soak['clients']} concurrent callers over {soak['seconds']} s, "
            f"each answer checked (one 1024² PNG, no answer shared): {soak['images_per_min']} images/min, per GPU "
            f"{dict(sorted(soak['per_instance'].items()))}",
        ),
    }


def scaling_table(s: dict) -> str:
    summary, soak = s["scaling_summary"], s["soak_4"]
    lines = [
        "",
        f"## 1, 2 and 4 GPUs on {H200X4}: a new worker for each count, SDXL 1024² uncompiled",
        "",
        "| GPUs | jobs | images/min | × 1 GPU | jobs per GPU | it/s | s/job exec | GPU busy | host RAM added (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for count in ("1", "2", "4"):
        row = s[f"scale_{count}"]
        busy = ", ".join(f"{v['util_pct']}%" for _, v in sorted(row["gpu"].items()) if v["util_pct"] > 0)
        lines.append(
            f"| {count} | {row['jobs']} | {row['images_per_min']} | {summary['ratio_to_one'][count]} | "
            f"{list(row['per_instance'].values())} | {row['its_median']} | {row['exec_s_median']} | {busy} | "
            f"{row['host_used_added_mib']} |"
        )
    first, last = soak["memory"][0], soak["memory"][-1]
    lines += [
        "",
        f"5-minute run on the 4-GPU worker ({soak['clients']} callers, ComfyUI's default RAM cache, which was also "
        "the worker's default then): "
        f"{soak['jobs']} jobs, {soak['failures']} failures, {soak['images_per_min']} images/min, per GPU "
        f"{dict(sorted(soak['per_instance'].items()))}, job median {soak['job_s_median']} s, "
        f"max {soak['job_s_max']} s. "
        f"Host RAM used grew from {first['used_mib']} to {last['used_mib']} MiB and each instance's RSS from "
        f"{min(first['instances_rss_mib'].values())} to {max(last['instances_rss_mib'].values())} MiB: "
        f"{(last['used_mib'] - first['used_mib']) / soak['jobs']:.1f} MiB per job, which ComfyUI's RAM-pressure cache "
        "keeps (every job's node outputs) until free RAM falls below its threshold. `COMFY_CACHE=classic` is the "
        "default since.",
        "",
    ]
    return "\n".join(lines)


def scaling_plot(s: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    summary, soak = s["scaling_summary"], s["soak_4"]
    counts = [int(n) for n in summary["images_per_min"]]
    rates = list(summary["images_per_min"].values())
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(counts, rates, "o-", color="#2a7", label="measured")
    left.plot(counts, [rates[0] * n for n in counts], ":", color="#555", label="ideal (N × 1 GPU)")
    for n, rate in zip(counts, rates, strict=True):
        left.annotate(f"{rate:.0f} ({rate / rates[0]:.2f}×)", (n, rate), textcoords="offset points", xytext=(6, -12))
    left.set_xticks(counts)
    left.set_xlabel("GPUs (one worker each)")
    left.set_ylabel("SDXL 1024² images/min")
    left.set_title("Throughput, uncompiled")
    left.legend()
    times = [m["t_s"] for m in soak["memory"]]
    right.plot(times, [m["used_mib"] / 1024 for m in soak["memory"]], color="#c44", label="host RAM used")
    right.plot(times, [sum(m["instances_rss_mib"].values()) / 1024 for m in soak["memory"]], "--", color="#c44",
               label="4 instances' RSS")
    right.set_xlabel(f"seconds of the 5-minute run ({soak['jobs']} jobs, 0 failures)")
    right.set_ylabel("GiB")
    per_job = (soak["memory"][-1]["used_mib"] - soak["memory"][0]["used_mib"]) / soak["jobs"]
    right.set_title(f"ComfyUI's RAM cache: {per_job:.1f} MiB kept per job")
    right.legend()
    figure.suptitle(H200X4)
    figure.tight_layout()
    figure.savefig(DOCS / "scaling_h200x4.png", dpi=110)
