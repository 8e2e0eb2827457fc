"""A job's deadline: `timeout_s` (or JOB_TIMEOUT_S) counted from the moment the worker receives the job, shared by
every phase (queue, downloads, upload, run, collect, delivery), and the error that names the phase that ran out."""

from __future__ import annotations

import time
from dataclasses import dataclass

from comfy_worker.errors import JobTimedOut

# How long past its deadline a job may take to answer: the blocking steps are given their remaining time, the
# waits around them this much more, so that a step's own, more precise error arrives first.
GRACE_S = 1.0


@dataclass(frozen=True)
class Deadline:
    at: float  # time.monotonic() at which the job's time is up
    timeout_s: float

    @classmethod
    def after(cls, timeout_s: float, start: float | None = None) -> Deadline:
        return cls((time.monotonic() if start is None else start) + timeout_s, timeout_s)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def bound(self, cap: float, floor: float = 0.5) -> float:
        """A timeout for one blocking call: at most `cap`, and no longer than the job has left (but `floor`)."""
        return max(floor, min(cap, self.remaining()))

    def error(self, phase: str) -> JobTimedOut:
        return JobTimedOut(
            f"the job ran past its timeout of {self.timeout_s:g} s while {phase}. Raise 'timeout_s' in the input "
            "(or JOB_TIMEOUT_S) if the job needs longer"
        )

    def check(self, phase: str) -> None:
        if self.expired():
            raise self.error(phase)


NO_DEADLINE = Deadline(float("inf"), float("inf"))
