"""Warnings for the slow paths the user once found by hand in the logs, each with its numbers and one line of
advice, read from ComfyUI v0.29's real log lines (tests/data/comfyui_logs): a model staged for dynamic loading or
loaded partially on a card that holds the job's models; weights streamed every step where the stream will not hide
behind the step's compute on this card; a GGUF or low-VRAM loader on a card with room for fp8 weights; model
loading dominating the job. Where the worker itself chose dynamic loading because the models do not fit, and the
stream hides behind compute, nothing is said: nothing is slow."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from comfy_worker.fleet.vram import job_vram_choice
from comfy_worker.models.files import ModelFile

LOAD_SHARE_WARNING = 0.5
LOAD_WARNING_MIN_MS = 2000
PARTIAL_LOAD = re.compile(r"loaded partially;.*?([\d.]+) MB loaded, ([\d.]+) MB offloaded")
DYNAMIC_STAGING = re.compile(r"Model (\w+) prepared for dynamic VRAM loading\. (\d+)MB Staged")
SLOW_LOADER = re.compile(r"gguf|lowvram", re.IGNORECASE)
# The offload model (docs/benchmarks/video.md): under dynamic loading about half the card holds weights; the rest of
# the model is copied host → GPU every step. Measured on an H200 held to 24 GiB, Wan 14B fp16 (27 249 MB staged):
# 14 431 MB per step, against 27 249 − 12 288 = 14 961 MB by this rule.
RESIDENT_SHARE_OF_CARD = 0.5
PCIE_GEN4_GB_PER_S = 25.0  # a PCIe Gen4 ×16 card (RTX 4090, L4, A5000): the slowest link a 24 GB card has
HIDDEN_SHARE = 0.5  # the copy hides behind compute while it takes under half the step
GGUF_BITS = 5.0  # a typical GGUF quantisation (Q4_K–Q6_K): fp8 weights take 8/5 of its bytes


@dataclass(frozen=True)
class JobModels:
    """What the worker knows of the job's models: whether they fit the card (vram.job_vram_choice), the GGUF files'
    sizes, and the sampler's seconds per step."""

    fit: bool | None = None
    gguf_bytes: tuple[int, ...] = ()
    step_s: float | None = None


def job_models(files: Iterable[ModelFile], vram_mib: int | None, its: Iterable[float | None]) -> JobModels:
    """JobModels from the job's model files, the card and its samplers' iterations per second."""
    files = list(files)
    fit = job_vram_choice("auto", vram_mib << 20, files).mode == "high" if vram_mib and files else None
    rates = [rate for rate in its if rate]
    return JobModels(fit, tuple(f.size for f in files if f.name.lower().endswith(".gguf")),
                     1 / min(rates) if rates else None)


def slow_path_warnings(
    log_lines: Iterable[str], workflow: Mapping[str, Any], vram_mib: int | None, phases_ms: Mapping[str, float],
    execution_ms: float | None, models: JobModels | None = None,
) -> list[str]:
    models = models or JobModels()
    warnings = []
    card = f"a {vram_mib / 1024:.0f} GiB GPU" if vram_mib else "this GPU"
    for line in log_lines:
        if match := PARTIAL_LOAD.search(line):
            if models.fit:
                warnings.append(
                    f"a model was loaded partially ({float(match[1]):.0f} MB on the GPU, {float(match[2]):.0f} MB "
                    f"offloaded) on {card} that holds the job's models: every step copies weights; set "
                    "COMFY_VRAM_MODE=auto (or high)")
            elif vram_mib:
                warnings += _stream_warning(float(match[2]) * 1e6, models.step_s, card)
        elif match := DYNAMIC_STAGING.search(line):
            staged_bytes = int(match[2]) * 1e6
            if models.fit:
                warnings.append(
                    f"{match[1]} ran with ComfyUI's dynamic VRAM loading ({match[2]} MB staged) on {card} that "
                    "holds the job's models (SDXL sampled at half speed this way): set COMFY_VRAM_MODE=auto (or "
                    "high)")
            elif models.fit is False and vram_mib:
                streamed = staged_bytes - RESIDENT_SHARE_OF_CARD * vram_mib * 1024 * 1024
                warnings += _stream_warning(streamed, models.step_s, card, match[1])
    if vram_mib:
        card_bytes = vram_mib * 1024 * 1024
        for size in models.gguf_bytes:
            fp8_bytes = size * 8 / GGUF_BITS
            if fp8_bytes * 1.15 + 4 * 2**30 <= card_bytes:
                warnings.append(
                    f"a GGUF model of {size / 2**30:.1f} GiB runs on {card} with room for the same model in fp8 "
                    f"({fp8_bytes / 2**30:.1f} GiB) or fp16: dequantising GGUF weights every step is slower; "
                    "load fp8/fp16 weights with the standard loaders")
        for node_id, node in workflow.items():
            class_type = str(node.get("class_type", "")) if isinstance(node, Mapping) else ""
            if "lowvram" in class_type.lower() and models.fit:
                warnings.append(
                    f"node {node_id} ({class_type}) loads low-VRAM weights on {card}, which holds the job's "
                    "models: the standard loaders sample faster")
    load_ms = phases_ms.get("model_load_ms", 0.0)
    if execution_ms and load_ms >= LOAD_WARNING_MIN_MS and load_ms / execution_ms >= LOAD_SHARE_WARNING:
        warnings.append(
            f"loading models took {load_ms / 1000:.1f} s of the job's {execution_ms / 1000:.1f} s: set "
            "WARMUP_WORKFLOW so instances load them at start, and keep models on local disk or the network volume"
        )
    return list(dict.fromkeys(warnings))


def _stream_warning(streamed_bytes: float, step_s: float | None, card: str, model: str = "a model") -> list[str]:
    """A warning when the weights copied every step take more than HIDDEN_SHARE of the step over PCIe Gen4."""
    if streamed_bytes <= 0 or not step_s:
        return []
    copy_s = streamed_bytes / (PCIE_GEN4_GB_PER_S * 1e9)
    if copy_s <= HIDDEN_SHARE * step_s:
        return []
    return [
        f"{model} does not fit {card}: about {streamed_bytes / 1e9:.1f} GB of weights are copied every step, "
        f"≈{copy_s:.1f} s over PCIe Gen4 against a {step_s:.2f} s step, so the copy will not hide behind compute; "
        "fp8 weights (UNETLoader weight_dtype fp8_e4m3fn_fast, lossy; 1.18× faster per step on an H200 for Wan "
        f"14B) halve the bytes, about {copy_s / 2:.1f} s a step"]
