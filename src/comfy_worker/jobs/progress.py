"""Forwards a job's progress to RunPod (`/status` shows it), at most once per interval, shaped like Comfy's API v2:
`status` (queued, running; a result carries succeeded or failed) and a `progress` object (`value` 0–1,
`nodes_done`, `nodes_total`, `current_node`, `step`, `steps`), plus the instance and the seconds since the job came
in. The earlier flat keys (`node`, `class_type`, `step`, `steps`) stay for clients that read them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Sender = Callable[[dict[str, Any], dict[str, Any]], None]
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def runpod_sender(job: dict[str, Any], payload: dict[str, Any]) -> None:
    import runpod

    runpod.serverless.progress_update(job, payload)


def final_status(result: dict[str, Any]) -> str:
    return "failed" if "error" in result else "succeeded"


class NodeCounter:
    """Which nodes of a prompt are done, from the follower's updates: a node is done once the next one starts;
    cached nodes are done at once."""

    def __init__(self, nodes_total: int) -> None:
        self.nodes_total = nodes_total
        self.done: set[str] = set()
        self.current: str | None = None
        self.step = self.steps = 0

    def update(self, update: dict[str, Any]) -> None:
        self.done.update(str(n) for n in update.get("cached_nodes") or ())
        node = update.get("node")
        if node is not None and str(node) != self.current:
            if self.current is not None:
                self.done.add(self.current)
            self.current, self.step, self.steps = str(node), 0, 0
        if "steps" in update:
            self.step, self.steps = int(update.get("step") or 0), int(update["steps"] or 0)

    @property
    def value(self) -> float:
        if not self.nodes_total:
            return 0.0
        within = self.step / self.steps if self.steps else 0.0
        done = len(self.done - {self.current}) if self.current else len(self.done)
        return round(min(1.0, (done + within) / self.nodes_total), 4)

    def progress(self) -> dict[str, Any]:
        return {"value": self.value, "nodes_done": len(self.done), "nodes_total": self.nodes_total,
                "current_node": self.current, "step": self.step, "steps": self.steps}


class ProgressReporter:
    def __init__(self, job: dict[str, Any], gpu_label: str, interval_s: float, send: Sender | None,
                 nodes_total: int = 0, started: float | None = None) -> None:
        self.job = job
        self.gpu_label = gpu_label
        self.interval_s = interval_s
        self.send = send
        self.sent: list[dict[str, Any]] = []
        self.nodes = NodeCounter(nodes_total)
        self.started = started
        self._last_sent = float("-inf")

    def __call__(self, update: dict[str, Any]) -> None:
        self.nodes.update(update)
        if self.send is None:
            return
        now = time.monotonic()
        if self.started is None:
            self.started = now
        if now - self._last_sent < self.interval_s:
            return
        self._last_sent = now
        payload = {"status": "running", "gpu": self.gpu_label, "instance": self.gpu_label,
                   "elapsed_s": round(now - self.started, 2), "progress": self.nodes.progress(),
                   **{k: v for k, v in update.items() if k != "cached_nodes"}}
        self.sent.append(payload)
        self.send(self.job, payload)


def queued_payload(elapsed_s: float, waiting_for: str) -> dict[str, Any]:
    """The update sent while a job waits for an instance (or for its models)."""
    return {"status": "queued", "elapsed_s": round(elapsed_s, 2), "waiting_for": waiting_for,
            "progress": {"value": 0.0, "nodes_done": 0, "nodes_total": 0, "current_node": None, "step": 0,
                         "steps": 0}}
