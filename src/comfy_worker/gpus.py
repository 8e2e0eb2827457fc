"""What GPUs this machine has, read through NVML (pynvml); none where NVML is absent."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("comfy_worker.gpus")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total_mib: int


def detect_gpus() -> list[Gpu]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:  # no driver, no library: a CPU machine
        log.info("no NVIDIA GPU found (%s): CPU instances will run", type(error).__name__)
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1 << 20)
            gpus.append(Gpu(index, name.decode() if isinstance(name, bytes) else name, int(memory)))
        return gpus
    finally:
        pynvml.nvmlShutdown()
