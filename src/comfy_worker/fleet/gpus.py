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
    pci_bus_id: str = ""  # NVML's form, e.g. 00000000:18:00.0


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
            bus_id = pynvml.nvmlDeviceGetPciInfo(handle).busId
            gpus.append(Gpu(index, _text(name), int(memory), _text(bus_id)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
