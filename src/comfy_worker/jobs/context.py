"""What one job carries along its path, built once when its request is parsed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from comfy_worker.comfy.follower import Execution
from comfy_worker.deadline import Deadline
from comfy_worker.delivery.outputs import OutputData, OutputFile, OutputText
from comfy_worker.fleet.instance import ComfyInstance
from comfy_worker.jobs.job_input import JobRequest
from comfy_worker.jobs.progress import ProgressReporter, Sender
from comfy_worker.jobs.stream import JobStream
from comfy_worker.logs import JobLog
from comfy_worker.models.cache import Fetched


@dataclass
class JobContext:
    """The job as it walks: what was asked, its log, deadline and cancel event, where it runs and what it measured.
    `instance` and `progress` are those of the instance it leased (a retry leases another one)."""

    job: dict[str, Any]  # RunPod's job: progress updates are sent against it
    request: JobRequest
    log: JobLog
    received: float  # time.monotonic() when the job came in
    deadline: Deadline
    send_progress: Sender | None = None
    cancel: threading.Event = field(default_factory=threading.Event)  # set: the job's threads stop what they do
    progress: ProgressReporter | None = None
    instance: ComfyInstance | None = None
    inputs: list[tuple[str, bytes]] = field(default_factory=list)
    fetched: Fetched = field(default_factory=lambda: Fetched((), 0.0, ()))
    failed_on: set[int] = field(default_factory=set)  # instances a failed run was retried away from
    timings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stream: JobStream | None = None  # STREAM_RESULTS mode: where its events go

    @property
    def job_id(self) -> str:
        return self.log.job_id


@dataclass
class RunOutcome:
    """What one job produced on its instance, read into memory before the instance is handed to the next job."""

    execution: Execution
    files: list[tuple[OutputFile, OutputData]]  # large files stay on disk until delivered
    texts: list[OutputText]
    warnings: list[str]
    timings: dict[str, Any] = field(default_factory=dict)
    job_folder: str = ""


def ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
