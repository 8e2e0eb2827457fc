"""Turns the benchmark's raw results (docs/benchmarks/raw/*.json, from bench/bench.py) into the P-numbers, the
tables and the plots of docs/benchmarks/.

    python bench/report.py            # needs matplotlib (bench/requirements.txt) for the plots
    python bench/report.py --stream RESULTS.json --out DIR   # only the stream run's section, P8/P5b and plot, in DIR
    python bench/report.py --regress RESULTS.json --out DIR  # only the regress run's regress.md and P2/P6, in DIR

Writes docs/benchmarks/summary.json, docs/benchmarks/tables.md, docs/benchmarks/stream.md (its generated section,
once raw/h200_stream.json exists), docs/benchmarks/regress.md (once raw/h200_regress.json exists: P2 and P6 are
then that run's) and docs/benchmarks/*.png.
The cold-start plan's results have their own writer: `python bench/reports/coldstart.py RESULTS.json` (coldstart.md,
P7 and P7c).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reports.coldstart import RAW_NAME as COLDSTART
from reports.coldstart import summary_entries as coldstart_entries
from reports.common import (
    DOCS,
    FLAGS,
    GOALS,
    H100,
    H200,
    P2_COMPILED,
    P2_PROBE,
    RAW,
    REGRESS,
    SCALING,
    STREAM,
    WARM,
    WORKER,
    entry,
    load,
)
from reports.plots import plots
from reports.regress import regress_entries, regress_page
from reports.scaling import scaling_entries, scaling_plot, scaling_table
from reports.stream import stream_entries, stream_plot, stream_table, write_stream_page
from reports.tables import tables


def main() -> None:
    flags, warm, worker = load(FLAGS), load(WARM), load(WORKER)
    probe, p2 = load(P2_PROBE)["phases"], load(P2_COMPILED)["phases"]["p2_compiled"]
    f, w = flags["phases"], worker["phases"]
    compiled = f["compile_reduce-overhead_cold_cache"]
    compiled_warm = warm["phases"]["compile_reduce-overhead_warm_cache"]
    sdxl_flops = flags["models"]["flops_per_step"]["sdxl_unet"]
    h200_compiled = w["w2_defaults_compiled"]
    w2, w1 = w["w2_pinned"], w["w1_sdxl"]

    summary = {
        "P1": entry(
            round(w2["sdxl"]["images_per_min"] / w2["sdxl_gpu0_only"]["images_per_min"], 3),
            H200,
            WORKER,
            "2-GPU worker / the same worker's GPU 0 alone, SDXL 1024², uncompiled defaults; against a "
            f"separate 1-GPU worker {w2['sdxl']['images_per_min'] / w1['images_per_min']:.2f}, compiled "
            f"{h200_compiled['sdxl']['images_per_min'] / h200_compiled['sdxl_gpu0_only']['images_per_min']:.2f}",
        ),
        "P2": entry(
            p2["ratio"],
            H100,
            P2_COMPILED,
            f"job through the worker / posted straight to the same instance, one at a time, alternating, 7 each, "
            f"our defaults (compiled after the warm-up): {p2['worker_median_s']} vs {p2['direct_median_s']} s. "
            f"Uncompiled jobs vary by ±20 % from job to job, so the uncompiled ratios are noise-bound: "
            f"{probe['p2_in_process']['ratio']} (H100), {w['w1_p2_sdxl']['ratio']} (H200), SD1.5 "
            f"{w['w1_p2_sd15']['ratio']} (H200)",
        ),
        "P3": entry(
            w["ram_high"]["p3_used"],
            H200,
            WORKER,
            f"host RAM (MemTotal − MemAvailable) added by a 2nd instance holding the SDXL models / their "
            f"{w['ram_high']['model_files_mib']} MiB of files, --highvram; ComfyUI's dynamic VRAM: "
            f"{w['ram_dynamic']['p3_used']}",
        ),
        "P4": entry(
            round(compiled["its_median"] / f["vanilla"]["its_median"], 2),
            H100,
            FLAGS,
            f"sampling it/s in one run, our defaults ({compiled['its_median']}) / ComfyUI defaults "
            f"({f['vanilla']['its_median']}); / best uncompiled configuration known before "
            f"({f['prior_best']['its_median']}): {compiled['its_median'] / f['prior_best']['its_median']:.2f}",
        ),
        "P5": entry(
            round(h200_compiled["sdxl"]["its_median"] * sdxl_flops / 1e12 / worker["phases"]["peak"]["bf16_tflops"], 3),
            H200,
            WORKER,
            f"{h200_compiled['sdxl']['its_median']} it/s × {sdxl_flops / 1e12:.2f} TFLOP per step (UNet, CFG batch "
            f"2, 1024², FlopCounterMode) / measured bf16 peak {worker['phases']['peak']['bf16_tflops']} TFLOP/s; "
            f"H100: {compiled_warm['its_median'] * sdxl_flops / 1e12 / warm['phases']['peak']['bf16_tflops']:.2f}",
        ),
        "P6": entry(
            round(h200_compiled["first_jobs"]["exec_s_median"] - h200_compiled["sdxl"]["exec_s_median"], 3),
            H200,
            WORKER,
            f"seconds: first job after the warm-up ({h200_compiled['first_jobs']['exec_s_median']} s) − steady job "
            f"({h200_compiled['sdxl']['exec_s_median']} s), compiled; without a warm-up the first job on a warm "
            f"compile cache took {compiled_warm['first_job_s']} s (H100), on a cold one {compiled['first_job_s']} s",
        ),
        "P7": entry(
            w["w1_cold_start"]["start_s"],
            H200,
            WORKER,
            f"seconds from start to every instance answering: 1 instance {w['w1_cold_start']['start_s']} s, "
            f"2 instances {w2['startup']['instances_ready']} s; with the warm-up {w2['start_s']} s "
            f"(uncompiled), {h200_compiled['start_s']} s (compiling on a cold cache)",
        ),
    }
    summary.update(scaling_entries(load(SCALING)["phases"]))
    if (RAW / STREAM).exists():
        stream = load(STREAM)
        summary.update(stream_entries(stream, STREAM))
        write_stream_page(DOCS / "stream.md", stream_table(stream))
        stream_plot(stream, DOCS / "stream_gpu_busy.png")
    else:
        print(f"raw/{STREAM} absent: P8, P5b and stream.md not generated")
    if (RAW / COLDSTART).exists():  # P7 and P7c from the cold-start run (bench/reports/coldstart.py)
        summary.update(coldstart_entries(load(COLDSTART), COLDSTART))
    if (RAW / REGRESS).exists():  # P2 and P6 from the regression run, where it measured them comparably
        regress = load(REGRESS)
        summary.update(regress_entries(regress, REGRESS))
        (DOCS / "regress.md").write_text(regress_page(regress, REGRESS))
    else:
        print(f"raw/{REGRESS} absent: regress.md not generated")
    for key, value in summary.items():
        value["goal"] = GOALS[key]
    kept = json.loads((DOCS / "summary.json").read_text()) if (DOCS / "summary.json").exists() else {}
    kept.update(summary)  # the entries other reports own (bench/video/report.py: V1–V6) stay
    (DOCS / "summary.json").write_text(json.dumps(kept, indent=1, ensure_ascii=False) + "\n")
    (DOCS / "tables.md").write_text(tables(flags, warm, worker, summary) + scaling_table(load(SCALING)["phases"]))
    plots(flags, warm, worker)
    scaling_plot(load(SCALING)["phases"])
    print(json.dumps({k: v["value"] for k, v in summary.items()}))


def summary_into(out: Path, entries: dict) -> dict:
    """A run's summary entries with their goals, written to out/summary.json (a run reported on its own)."""
    out.mkdir(parents=True, exist_ok=True)
    for key, value in entries.items():
        value["goal"] = GOALS[key]
    (out / "summary.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
    return entries


def stream_only(results_path: Path, out: Path) -> None:
    """The stream run's outputs from any results.json (a dry run's too) into `out`, never into docs/."""
    results = json.loads(results_path.read_text())
    entries = summary_into(out, stream_entries(results, results_path.name))
    write_stream_page(out / "stream.md", stream_table(results))
    drawn = stream_plot(results, out / "stream_gpu_busy.png")
    print(json.dumps({"P8": entries["P8"]["value"], "P5b": entries["P5b"]["value"], "plot": drawn, "out": str(out)}))


def regress_only(results_path: Path, out: Path) -> None:
    """The regress run's page and its P2/P6 entries from any results.json (a dry run's too) into `out`, never into
    docs/."""
    results = json.loads(results_path.read_text())
    entries = summary_into(out, regress_entries(results, results_path.name))
    (out / "regress.md").write_text(regress_page(results, results_path.name))
    print(json.dumps({"entries": {key: value["value"] for key, value in entries.items()}, "out": str(out)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", type=Path, help="a stream plan's results.json: report only it, into --out")
    parser.add_argument("--regress", type=Path, help="a regress plan's results.json: report only it, into --out")
    parser.add_argument("--out", type=Path, help="where --stream or --regress writes (not docs/benchmarks/)")
    arguments = parser.parse_args()
    if (arguments.stream or arguments.regress) and (not arguments.out or arguments.out.resolve() == DOCS):
        parser.error("--stream and --regress need --out, a folder other than docs/benchmarks/")
    if arguments.stream:
        stream_only(arguments.stream, arguments.out)
    elif arguments.regress:
        regress_only(arguments.regress, arguments.out)
    else:
        main()
