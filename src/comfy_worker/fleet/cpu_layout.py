"""Which CPU cores each GPU instance runs on.

The workload is CPU-launch-bound on fast GPUs: unpinned instances spin threads on every core and slow each other
down (docs/benchmarks). Each instance gets its own cores, from the NUMA node of its GPU where the host exposes
it, otherwise an even split; the worker process keeps a few cores for itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SYSFS = Path("/sys")


@dataclass(frozen=True)
class CpuSet:
    cpus: tuple[int, ...]
    threads: int  # OMP/MKL/torch intra-op threads for the instance

    def describe(self) -> str:
        return f"cpus {compact(self.cpus)}, {self.threads} threads"


def compact(cpus: Sequence[int]) -> str:
    """0,1,2,3,8 → '0-3,8' (the kernel's cpulist form)."""
    parts: list[str] = []
    ordered = sorted(cpus)
    start = previous = None
    for cpu in [*ordered, None]:
        if start is not None and (cpu is None or cpu != previous + 1):
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = None
        if cpu is not None and start is None:
            start = cpu
        previous = cpu
    return ",".join(parts)


def parse_cpulist(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def plan_cpu_sets(
    available: Sequence[int],
    gpu_numa_nodes: Sequence[int | None],
    numa_cpus: Mapping[int, Sequence[int]],
    worker_cpus: int,
    max_threads: int,
) -> list[CpuSet]:
    """One CpuSet per instance (in the order of `gpu_numa_nodes`).

    Instances whose GPU sits on a known NUMA node split that node's cores among themselves; otherwise all
    instances split the available cores evenly. The worker keeps the last `worker_cpus` available cores, as long as
    every instance is left at least one.
    """
    count = len(gpu_numa_nodes)
    if count == 0:
        return []
    pool = sorted(set(available))
    keep = min(worker_cpus, max(0, len(pool) - count))
    pool = pool[: len(pool) - keep] if keep else pool

    groups: dict[int | None, list[int]] = {}
    nodes_known = all(node is not None and node in numa_cpus for node in gpu_numa_nodes)
    for index, node in enumerate(gpu_numa_nodes):
        groups.setdefault(node if nodes_known else None, []).append(index)
    result: list[CpuSet | None] = [None] * count
    for node, members in groups.items():
        cores = [cpu for cpu in pool if cpu in set(numa_cpus[node])] if node is not None else pool
        if len(cores) < len(members):  # a NUMA node with too few free cores: fall back to the even split
            return plan_cpu_sets(available, [None] * count, {}, worker_cpus, max_threads)
        share = len(cores) // len(members)
        for position, index in enumerate(members):
            chunk = tuple(cores[position * share:(position + 1) * share])
            result[index] = CpuSet(chunk, max(1, min(len(chunk), max_threads)))
    return [cpu_set for cpu_set in result if cpu_set is not None]


def gpu_numa_node(pci_bus_id: str, sysfs: Path = SYSFS) -> int | None:
    """The NUMA node of a GPU from sysfs (NVML's 8-digit PCI domain shortened to the kernel's 4), None if unknown."""
    if not pci_bus_id:
        return None
    domain, _, rest = pci_bus_id.lower().partition(":")
    device = f"{domain[-4:]}:{rest}"
    try:
        node = int((sysfs / "bus/pci/devices" / device / "numa_node").read_text())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def numa_node_cpus(sysfs: Path = SYSFS) -> dict[int, list[int]]:
    nodes: dict[int, list[int]] = {}
    for folder in sorted((sysfs / "devices/system/node").glob("node[0-9]*")):
        try:
            nodes[int(folder.name[4:])] = parse_cpulist((folder / "cpulist").read_text())
        except (OSError, ValueError):
            continue
    return nodes


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))
