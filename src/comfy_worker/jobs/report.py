"""What a job answers: its outputs, where and how it ran, and where its time went."""

from __future__ import annotations

from typing import Any

from comfy_worker.comfy.follower import Execution
from comfy_worker.delivery.deliver import Delivery
from comfy_worker.fleet.instance import ComfyInstance
from comfy_worker.jobs.context import JobContext, RunOutcome, ms_since
from comfy_worker.redaction import redact_text


def job_result(ctx: JobContext, outcome: RunOutcome, delivery: Delivery, metrics: list[dict[str, Any]]
               ) -> dict[str, Any]:
    instance = ctx.instance
    assert instance is not None
    timings = {
        "queue_wait_ms": ctx.timings["queue_wait_ms"],
        "input_decode_ms": ctx.timings["input_decode_ms"],
        "download_ms": ctx.fetched.download_ms,
        **outcome.timings,
        "delivery_ms": ctx.timings["delivery_ms"],
        "s3_upload_ms": delivery.upload_ms if delivery.mode == "s3" else 0.0,
        "total_ms": ms_since(ctx.received),
    }
    ctx.log.info("done in %.0f ms: %s", timings["total_ms"],
                 ", ".join(f"{len(v)} {k}" for k, v in delivery.outputs.items()) or "no outputs")
    return {
        "images": [],
        **delivery.outputs,
        "outputs": delivery.typed,
        "output_mode": delivery.mode,
        "gpu": instance.spec.gpu,
        "instance": instance.label,
        "prompt_id": outcome.execution.prompt_id,
        "tuning": tuning_report(instance),
        "timings": timings,
        "metrics": metrics,
        "models_downloaded": list(ctx.fetched.downloaded),
        "warnings": [redact_text(w) for w in ctx.warnings + outcome.warnings + delivery.warnings],
    }


def tuning_report(instance: ComfyInstance) -> dict[str, Any]:
    """How the instance that ran the job is tuned: VRAM mode, CPU cores, and the switches its process applied."""
    tuning = instance.tuning
    switches = instance.switches
    return {
        "vram_mode": tuning.vram.mode if tuning.vram else None,
        "cpus": tuning.cpu_set.describe() if tuning.cpu_set else None,
        "flags": list(tuning.flags),
        "applied": switches.get("applied", []) if "error" not in switches else [switches["error"]],
        "torch": switches.get("torch", {}),
        "compiled_models": switches.get("compiled_models", 0),
        "png_compress_level": switches.get("png_compress_level"),
        "compiled": instance.compile.on,  # compile switched on in the process: its diffusion models ran compiled
        "compile": instance.compile.summary() if instance.compile.requested else None,
    }


def phase_of(class_type: str, sampling_node: bool) -> str:
    if sampling_node or "Sampler" in class_type:
        return "sampling_ms"
    if "Loader" in class_type:
        return "model_load_ms"
    if class_type.startswith("VAEDecode"):
        return "vae_decode_ms"
    if class_type.startswith("Save") or class_type.startswith("Preview"):
        return "save_ms"
    return "other_nodes_ms"


def _phases(execution: Execution, workflow: dict[str, Any]) -> dict[str, float]:
    """Where the execution time went, from the per-node timings: model load, sampling, VAE decode, saving, rest.
    ComfyUI moves weights to the GPU inside the sampler, so a first job's sampling includes that upload."""
    phases = dict.fromkeys(("model_load_ms", "sampling_ms", "vae_decode_ms", "save_ms", "other_nodes_ms"), 0.0)
    for node, ms in execution.node_ms.items():
        class_type = str(workflow.get(node, {}).get("class_type", ""))
        phases[phase_of(class_type, node in execution.sampling)] += ms
    return {name: round(ms, 1) for name, ms in phases.items()}


def execution_timings(execution: Execution, workflow: dict[str, Any]) -> dict[str, Any]:
    return {
        "execution_ms": execution.execution_ms,
        "phases_ms": _phases(execution, workflow),
        "nodes_ms": {
            node: {"class_type": workflow.get(node, {}).get("class_type", "?"), "ms": ms}
            for node, ms in execution.node_ms.items()
        },
        "cached_nodes": execution.cached_nodes,
        "sampling": {
            node: {"steps": s.total_steps, "it_per_s": s.its} for node, s in execution.sampling.items()
        },
        "websocket_drops": execution.websocket_drops,
        "history_polls": execution.history_polls,
    }
