"""A small blocking client for one ComfyUI instance's HTTP API (run it in a thread from async code)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import requests

from comfy_worker.errors import InstanceUnavailable, WorkflowRejected

MAX_LISTED_CHOICES = 20


class ComfyClient:
    def __init__(self, base_url: str, label: str, timeout_s: float = 30, poll_timeout_s: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.label = label
        self.timeout_s = timeout_s
        self.poll_timeout_s = poll_timeout_s
        self._session = requests.Session()
        self._api_node_known: dict[str, bool] = {}

    @contextlib.contextmanager
    def patient(self, poll_timeout_s: float) -> Iterator[None]:
        """Polls wait up to `poll_timeout_s` meanwhile (never less than usual): a ComfyUI compiling a model can leave
        its server unanswered for longer than a hung-instance check allows."""
        usual = self.poll_timeout_s
        self.poll_timeout_s = max(usual, poll_timeout_s)
        try:
            yield
        finally:
            self.poll_timeout_s = usual

    @property
    def websocket_url(self) -> str:
        return "ws" + self.base_url.removeprefix("http") + "/ws"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            return self._session.request(method, self.base_url + path, **kwargs)
        except requests.RequestException as error:
            raise InstanceUnavailable(
                f"ComfyUI on {self.label} did not answer {method} {path}: {type(error).__name__}"
            ) from error

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise InstanceUnavailable(
                f"ComfyUI on {self.label} answered HTTP {response.status_code} to {method} {path}: "
                f"{response.text[:300]}"
            )
        return response.json()

    def is_ready(self) -> bool:
        try:
            return self._session.get(self.base_url + "/system_stats", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def system_stats(self) -> dict[str, Any]:
        return self._json("GET", "/system_stats")

    def apply_tuning(self, switches: dict[str, Any]) -> dict[str, Any]:
        """Sets the in-process torch switches through our comfy_worker_tuning node; returns what it applied."""
        return self._json("POST", "/worker/tuning", json=switches)

    def compile_report(self) -> dict[str, Any]:
        """What torch.compile did in the instance: counters, compiled models, versions (GET /worker/compile)."""
        return self._json("GET", "/worker/compile")

    def save_compile_artifact(self, path: str, timeout_s: float = 600) -> dict[str, Any]:
        """The instance's compile caches written to `path` (Mega-Cache); {"error": ...} when it could not."""
        return self._json("POST", "/worker/compile/save", json={"path": path}, timeout=timeout_s)

    def load_compile_artifact(self, path: str, timeout_s: float = 600) -> dict[str, Any]:
        """Fills the instance's compile caches from the artefact at `path`; {"error": ...} when it could not."""
        return self._json("POST", "/worker/compile/load", json={"path": path}, timeout=timeout_s)

    def upload_input(self, name: str, data: bytes) -> str:
        """Stores a job's input file in the instance's input folder under `name`; returns the stored name."""
        response = self._json(
            "POST", "/upload/image",
            files={"image": (name, data, "application/octet-stream")},
            data={"overwrite": "true", "type": "input"},
        )
        return response.get("name", name)

    def submit(self, workflow: dict[str, Any], client_id: str, extra_data: dict[str, Any]) -> tuple[str, list[str]]:
        """Queues the workflow; returns (prompt_id, warnings). A refused workflow raises WorkflowRejected."""
        prompt_id = str(uuid.uuid4())
        body = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id, "extra_data": extra_data}
        response = self._request("POST", "/prompt", json=body)
        if response.status_code == 400:
            payload = _json_or_empty(response)
            lines = describe_rejection(payload, workflow, self.object_info_choices)
            raise WorkflowRejected("ComfyUI rejected the workflow: " + "; ".join(lines), details=lines)
        if response.status_code != 200:
            raise InstanceUnavailable(
                f"ComfyUI on {self.label} answered HTTP {response.status_code} to POST /prompt: {response.text[:300]}"
            )
        payload = response.json()
        warnings = describe_node_errors(payload.get("node_errors") or {}, workflow, self.object_info_choices)
        return payload.get("prompt_id", prompt_id), [f"an output was skipped: {w}" for w in warnings]

    def history(self, prompt_id: str, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The finished prompt's history entry, or None while it is queued or running."""
        return self._json("GET", f"/history/{prompt_id}", timeout=timeout_s or self.poll_timeout_s).get(prompt_id)

    def is_pending_or_running(self, prompt_id: str, timeout_s: float = 5) -> bool:
        """Whether the prompt is still in the instance's queue or running (False once it ended or was dequeued)."""
        response = self._request("GET", f"/api/jobs/{prompt_id}", timeout=timeout_s)
        if response.status_code == 404:
            return False
        return _json_or_empty(response).get("status") in ("pending", "in_progress")

    def api_node_classes(self, class_types: set[str]) -> set[str]:
        """Which of `class_types` are ComfyUI API nodes (paid calls to outside services: `api_node` in
        /object_info); a class that could not be looked up counts as one. Answers are kept: a class's kind does not
        change while the worker runs."""
        for class_type in class_types - self._api_node_known.keys():
            try:
                info = self._json("GET", f"/object_info/{class_type}", timeout=5).get(class_type, {})
            except (InstanceUnavailable, ValueError):
                continue  # unknown: counted as an API node (the safe side), and asked again next time
            self._api_node_known[class_type] = bool(isinstance(info, dict) and info.get("api_node"))
        return {c for c in class_types if self._api_node_known.get(c, True)}

    def cancel(self, prompt_id: str, timeout_s: float = 10) -> bool:
        """Interrupts the prompt if it runs, removes it if it waits; touches no other prompt."""
        response = self._request("POST", f"/api/jobs/{prompt_id}/cancel", timeout=min(timeout_s, self.poll_timeout_s))
        return response.status_code == 200 and bool(_json_or_empty(response).get("cancelled"))

    def free_memory(self) -> None:
        """Unloads every model and empties the caches (ComfyUI's /free), as after an out-of-memory error."""
        self._request("POST", "/free", json={"unload_models": True, "free_memory": True}, timeout=30)

    def forget(self, prompt_id: str) -> None:
        """Drops the prompt from the instance's in-memory history once the job has been delivered."""
        self._request("POST", "/history", json={"delete": [prompt_id]}, timeout=10)

    def object_info_choices(self, class_type: str, input_name: str) -> list[str] | None:
        """The allowed values of a node's list input (e.g. the model files a loader can see), if any."""
        try:
            info = self._json("GET", f"/object_info/{class_type}").get(class_type, {})
        except InstanceUnavailable:
            return None
        for section in ("required", "optional"):
            spec = info.get("input", {}).get(section, {}).get(input_name)
            if not spec:
                continue
            if isinstance(spec[0], list):
                return [str(v) for v in spec[0]]
            if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
                return [str(v) for v in spec[1].get("options", [])]
        return None


def describe_rejection(payload: dict[str, Any], workflow: dict[str, Any], choices_of=None) -> list[str]:
    """Readable lines for ComfyUI's 400 answer to /prompt."""
    lines = describe_node_errors(payload.get("node_errors") or {}, workflow, choices_of)
    if not lines:
        error = payload.get("error") or {}
        if isinstance(error, dict):
            text = error.get("message") or error.get("type") or "unknown error"
            details = error.get("details")
            lines.append(f"{text}: {details}" if details else text)
        else:
            lines.append(str(error) or "unknown error")
    return lines


def describe_node_errors(node_errors: dict[str, Any], workflow: dict[str, Any], choices_of=None) -> list[str]:
    lines = []
    for node_id, node_error in node_errors.items():
        class_type = node_error.get("class_type") or workflow.get(node_id, {}).get("class_type", "?")
        for error in node_error.get("errors", []):
            lines.append(f"node {node_id} ({class_type}): {_describe_error(error, class_type, choices_of)}")
    return lines


def _describe_error(error: dict[str, Any], class_type: str, choices_of) -> str:
    extra = error.get("extra_info") or {}
    input_name = extra.get("input_name")
    if error.get("type") == "value_not_in_list" and input_name:
        received = extra.get("received_value")
        text = f"{input_name} {received!r} not in list"
        choices = choices_of(class_type, input_name) if choices_of else None
        if choices is not None:
            if not choices:
                return text + " (no choices available: is the model file installed in the right folder?)"
            shown = ", ".join(choices[:MAX_LISTED_CHOICES])
            more = f", … {len(choices) - MAX_LISTED_CHOICES} more" if len(choices) > MAX_LISTED_CHOICES else ""
            return f"{text}; available: {shown}{more}"
        return text
    message = error.get("message") or error.get("type") or "invalid"
    details = error.get("details")
    if input_name and details:
        return f"{input_name}: {message}: {details}"
    return f"{message}: {details}" if details else message


def _json_or_empty(response: requests.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}
