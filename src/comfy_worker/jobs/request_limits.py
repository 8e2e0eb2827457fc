"""Size limits a job is held to before any work starts (the request, its workflow's nodes), and after its run (the
total size of its outputs, checked before they are read into memory). Each error names the limit and the count."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from comfy_worker.errors import DeliveryFailed, InvalidInput


def check_request(raw: Any, max_bytes: int, max_nodes: int) -> None:
    """The job's `input` against MAX_REQUEST_MB and its workflow against MAX_WORKFLOW_NODES."""
    try:
        size = len(json.dumps(raw, separators=(",", ":")))
    except (TypeError, ValueError):
        size = 0  # not JSON: the input's parser says what is wrong with it
    if size > max_bytes:
        raise InvalidInput(f"the job input is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB limit "
                           "(MAX_REQUEST_MB): give large input files as http(s) URLs")
    workflow = raw.get("workflow") if isinstance(raw, dict) else None
    if isinstance(workflow, dict) and len(workflow) > max_nodes:
        raise InvalidInput(f"the workflow has {len(workflow)} nodes, over the limit of {max_nodes} "
                           "(MAX_WORKFLOW_NODES): split it into several jobs")


def check_output_size(sizes: Iterable[int], max_bytes: int) -> None:
    sizes = list(sizes)
    total = sum(sizes)
    if total > max_bytes:
        raise DeliveryFailed(f"the job's {len(sizes)} output files total {total / 1e6:.1f} MB, over the "
                              f"{max_bytes / 1e6:g} MB limit (MAX_OUTPUT_MB): make fewer or smaller outputs")
