"""The video benchmark's table, goals and plot from its raw results (docs/benchmarks/raw/h200_video_*.json).

    python bench/video/report.py   (needs matplotlib: pip install -r bench/requirements.txt)
    python bench/video/report.py --stream RAW.json   (only the stream configurations' table of one results file)

Writes docs/benchmarks/video_wan14b.png and the V1–V6 entries of docs/benchmarks/summary.json; prints the table.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
RAW = DOCS / "raw"
PEAK_TFLOPS = 788.0  # bf16 matrix rate measured on these H200s (device notes)
CARDS = {"RTX 4090": 165.2, "L4": 121.0, "RTX A5000": 111.1}  # dense bf16 with fp32 accumulate, TFLOP/s (datasheets)
PCIE_GEN4_GB_PER_S = 25.0
MACHINE = "1× NVIDIA H200 (141 GB, 16 vCPU), torch 2.11.0+cu130, ComfyUI v0.29.0"
DATE = "2026-12-03"


COLD_START = "h200_wan14b_fastload_b.json"
FLUX = "h200_flux12b_1024.json"


def load(name: str) -> dict[str, Any]:
    return json.loads((RAW / name).read_text())


def steps(config: dict[str, Any]) -> float:
    return statistics.median(j["s_per_step"] for j in config["jobs"] if j.get("s_per_step"))


def stream_table(results: dict[str, Any]) -> str:
    """The stream configurations of one results file (video_bench.py's stream_summary) as a Markdown table."""
    summary = results.get("stream_summary") or {}
    unit = summary.get("unit") or "videos"
    lines = [f"| configuration | {unit}/hour | ratio to VS | GPU busy % | ok / jobs | wall s | jobs per instance |",
             "|---|---|---|---|---|---|---|"]
    for name, rate in summary.get("videos_per_hour", {}).items():
        config = results["configs"][name]
        busy = summary["busy_pct"].get(name)
        lines.append(f"| {name} | {rate} | {summary['ratio_to_VS'].get(name, '—')} | "
                     f"{'—' if busy is None else busy} | {config['ok']} / {config['stream_jobs']} | "
                     f"{config['wall_s']} | {config['per_instance']} |")
    lines.append(f"\nbest worker configuration: {summary.get('best_worker')}, "
                 f"{summary.get('best_worker_to_VS')} × VS" + (f" ({summary['note']})" if summary.get("note") else ""))
    return "\n".join(lines)


def flux_entries(entry) -> dict[str, Any]:
    """Flux.1-dev 12B at 1024², 20 steps (run I): s/step vanilla / worker over both jobs of each, fraction of peak,
    the cold job's submission → first step against the disk read, host RAM."""
    run = load(FLUX)
    tflop = json.loads((RAW / "i2v_flux_flops.json").read_text())["flux12b_1024x1024"]["tflop_per_step"]
    vanilla, ours, fp8 = (statistics.mean(j["s_per_step"] for j in run["configs"][name]["jobs"])
                          for name in ("V", "W", "WF8"))
    disk = run["disk_read"]["parallel_s"]
    cold_v, cold_w = (run["configs"][name]["jobs"][0]["to_first_step_s"] for name in ("V", "W"))
    ram_v, ram_w = (run["configs"][name]["memory_mib"]["Rss"] / 1024 for name in ("V", "W"))

    def peak(step: float) -> str:
        return f"{tflop / step / PEAK_TFLOPS:.1%}"

    return {
        "V flux12b": entry(round(vanilla / ours, 3), f"Flux.1-dev 12B 1024² 20 steps, s/step vanilla {vanilla:.4f} "
                           f"({peak(vanilla)} of {PEAK_TFLOPS:.0f} TFLOP/s) / worker {ours:.4f} ({peak(ours)}), mean "
                           f"of 2 jobs each; worker fp8_e4m3fn_fast {fp8:.4f} (lossy, slower: manual cast to bf16)",
                           "reported (issue 13: the 12B image model)", f"raw/{FLUX}"),
        "V flux12b cold": entry(round(cold_w / disk, 2), f"cold Flux job, submission → first step {cold_w:.1f} s / "
                                f"parallel read of its {run['disk_read']['bytes'] / 1e9:.1f} GB {disk:.1f} s; vanilla "
                                f"{cold_v:.1f} s ({cold_v / disk:.2f}); host RAM worker {ram_w:.1f} GiB, vanilla "
                                f"{ram_v:.1f} GiB", "reported (like V3)", f"raw/{FLUX}"),
    }


def main() -> None:
    if sys.argv[1:2] == ["--stream"]:
        print(stream_table(json.loads(Path(sys.argv[2]).read_text())))
        return
    a, b, v4 = load("h200_video_a.json"), load("h200_video_b.json"), load("h200_video_v4_24gib.json")
    flops = json.loads((RAW / "wan_flops.json").read_text())["wan14b_832x480x81"]
    tflop = flops["tflop_per_step"]
    vanilla, ours, fp8 = steps(a["configs"]["V"]), steps(b["configs"]["W"]), steps(a["configs"]["WF8"])
    card24 = steps(b["configs"]["W24"])
    profile = next(j["profile"] for j in b["configs"]["W24"]["jobs"] if j.get("profile"))
    streamed_gb = profile["h2d_bytes"] / 1e9
    efficiency = tflop / ours / PEAK_TFLOPS
    projections = {}
    for card, rate in CARDS.items():
        compute = tflop / (rate * efficiency)
        copy = streamed_gb / PCIE_GEN4_GB_PER_S
        projections[card] = {"compute_s": round(compute, 1), "copy_s": round(copy, 2),
                             "serial_ratio": round((compute + copy) / compute, 3)}
    cold = load(COLD_START)  # V, W (fast load), WNL (ComfyUI's loader) side by side on one fresh machine
    disk = cold["disk_read"]["parallel_s"]
    cold_v, cold_w, cold_wnl = (cold["configs"][name]["jobs"][0]["to_first_step_s"] for name in ("V", "W", "WNL"))
    v4_job = v4["configs"]["W24"]["jobs"][0]
    ram_w = b["configs"]["W"]["memory_mib"]["Rss"] / 1024
    ram_24 = b["configs"]["W24"]["memory_mib"]["Rss"] / 1024
    ram_24_file = load("h200_video_d_24gib_modes.json")["configs"]["W24F"]["memory_mib"]["Rss"] / 1024
    ram_v = a["configs"]["V"]["memory_mib"]["Rss"] / 1024
    command = "bash bench/video/run_video_on_device.sh …  (docs/benchmarks/video.md)"

    def entry(value: float, what: str, goal: str, source: str) -> dict[str, Any]:
        return {"value": value, "machine": MACHINE, "date": DATE, "source": source, "what": what, "goal": goal,
                "command": command}

    summary_path = DOCS / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.update({
        "V1": entry(round(vanilla / ours, 3), f"Wan 14B 832×480×81, s/step vanilla {vanilla:.3f} / worker {ours:.3f}, "
                    "lossless", "≥ 1.2", "raw/h200_video_a.json, raw/h200_video_b.json"),
        "V1fp8": entry(round(vanilla / fp8, 3), f"s/step vanilla {vanilla:.3f} / worker with the workflow's "
                       f"UNETLoader at fp8_e4m3fn_fast {fp8:.3f} (lossy opt-in)", "≥ 1.75", "raw/h200_video_a.json"),
        "V2": entry(projections["RTX 4090"]["serial_ratio"],
                    f"projected RTX 4090 step / its compute-only step, Wan 14B fp16 81 frames on 24 GiB: "
                    f"{streamed_gb:.1f} GB streamed per step (measured, H200 held to 24 GiB) at 25 GB/s = "
                    f"{projections['RTX 4090']['copy_s']} s, compute {projections['RTX 4090']['compute_s']} s "
                    f"({tflop:.0f} TFLOP at 165.2 TFLOP/s × {efficiency:.3f}), counted in series",
                    "≤ 1.1", "raw/h200_video_b.json, raw/wan_flops.json"),
        "V3": entry(round(cold_w / disk, 2), f"cold 14B job, submission → first step {cold_w:.1f} s (diffusion model "
                    f"by the fast load) / parallel read of its {cold['disk_read']['bytes'] / 1e9:.1f} GB {disk:.1f} s; "
                    f"in the same run vanilla {cold_v:.1f} s ({cold_v / disk:.2f}), the worker with ComfyUI's loader "
                    f"{cold_wnl:.1f} s ({cold_wnl / disk:.2f})", "≤ 1.1 and ≤ vanilla", f"raw/{COLD_START}"),
        "V4": entry(v4_job["wall_s"], f"seconds: the user's job shape (14B fp16, 832×480, 81 frames, 20 steps) end to "
                    f"end through the worker on an H200 held to 24 GiB: {v4_job['s_per_step']:.2f} s/step, "
                    "including a 13.4 s restart into dynamic VRAM mode; page cache warm", "reported",
                    "raw/h200_video_v4_24gib.json"),
        "V5": entry(round(ours, 3), f"s/step lossless ({efficiency:.1%} of {PEAK_TFLOPS:.0f} TFLOP/s); fp8 opt-in "
                    f"{fp8:.3f}", "≤ 5.0 (fp8 ≤ 3.5)", "raw/h200_video_b.json"),
        "V6": entry(round(ram_w, 2), f"GiB RSS of an instance holding the 14B, --highvram; on a 24 GiB card "
                    f"{ram_24_file:.1f} GiB (dynamic loading from the file, --fast-disk, the default), "
                    f"{ram_24:.1f} GiB with ComfyUI's own dynamic loading; vanilla {ram_v:.1f} GiB", "≤ 3",
                    "raw/h200_video_b.json, raw/h200_video_d_24gib_modes.json"),
    })
    summary.update(flux_entries(entry))
    summary_path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["vanilla", "worker", "worker fp8\n(lossy)", "worker,\n24 GiB card"]
    values = [vanilla, ours, fp8, card24]
    left.bar(names, values, color=["#999", "#2a7", "#d93", "#27a"])
    left.axhline(tflop / PEAK_TFLOPS, color="k", ls="--", lw=1)
    left.text(3.4, tflop / PEAK_TFLOPS + 0.1, f"bf16 limit {tflop / PEAK_TFLOPS:.2f} s", ha="right")
    left.set_ylabel("s per step")
    left.set_title("Wan 14B, 832×480, 81 frames (one H200)")
    for x, value in enumerate(values):
        left.text(x, value + 0.05, f"{value:.2f}", ha="center")
    right.barh(["disk read\n(8 readers)", "vanilla", "worker,\nComfyUI's loader", "worker,\nfast load"],
               [disk, cold_v, cold_wnl, cold_w], color=["#999", "#999", "#d93", "#2a7"])
    right.set_xlabel("s from submission to the first step (cold page cache)")
    right.set_title(f"cold job: {cold['disk_read']['bytes'] / 1e9:.1f} GB of model files (one run)")
    figure.tight_layout()
    figure.savefig(DOCS / "video_wan14b.png", dpi=110)
    print(json.dumps({k: summary[k]["value"] for k in ("V1", "V1fp8", "V2", "V3", "V4", "V5", "V6")}, indent=1))
    print(json.dumps(projections, indent=1), f"efficiency {efficiency:.3f}")


if __name__ == "__main__":
    main()
