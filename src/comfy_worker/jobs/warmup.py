"""The warm-up workflow (WARMUP_WORKFLOW): a file path or inline JSON, run on every instance at start so the first
job finds its models resident (and, with TORCH_COMPILE, compiled)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from comfy_worker.errors import InvalidInput, WorkerError
from comfy_worker.fleet.vram import model_roots
from comfy_worker.jobs.job_input import parse_job_input
from comfy_worker.models.files import ModelFile, workflow_model_files
from comfy_worker.settings import Settings


def load_warmup_workflow(value: str) -> dict[str, Any] | None:
    if not value:
        return None
    text = value if value.lstrip().startswith("{") else _read(Path(value).expanduser())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"WARMUP_WORKFLOW is not valid JSON: {error}") from None
    # Either a bare workflow or a whole job input ({"workflow": ...}); both go through the job validation.
    job_input = data if isinstance(data, dict) and "workflow" in data else {"workflow": data}
    return parse_job_input(job_input).workflow


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as error:
        raise InvalidInput(f"WARMUP_WORKFLOW names {path}, which cannot be read: {error.strerror}") from None


def warmup_model_files(settings: Settings) -> list[ModelFile]:
    """The warm-up workflow's model files, found in the configured model folders (none without a warm-up)."""
    try:
        workflow = load_warmup_workflow(settings.warmup_workflow)
    except WorkerError:
        return []  # reported when the warm-up runs
    if workflow is None:
        return []
    return workflow_model_files(workflow, model_roots(settings.comfyui_dir, settings.extra_model_paths))


SEED_INPUTS = ("seed", "noise_seed")


def reseeded(workflow: dict[str, Any], bump: int = 1) -> dict[str, Any]:
    """The workflow with every integer seed moved by `bump`: run again on an instance, its samplers execute instead
    of answering from ComfyUI's cache (the loaders stay cached, models stay loaded)."""
    result = {}
    for node_id, node in workflow.items():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        changed = {name: value + bump for name, value in inputs.items()
                   if name in SEED_INPUTS and isinstance(value, int) and not isinstance(value, bool)}
        result[node_id] = {**node, "inputs": {**inputs, **changed}} if changed else node
    return result
