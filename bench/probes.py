"""What the benchmark samples from the machine: memory (/proc), CPU time per process, GPU use (NVML), bf16 peak."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import threading
from typing import Any

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
    """Samples utilisation and memory of every GPU at 4 Hz through NVML while a phase runs."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, int, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:
            return self

        def loop() -> None:
            while not self._stop.wait(0.25):
                for index, handle in enumerate(handles):
                    util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                    used = pynvml.nvmlDeviceGetMemoryInfo(handle).used // MIB
                    self.samples.append((index, util, used))

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)

    def summary(self) -> dict[int, dict[str, float]]:
        by_gpu: dict[int, list[tuple[int, int]]] = {}
        for index, util, used in self.samples:
            by_gpu.setdefault(index, []).append((util, used))
        return {index: {"util_pct": round(statistics.mean(u for u, _ in rows), 1),
                        "mem_used_mib_max": max(m for _, m in rows), "samples": len(rows)}
                for index, rows in by_gpu.items()}


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
