"""The plots of docs/benchmarks/ (matplotlib)."""

from __future__ import annotations

from reports.common import (
    DOCS,
    H100,
    H200,
)


def plots(flags: dict, warm: dict, worker: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: plots not redrawn (pip install -r bench/requirements.txt)")
        return
    f, w = flags["phases"], worker["phases"]
    names = [
        "ComfyUI\ndefaults",
        "async alloc\n+highvram",
        "best known\nbefore",
        "+ TF32",
        "unpinned",
        "ours\n(compiled)",
    ]
    values = [
        f["vanilla"]["its_median"],
        f["async_allocator"]["its_median"],
        f["prior_best"]["its_median"],
        f["switch_tf32"]["its_median"],
        f["unpinned"]["its_median"],
        f["compile_reduce-overhead_cold_cache"]["its_median"],
    ]
    figure, axis = plt.subplots(figsize=(8, 3.6))
    bars = axis.bar(names, values, color=["#999"] * 5 + ["#2a7"])
    axis.bar_label(bars, fmt="%.1f")
    axis.set_ylabel("SDXL 1024² sampling it/s")
    axis.set_title(f"One GPU ({H100}), one run")
    figure.tight_layout()
    figure.savefig(DOCS / "its_by_configuration.png", dpi=110)

    figure, axis = plt.subplots(figsize=(6, 3.8))
    for label, one, two, colour in (
        ("uncompiled, pinned", w["w2_pinned"]["sdxl_gpu0_only"], w["w2_pinned"]["sdxl"], "#47a"),
        ("defaults (compiled)", w["w2_defaults_compiled"]["sdxl_gpu0_only"], w["w2_defaults_compiled"]["sdxl"], "#2a7"),
        ("unpinned", None, w["w2_unpinned"]["sdxl"], "#c44"),
    ):
        if one:
            axis.plot([1, 2], [one["images_per_min"], two["images_per_min"]], "o-", color=colour, label=label)
            axis.plot([1, 2], [one["images_per_min"], 2 * one["images_per_min"]], ":", color=colour, alpha=0.6)
        else:
            axis.plot([2], [two["images_per_min"]], "x", color=colour, markersize=9, label=label)
    axis.set_xticks([1, 2])
    axis.set_xlabel("GPUs (dotted: ideal N×)")
    axis.set_ylabel("SDXL images/min through the worker")
    axis.set_title(H200)
    axis.legend()
    figure.tight_layout()
    figure.savefig(DOCS / "throughput_vs_gpus.png", dpi=110)

