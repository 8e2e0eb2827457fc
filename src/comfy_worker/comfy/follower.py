"""Follows one prompt on one instance to its end: websocket messages for progress and timings, `/history` as the
authority on the outcome. Whenever the socket is quiet or drops, `/history` is polled, so a lost message never
means an endless wait. Blocking: runs in a worker thread."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websocket

from comfy_worker.comfy.client import ComfyClient
from comfy_worker.comfy.previews import PreviewFrame, decode_frame
from comfy_worker.deadline import Deadline
from comfy_worker.errors import ExecutionFailed, InstanceUnavailable, JobInterrupted, JobTimedOut

RECONNECT_INTERVAL_S = 1.0
SOCKET_CONNECT_TIMEOUT_S = 5.0
SETTLE_AFTER_CANCEL_S = 15.0
SETTLE_AFTER_TIMEOUT_S = 3.0  # past the deadline: the job answers; a prompt that ignores the interrupt longer runs on
ENDING_EVENTS = ("execution_success", "execution_error", "execution_interrupted")
OOM_MARKERS = ("OutOfMemoryError", "out of memory", "CUDA error: out of memory")

ProgressCallback = Callable[[dict[str, Any]], None]
PreviewCallback = Callable[[PreviewFrame, dict[str, Any]], None]  # the frame, and the node and step it belongs to
OutputCallback = Callable[[str, dict[str, Any]], None]  # a node's `executed` output: its files, as in /history


class JobCancelled(Exception):
    """The job's task was cancelled (RunPod cancel or timeout); the prompt was interrupted."""


@dataclass
class NodeSampling:
    first_step: int
    first_at: float
    last_step: int
    last_at: float
    total_steps: int

    @property
    def its(self) -> float | None:
        elapsed = self.last_at - self.first_at
        return round((self.last_step - self.first_step) / elapsed, 3) if elapsed > 0 else None


@dataclass
class Execution:
    """What following a prompt learnt: the history entry, and timings seen over the websocket."""

    prompt_id: str
    history: dict[str, Any]
    execution_ms: float
    node_ms: dict[str, float] = field(default_factory=dict)
    cached_nodes: list[str] = field(default_factory=list)
    sampling: dict[str, NodeSampling] = field(default_factory=dict)
    websocket_drops: int = 0
    history_polls: int = 0


class PromptFollower:
    def __init__(self, client: ComfyClient, client_id: str, quiet_s: float, log: logging.LoggerAdapter,
                 on_preview: PreviewCallback | None = None, on_output: OutputCallback | None = None) -> None:
        self.client = client
        self.on_preview = on_preview
        self.on_output = on_output
        self._sampling_at: dict[str, Any] = {}  # the node and step of the last progress message
        self._prompt_id: str | None = None
        self.client_id = client_id
        self.quiet_s = quiet_s
        self.log = log
        self.ws: websocket.WebSocket | None = None
        self._last_connect_try = 0.0
        self.outputs_seen = False  # an output node reported outputs: running the job again would repeat them
        self.started_nodes: set[str] = set()  # nodes ComfyUI began to execute (not served from its cache)
        self.saw_every_message = True  # False once the socket was down while the prompt could run

    # --- the socket -------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Opens the websocket before the prompt is submitted, so its first messages are not missed."""
        self._last_connect_try = time.monotonic()
        try:
            self.ws = websocket.create_connection(
                f"{self.client.websocket_url}?clientId={self.client_id}", timeout=SOCKET_CONNECT_TIMEOUT_S
            )
        except (OSError, websocket.WebSocketException) as error:
            self.ws = None
            self.saw_every_message = False
            self.log.warning("websocket to %s not open (%s); following over /history", self.client.label, error)

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self.ws.close(timeout=1)
            self.ws = None

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON message, or None when the socket was quiet for `timeout` or dropped."""
        assert self.ws is not None
        self.ws.settimeout(max(timeout, 0.01))
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException) as error:
            self.log.warning("websocket to %s dropped (%s); polling /history and reconnecting",
                             self.client.label, type(error).__name__)
            self.close()
            self.saw_every_message = False
            self._drops += 1
            return None
        if isinstance(raw, bytes):  # preview frames
            self._preview(raw)
            return {}
        try:
            message = json.loads(raw)
        except ValueError:
            return {}
        return message if isinstance(message, dict) else {}

    def _preview(self, raw: bytes) -> None:
        if self.on_preview is None:
            return
        frame = decode_frame(raw)
        if frame is None or frame.metadata.get("prompt_id") not in (self._prompt_id, None):
            return
        where = dict(self._sampling_at)
        if frame.metadata.get("node_id") is not None:
            where["node"] = str(frame.metadata["node_id"])
        self.on_preview(frame, where)

    # --- following --------------------------------------------------------------------------------------------
    def follow(
        self,
        prompt_id: str,
        workflow: dict[str, Any],
        deadline: Deadline,
        stop: threading.Event,
        on_progress: ProgressCallback,
    ) -> Execution:
        self._drops = 0
        self._prompt_id = prompt_id
        polls = 0
        started = time.monotonic()
        node_ms: dict[str, float] = {}
        cached: list[str] = []
        sampling: dict[str, NodeSampling] = {}
        current: tuple[str, float] | None = None
        finished_signal = False
        last_heard = last_poll = time.monotonic()

        def close_node(now: float) -> None:
            nonlocal current
            if current:
                node_ms[current[0]] = round(node_ms.get(current[0], 0) + (now - current[1]) * 1000, 1)
                current = None

        while True:
            now = time.monotonic()
            if stop.is_set():
                self._cancel_and_settle(prompt_id, "cancelled", now + SETTLE_AFTER_CANCEL_S)
                raise JobCancelled()
            if now >= deadline.at:
                self._time_out(prompt_id, workflow, deadline, current)
            if self.ws is None and now - self._last_connect_try >= RECONNECT_INTERVAL_S:
                self.connect()

            message = None
            if self.ws is not None and not finished_signal:
                message = self._receive(min(self.quiet_s, deadline.at - now, 1.0))
            elif not finished_signal:
                time.sleep(min(0.25, max(deadline.at - now, 0)))
            now = time.monotonic()

            if message:
                kind, data = message.get("type"), message.get("data") or {}
                if isinstance(data, dict) and data.get("prompt_id") in (prompt_id, None) and kind != "status":
                    last_heard = now
                    if data.get("prompt_id") == prompt_id:
                        finished_signal = self._on_message(kind, data, workflow, now, on_progress, sampling, cached)
                        if kind == "executing":
                            close_node(now)
                            if data.get("node") is not None:
                                current = (str(data["node"]), now)
                                self.started_nodes.add(current[0])
                        elif finished_signal:
                            close_node(now)

            if finished_signal or now - max(last_heard, last_poll) >= self.quiet_s:
                last_poll = now
                polls += 1
                poll_timeout = deadline.bound(self.client.poll_timeout_s)
                try:  # a poll may not outlast the job: an instance that stops answering is judged after it
                    entry = self.client.history(prompt_id, poll_timeout)
                except InstanceUnavailable:
                    if poll_timeout < self.client.poll_timeout_s:  # cut short by the deadline
                        self._time_out(prompt_id, workflow, deadline, current)
                    raise
                if entry is not None and _is_finished(entry):
                    close_node(time.monotonic())
                    execution = Execution(prompt_id, entry, round((time.monotonic() - started) * 1000, 1),
                                          node_ms, cached, sampling, self._drops, polls)
                    _raise_for_failure(entry, workflow, self.client.label)
                    return execution
                if finished_signal:
                    time.sleep(0.05)  # the history entry lands just after the last message

    def _on_message(self, kind, data, workflow, now, on_progress, sampling, cached) -> bool:
        """Handles one message of our prompt; returns True when it says the prompt has ended."""
        if kind == "executing":
            node = data.get("node")
            if node is None:
                return True
            on_progress({"node": str(node), "class_type": _class_of(workflow, str(node))})
        elif kind == "execution_cached":
            cached.extend(str(n) for n in data.get("nodes") or [])
            on_progress({"cached_nodes": [str(n) for n in data.get("nodes") or []]})
        elif kind == "progress":
            node, value, total = str(data.get("node")), int(data.get("value", 0)), int(data.get("max", 0))
            record = sampling.get(node)
            if record is None:
                sampling[node] = NodeSampling(value, now, value, now, total)
            else:
                record.last_step, record.last_at, record.total_steps = value, now, total
            self._sampling_at = {"node": node, "step": value, "steps": total}
            on_progress({"node": node, "class_type": _class_of(workflow, node), "step": value, "steps": total})
        elif kind == "executed" and data.get("output"):
            self.outputs_seen = True
            if self.on_output is not None and isinstance(data["output"], dict):
                self.on_output(str(data.get("node")), data["output"])
        elif kind in ENDING_EVENTS:
            return True
        return False

    def _time_out(self, prompt_id: str, workflow: dict[str, Any], deadline: Deadline,
                  current: tuple[str, float] | None) -> None:
        node = f", at node {current[0]} ({_class_of(workflow, current[0])})" if current else ""
        self._cancel_and_settle(prompt_id, "timed out", deadline.at + SETTLE_AFTER_TIMEOUT_S)
        raise JobTimedOut(
            f"the job ran past its timeout of {deadline.timeout_s:g} s while running the workflow{node}; ComfyUI on "
            f"{self.client.label} was interrupted. Raise 'timeout_s' in the input (or JOB_TIMEOUT_S) if the workflow "
            "needs longer"
        )

    def _cancel_and_settle(self, prompt_id: str, why: str, settle_until: float) -> None:
        """Interrupts our prompt (no other) and waits, until `settle_until` at most, for the instance to let go of
        it. A prompt still waiting in ComfyUI's queue is removed from it and never gets a history entry."""
        self.log.warning("job %s: interrupting prompt %s on %s", why, prompt_id, self.client.label)
        try:
            self.client.cancel(prompt_id, timeout_s=max(0.5, settle_until - time.monotonic()))
            while time.monotonic() < settle_until:
                if not self.client.is_pending_or_running(prompt_id, max(0.5, settle_until - time.monotonic())):
                    return
                time.sleep(0.1)
            self.log.error("prompt %s on %s had not stopped when the job answered; it may still run a while",
                           prompt_id, self.client.label)
        except Exception as error:  # the instance may be dead; the fleet restarts it
            self.log.error("could not interrupt prompt %s on %s: %s", prompt_id, self.client.label, error)


def ended_prompt(event: dict[str, Any]) -> str | None:
    """The prompt a ComfyUI websocket event says has ended (None for any other event): one of the ending events,
    or `executing` with no node."""
    data = event.get("data") or {}
    kind = event.get("type")
    if kind in ENDING_EVENTS or (kind == "executing" and data.get("node") is None):
        return data.get("prompt_id")
    return None


def _is_finished(entry: dict[str, Any]) -> bool:
    status = entry.get("status") or {}
    return bool(status.get("completed")) or status.get("status_str") in ("success", "error")


def _raise_for_failure(entry: dict[str, Any], workflow: dict[str, Any], label: str) -> None:
    status = entry.get("status") or {}
    if status.get("status_str") != "error":
        return
    for kind, data in status.get("messages") or []:
        if kind == "execution_error":
            node = str(data.get("node_id"))
            node_type = data.get("node_type") or _class_of(workflow, node)
            exception = f"{data.get('exception_type', 'Exception')}: {data.get('exception_message', '').strip()}"
            oom = any(marker in exception for marker in OOM_MARKERS)
            hint = f" (out of GPU memory on {label})" if oom else ""
            raise ExecutionFailed(f"node {node} ({node_type}) failed{hint}: {exception}", out_of_memory=oom)
        if kind == "execution_interrupted":
            node = data.get("node_id")
            raise JobInterrupted(
                f"the workflow was interrupted on {label} at node {node} ({_class_of(workflow, str(node))}) "
                "by a request to ComfyUI other than this job's"
            )
    raise ExecutionFailed(f"ComfyUI on {label} reports the workflow failed without an error message")


def _class_of(workflow: dict[str, Any], node: str) -> str:
    entry = workflow.get(node)
    return entry.get("class_type", "?") if isinstance(entry, dict) else "?"
