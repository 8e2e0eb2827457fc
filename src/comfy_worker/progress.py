"""Forwards a job's progress to RunPod (`/status` shows it), at most once per interval."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Sender = Callable[[dict[str, Any], dict[str, Any]], None]


def runpod_sender(job: dict[str, Any], payload: dict[str, Any]) -> None:
    import runpod

    runpod.serverless.progress_update(job, payload)


class ProgressReporter:
    def __init__(self, job: dict[str, Any], gpu_label: str, interval_s: float, send: Sender | None) -> None:
        self.job = job
        self.gpu_label = gpu_label
        self.interval_s = interval_s
        self.send = send
        self.sent: list[dict[str, Any]] = []
        self._last_sent = float("-inf")

    def __call__(self, update: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.send is None or now - self._last_sent < self.interval_s:
            return
        self._last_sent = now
        payload = {"status": "running", "gpu": self.gpu_label, **update}
        self.sent.append(payload)
        self.send(self.job, payload)
