"""Prompts posted to one ComfyUI at once, each one's finish time read from its websocket: polling /history instead
takes the GIL from the sampling thread and slows the very prompt it waits for (ComfyUI's own websocket API example
waits this way). Shared by the image benchmark (runner.py) and the video one (video/stream.py)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from comfy_worker.comfy.follower import ended_prompt


def post_all_timed(client: Any, workflows: list[dict[str, Any]], timeout_s: float
                   ) -> tuple[list[str], dict[str, float]]:
    """(the prompt ids in the workflows' order, seconds from the first submission to each one's end); a prompt
    that has not ended when the websocket stays silent for `timeout_s` is left out of the second."""
    import websocket

    client_id = uuid.uuid4().hex
    socket = websocket.create_connection(f"{client.websocket_url}?clientId={client_id}", timeout=timeout_s)
    started = time.monotonic()
    prompt_ids: list[str] = []
    finished: dict[str, float] = {}
    try:
        for workflow in workflows:
            prompt_ids.append(client.submit(workflow, client_id, {})[0])
        pending = set(prompt_ids)
        while pending:
            try:
                message = socket.recv()
            except websocket.WebSocketTimeoutException:
                break
            if not isinstance(message, str):
                continue  # preview images
            prompt_id = ended_prompt(json.loads(message))
            if prompt_id in pending:
                finished[prompt_id] = time.monotonic() - started
                pending.discard(prompt_id)
    finally:
        socket.close()
    return prompt_ids, finished
