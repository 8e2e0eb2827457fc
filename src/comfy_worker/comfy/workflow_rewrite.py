"""Per-job changes to a workflow that its user never sees.

Every `filename_prefix` of the workflow is put under a folder of the job's own. ComfyUI caches nodes whose inputs
did not change, output nodes included: without this, a job identical to an earlier one gets back the earlier job's
file names, whose files were removed when that job was delivered. With it, save nodes run for each job (upstream
nodes stay cached), each job's files live in one folder that is removed after delivery, and concurrent jobs never
share a file name.
"""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

PREFIX_INPUT = "filename_prefix"
DEFAULT_PREFIX = "ComfyUI"


def job_folder_name(job_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", job_id)[:48]
    return f"job-{safe}-{uuid.uuid4().hex[:8]}"


def isolate_outputs(workflow: dict[str, Any], folder: str) -> dict[str, Any]:
    rewritten = copy.deepcopy(workflow)
    for node in rewritten.values():
        inputs = node.get("inputs")
        if isinstance(inputs, dict) and isinstance(inputs.get(PREFIX_INPUT), str):
            inputs[PREFIX_INPUT] = f"{folder}/{inside_prefix(inputs[PREFIX_INPUT])}"
    return rewritten


def inside_prefix(prefix: str) -> str:
    """A filename_prefix that stays inside the job's folder: no '..', '.', empty or absolute parts (which would
    put the file beside the folder, where it is never removed); an empty name becomes ComfyUI's own default."""
    parts = [p for p in prefix.replace("\\", "/").split("/") if p.strip() not in ("", ".", "..")]
    return "/".join(parts) or DEFAULT_PREFIX


def user_subfolder(subfolder: str, folder: str) -> str:
    """The subfolder as the user's workflow named it, without the job's own folder."""
    parts = subfolder.replace("\\", "/").split("/")
    return "/".join(parts[1:]) if parts and parts[0] == folder else subfolder
