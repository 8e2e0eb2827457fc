"""Per-instance counters: what each GPU did, how long jobs waited and ran."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class InstanceMetrics:
    label: str
    gpu: int | None = None  # its GPU's index (INSTANCES_PER_GPU may put several instances on one)
    jobs: int = 0
    successes: int = 0
    failures: int = 0
    out_of_memory: int = 0
    queue_length: int = 0
    running: int = 0
    wait_ms_total: float = 0.0
    execution_ms_total: float = 0.0

    def record(self, *, ok: bool, wait_ms: float, execution_ms: float, out_of_memory: bool) -> None:
        self.jobs += 1
        self.successes += ok
        self.failures += not ok
        self.out_of_memory += out_of_memory
        self.wait_ms_total += wait_ms
        self.execution_ms_total += execution_ms

    def snapshot(self) -> dict[str, float | int | str]:
        jobs = max(self.jobs, 1)
        return {
            "instance": self.label,
            "gpu": self.gpu,
            "jobs": self.jobs,
            "successes": self.successes,
            "failures": self.failures,
            "success_rate": round(self.successes / jobs, 4) if self.jobs else None,
            "out_of_memory": self.out_of_memory,
            "queue_length": self.queue_length,
            "running": self.running,
            "mean_wait_ms": round(self.wait_ms_total / jobs, 1),
            "mean_execution_ms": round(self.execution_ms_total / jobs, 1),
        }

    def log_line(self) -> str:
        s = self.snapshot()
        return (f"[{self.label}] jobs={s['jobs']} ok={s['successes']} failed={s['failures']} oom={s['out_of_memory']} "
                f"queued={s['queue_length']} wait={s['mean_wait_ms']}ms exec={s['mean_execution_ms']}ms")
