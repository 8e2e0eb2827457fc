"""Every failure a job can meet, each knowing the message its user reads.

    WorkerError                 the job failed; `str(error)` is the user-facing message
     ├── InvalidInput           the request is malformed: the message says which field and how to fix it
     ├── WorkflowRejected       ComfyUI refused the workflow (HTTP 400): one readable line per problem
     ├── ExecutionFailed        a node raised while the workflow ran
     ├── JobTimedOut            the job ran past its timeout; its instance was interrupted
     ├── JobInterrupted         ComfyUI reports the prompt interrupted by someone else
     ├── InstanceUnavailable    no healthy ComfyUI to run on, or the instance stopped answering
     │    └── InstanceDied      the instance's process exited during the job (retried once when no output was made)
     ├── ModelDownloadFailed    a model named by URL could not be fetched (HTTP status, size, sha256, time)
     ├── DeliveryFailed         outputs could not be returned (too large without a bucket, S3 refused)
     └── WorkerNotReady         the worker failed at start; every job gets the reason

They become `{"error": "..."}` in exactly one place: `Worker.handle`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class WorkerError(Exception):
    """A job failure whose message is meant for the user."""

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []
        self.paid_nodes_started: tuple[str, ...] = ()  # API nodes (paid calls) that began before the failure


class InvalidInput(WorkerError):
    pass


class WorkflowRejected(WorkerError):
    pass


class ExecutionFailed(WorkerError):
    def __init__(self, message: str, *, out_of_memory: bool = False, details: list[str] | None = None) -> None:
        super().__init__(message, details=details)
        self.out_of_memory = out_of_memory


class JobTimedOut(WorkerError):
    pass


class JobInterrupted(WorkerError):
    pass


class InstanceUnavailable(WorkerError):
    pass


class InstanceDied(InstanceUnavailable):
    def __init__(self, message: str, *, outputs_seen: bool) -> None:
        super().__init__(message)
        self.outputs_seen = outputs_seen


class ModelDownloadFailed(WorkerError):
    pass


class DeliveryFailed(WorkerError):
    pass


class WorkerNotReady(WorkerError):
    pass


def strip_host_paths(message: str, roots: Iterable[Path]) -> str:
    """`message` with the worker's folders cut from its paths: `/work/cpu0/input/a.png` → `cpu0/input/a.png`."""
    for root in roots:
        for form in {str(root), str(root.resolve())}:
            message = message.replace(form.rstrip("/") + "/", "")
    return message
