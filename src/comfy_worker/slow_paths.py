"""Warnings for the slow paths the user once found by hand in the logs, each with its numbers and one line of
advice: a model loaded partially or staged lazily on a GPU with room for it, a low-VRAM or GGUF loader on a
large card, model loading dominating the job."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

LARGE_CARD_MIB = 24 * 1024
LOAD_SHARE_WARNING = 0.5
LOAD_WARNING_MIN_MS = 2000
PARTIAL_LOAD = re.compile(r"loaded partially;.*?([\d.]+) MB loaded, ([\d.]+) MB offloaded")
DYNAMIC_STAGING = re.compile(r"Model (\w+) prepared for dynamic VRAM loading\. (\d+)MB Staged")
SLOW_LOADER = re.compile(r"gguf|lowvram", re.IGNORECASE)


def slow_path_warnings(
    log_lines: Iterable[str], workflow: Mapping[str, Any], vram_mib: int | None, phases_ms: Mapping[str, float],
    execution_ms: float | None,
) -> list[str]:
    warnings = []
    card = f"a {vram_mib / 1024:.0f} GiB GPU" if vram_mib else "this GPU"
    for line in log_lines:
        if match := PARTIAL_LOAD.search(line):
            warnings.append(
                f"a model was loaded partially ({float(match[1]):.0f} MB on the GPU, {float(match[2]):.0f} MB "
                f"offloaded) on {card}: every step copies weights; set COMFY_VRAM_MODE=high if the models fit, "
                "or use smaller (fp8) weights"
            )
        elif (match := DYNAMIC_STAGING.search(line)) and vram_mib and vram_mib >= LARGE_CARD_MIB:
            warnings.append(
                f"{match[1]} ran with ComfyUI's dynamic VRAM loading ({match[2]} MB staged) on {card}, about half "
                "the speed of keeping it resident: set COMFY_VRAM_MODE=high"
            )
    if vram_mib and vram_mib >= LARGE_CARD_MIB:
        for node_id, node in workflow.items():
            class_type = str(node.get("class_type", "")) if isinstance(node, Mapping) else ""
            if SLOW_LOADER.search(class_type):
                warnings.append(
                    f"node {node_id} ({class_type}) loads quantised or low-VRAM weights on {card}, which could "
                    "hold FP16/FP8 weights: the standard loaders sample faster"
                )
    load_ms = phases_ms.get("model_load_ms", 0.0)
    if execution_ms and load_ms >= LOAD_WARNING_MIN_MS and load_ms / execution_ms >= LOAD_SHARE_WARNING:
        warnings.append(
            f"loading models took {load_ms / 1000:.1f} s of the job's {execution_ms / 1000:.1f} s: set "
            "WARMUP_WORKFLOW so instances load them at start, and keep models on local disk or the network volume"
        )
    return list(dict.fromkeys(warnings))
