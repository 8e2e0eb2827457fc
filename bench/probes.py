"""What the benchmark samples from the machine: memory (/proc), CPU time per process, GPU use (NVML), bf16 peak."""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from comfy_worker.fleet.gpu_busy import NvmlReader, busy_between

MIB = 1 << 20


def meminfo_mib() -> dict[str, int]:
    wanted = ("MemTotal", "MemAvailable", "Cached", "AnonPages", "Shmem", "Mapped")
    values = {}
    with open("/proc/meminfo") as file:
        for line in file:
            key, _, rest = line.partition(":")
            if key in wanted:
                values[key] = int(rest.split()[0]) // 1024
    values["Used"] = values["MemTotal"] - values["MemAvailable"]
    return values


def smaps_mib(pid: int | None) -> dict[str, int]:
    """Rss, Pss, Pss_Anon, Pss_File, Anonymous, Private_* of a process from /proc/PID/smaps_rollup."""
    values: dict[str, int] = {}
    if pid is None:
        return values
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                match = re.match(r"(\w+):\s+(\d+) kB", line)
                if match:
                    values[match[1]] = int(match[2]) // 1024
    except OSError:
        pass
    return values


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GpuSampler:
    """NVML sampling on a thread while a phase runs: busy % and memory used of every GPU (or the given ones), and
    optionally the PCIe receive rate. Busy % is read as the worker reads it (comfy_worker.fleet.gpu_busy: the
    driver's own timestamped samples, else one nvmlDeviceGetUtilizationRates reading per call, here every 50 ms).
    Without NVML (a CPU dry run) it samples nothing: `ok` is False and `error` says why. Times are Unix seconds
    (time.time())."""

    POLL_PERIOD_S = 0.05

    def __init__(self, gpus: list[int] | None = None, period_s: float = 0.25, pcie: bool = False) -> None:
        self.busy: dict[int, list[tuple[float, float]]] = {}
        self.memory: dict[int, list[tuple[float, int, float | None]]] = {}  # (t, used MiB, PCIe rx KB/s)
        self.ok, self.error, self.method = False, "", "none"
        self.name, self.total_mib = None, None
        self._period_s, self._pcie = period_s, pcie
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            indices = gpus if gpus is not None else list(range(pynvml.nvmlDeviceGetCount()))
            self._handles = {index: pynvml.nvmlDeviceGetHandleByIndex(index) for index in indices}
            self.nvml = pynvml
            self._reader = NvmlReader(pynvml, indices)
            first = next(iter(self._handles.values()))
            self.name = pynvml.nvmlDeviceGetName(first)
            self.total_mib = pynvml.nvmlDeviceGetMemoryInfo(first).total // MIB
            self.ok = True
        except Exception as error:  # no GPU, no driver: a CPU dry run
            self.error = f"no NVML: {error!r}"

    def start(self) -> GpuSampler:
        if self.ok and self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _loop(self) -> None:
        nv = self.nvml
        wall_minus_monotonic = time.time() - time.monotonic()  # the reader stamps samples with time.monotonic()
        next_memory = 0.0
        while not self._stop.is_set():
            now = time.time()
            for index, handle in self._handles.items():
                with contextlib.suppress(nv.NVMLError):
                    self.busy.setdefault(index, []).extend(
                        (t + wall_minus_monotonic, busy) for t, busy in self._reader(index))
                if now >= next_memory:
                    with contextlib.suppress(nv.NVMLError):
                        rx = nv.nvmlDeviceGetPcieThroughput(handle, nv.NVML_PCIE_UTIL_RX_BYTES) if self._pcie else None
                        self.memory.setdefault(index, []).append(
                            (now, nv.nvmlDeviceGetMemoryInfo(handle).used // MIB, rx))
            if now >= next_memory:
                next_memory = now + 0.1
            polled = any(self._reader.polls(index) for index in self._handles)
            self.method = "utilization_rates" if polled else "samples"
            self._stop.wait(self.POLL_PERIOD_S if polled else self._period_s)

    def used_mib(self, gpu: int = 0) -> int | None:
        return self.nvml.nvmlDeviceGetMemoryInfo(self._handles[gpu]).used // MIB if self.ok else None

    def busy_pct(self, gpu: int, start: float, end: float) -> float | None:
        """Busy % of one GPU between two Unix times, each sample weighted by the time it stands for, as the worker
        weighs them; None without samples there."""
        busy = busy_between(self.busy.get(gpu, []), start, end)
        return None if busy is None else round(busy, 1)

    def timeline(self, gpu: int, start: float, end: float | None = None) -> list[tuple[float, int]]:
        """(seconds after `start`, busy %) of one GPU."""
        return [(round(t - start, 3), busy) for t, busy in self.busy.get(gpu, [])
                if t >= start and (end is None or t <= end)]

    def busy_record(self, start: float, end: float) -> dict[str, Any]:
        """Every sampled GPU's busy timeline and mean busy % between two Unix times, and how it was sampled."""
        return {"gpu_timeline": {gpu: self.timeline(gpu, start, end) for gpu in self.busy},
                "busy_pct": {gpu: self.busy_pct(gpu, start, end) for gpu in self.busy},
                "sampler": {"method": self.method, "error": self.error}}

    def window(self, start: float, end: float, gpu: int = 0) -> dict[str, Any]:
        """Busy, memory and PCIe receive rate of one GPU between two Unix times."""
        memory = [m for m in self.memory.get(gpu, []) if start <= m[0] <= end]
        busy = self.busy_pct(gpu, start, end)
        if busy is None and not memory:
            return {}
        result: dict[str, Any] = {"busy_mean": busy, "mem_max_mib": max((m[1] for m in memory), default=None),
                                  "samples": len([t for t, _ in self.busy.get(gpu, []) if start <= t <= end])}
        rx = [m[2] for m in memory if m[2] is not None]
        if rx:
            result["pcie_rx_gb_per_s_mean"] = round(statistics.mean(rx) / 1e6, 2)
        return result

    def summary(self) -> dict[int, dict[str, float]]:
        """Per GPU over the whole sampling: mean busy %, most memory used, how many busy samples."""
        return {index: {"util_pct": round(statistics.mean(b for _, b in rows), 1),
                        "mem_used_mib_max": max((m[1] for m in self.memory.get(index, [])), default=0),
                        "samples": len(rows)}
                for index, rows in self.busy.items() if rows}


PEAK_SCRIPT = """
import json, time, torch
if not torch.cuda.is_available():
    print(json.dumps({"bf16_tflops": None})); raise SystemExit
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16); b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(20): a @ b
torch.cuda.synchronize(); best = 0.0
for _ in range(5):
    start = time.perf_counter()
    for _ in range(50): a @ b
    torch.cuda.synchronize()
    best = max(best, 2 * n**3 * 50 / (time.perf_counter() - start) / 1e12)
print(json.dumps({"bf16_tflops": round(best, 1), "gpu": torch.cuda.get_device_name()}))
"""


def bf16_peak_tflops(gpu: int = 0) -> dict[str, Any]:
    """The measured dense bf16 matmul peak of one GPU (8192³, best of 5 × 50), in a short child process."""
    import json

    env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu))
    try:
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, timeout=120, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as error:
        return {"bf16_tflops": None, "error": repr(error)}
