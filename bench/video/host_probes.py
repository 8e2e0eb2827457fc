"""Host-side measurements for the video benchmark: NVML sampling (busy, memory, PCIe), a ballast process that turns
the GPU into a smaller card, page-cache eviction and disk-read rates, process memory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes import GpuSampler as _Sampler

from comfy_worker.models.prefetch import read_into_page_cache


class GpuSampler(_Sampler):
    """NVML on GPU 0 every 100 ms, from now until stop(): busy %, memory used, PCIe receive rate (bench/probes.py)."""

    def __init__(self) -> None:
        super().__init__(gpus=[0], period_s=0.1, pcie=True)
        self.start()


class Ballast:
    """A separate process holding GPU memory so that only `free_gib` GiB stay free: a hard cap like a real card."""

    def __init__(self, free_gib: float) -> None:
        code = ("import sys,time,torch\n"
                "torch.zeros(1, device='cuda'); free, total = torch.cuda.mem_get_info()\n"
                "n = free - int(float(sys.argv[1]) * 2**30)\n"
                "x = torch.empty(n, dtype=torch.uint8, device='cuda'); x[::4096].fill_(1); torch.cuda.synchronize()\n"
                "print('BALLAST', n >> 20, torch.cuda.mem_get_info()[0] >> 20, total >> 20, flush=True)\n"
                "time.sleep(86400)\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
        self.process = subprocess.Popen([sys.executable, "-c", code, str(free_gib)], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
        self.info: dict[str, Any] = {"free_gib_target": free_gib}
        started = time.time()
        line = ""
        while time.time() - started < 60:
            line = self.process.stdout.readline()
            if line.startswith("BALLAST") or self.process.poll() is not None:
                break
        parts = line.split()
        if len(parts) == 4:
            self.info.update(held_mib=int(parts[1]), free_after_mib=int(parts[2]), total_mib=int(parts[3]))
        else:
            self.info["error"] = line[-300:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def evict(paths: list[Path]) -> None:
    """Drops the files from the page cache (posix_fadvise DONTNEED after a sync): the next read comes from disk."""
    subprocess.run(["sync"], check=False)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_read_rates(paths: list[Path], threads: int) -> dict[str, Any]:
    """Cold reads of the files: all of them with `threads` readers (the disk's limit for the job's bytes), and the
    smallest of over 1 GB alone with one reader (one stream, as an mmap faults pages in); the files are evicted
    again afterwards."""
    evict(paths)
    parallel = read_into_page_cache(paths, threads, residency=lambda _: 0.0)
    sizes = sorted(paths, key=lambda p: p.stat().st_size)
    largest = next((p for p in sizes if p.stat().st_size > 1e9), sizes[-1])
    evict(paths)
    single = read_into_page_cache([largest], 1, residency=lambda _: 0.0)
    evict(paths)
    return {"bytes": parallel.bytes_read, "threads": threads, "parallel_s": round(parallel.seconds, 2),
            "parallel_gb_per_s": round(parallel.bytes_read / parallel.seconds / 1e9, 2),
            "single_file": largest.name, "single_gb_per_s": round(single.bytes_read / single.seconds / 1e9, 2)}


def process_memory_mib(pid: int | None) -> dict[str, int]:
    """Rss, Pss and anonymous (private) memory of a process, from smaps_rollup."""
    result: dict[str, int] = {}
    if pid is None:
        return result
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if match := re.match(r"(Rss|Pss|Anonymous|Pss_Anon|Pss_File):\s+(\d+) kB", line):
                result[match[1]] = int(match[2]) >> 10
    except OSError:
        pass
    return result


def meminfo_used_mib() -> int:
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        values[key] = int(value.split()[0])
    return (values["MemTotal"] - values["MemAvailable"]) >> 10
