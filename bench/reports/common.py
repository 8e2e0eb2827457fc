"""Where the raw results are, which file holds which run, and the goals the P-numbers are held to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
RAW = DOCS / "raw"
FLAGS = "h100_flags.json"
WARM = "h100_compile_warm_cache.json"
WORKER = "h200x2_worker.json"
P2_PROBE = "h100_p2_probe.json"
P2_COMPILED = "h100_p2_compiled.json"
SCALING = "h200x4_scaling.json"
STREAM = "h200_stream.json"  # bench.py --plan stream on 1× H200; absent until that run is made
REGRESS = "h200_regress.json"  # bench.py --plan regress on 1× H200; absent until that run is made
H200X4 = "4× NVIDIA H200 (64 vCPU, 512 GiB)"
H100 = "1× NVIDIA H100 80GB HBM3 (16 vCPU)"
H200 = "2× NVIDIA H200 (32 vCPU)"
DATES = {FLAGS: "2026-11-22", WARM: "2026-11-22", WORKER: "2026-11-22", P2_COMPILED: "2026-11-22",
         SCALING: "2026-11-22"}
GOALS = {
    "P1": "≥ 1.98",
    "P2": "≤ 1.01",
    "P3": "≤ 0.35",
    "P4": "≥ 3.0",
    "P5": "≥ 0.6",
    "P6": "≤ steady + 2 s",
    "P7": "≤ 20 s",
    "P7c": "≤ 30 s",
    "N4 throughput": "≥ 3.9",
    "N4 RAM": "≤ 0.35",
    "N4 5-minute run": "0 failures",
    "P8": "≥ 4.0",
    "P5b": "≥ 90",
}


def load(name: str) -> dict[str, Any]:
    return json.loads((RAW / name).read_text())



def entry(value: float, machine: str, source: str, what: str) -> dict[str, Any]:
    return {"value": value, "machine": machine, "date": DATES[source], "source": f"raw/{source}", "what": what}

