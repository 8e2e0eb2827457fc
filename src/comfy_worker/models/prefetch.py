"""Reading a job's model files into the page cache ahead of ComfyUI, with several readers at once.

ComfyUI maps a safetensors file and faults its pages in one after another (about 1 GB/s from a network volume or
a cold local disk, docs/benchmarks/video.md); a disk or volume serves several readers faster than one. The worker
starts these reads as soon as a job arrives — while it waits for an instance, uploads inputs and encodes the
prompt — so that ComfyUI's own reads find the pages already cached. Files already resident are skipped after a
cheap check (mincore over a sample of pages), so a warm job costs no reads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("comfy_worker.prefetch")

CHUNK_BYTES = 16 << 20
RESIDENT_ENOUGH = 0.95  # files at least this resident (by sampled pages) are not read again
SAMPLE_PAGES = 4096

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
MAP_FAILED = ctypes.c_void_p(-1).value


def resident_fraction(path: Path) -> float | None:
    """The share of the file's pages in the page cache, from mincore over up to SAMPLE_PAGES evenly spaced pages;
    None where the check is not possible (then the file is read)."""
    page = mmap.PAGESIZE
    try:
        size = path.stat().st_size
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if size == 0:
            return 1.0
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, MAP_FAILED):
            return None
        try:
            pages = (size + page - 1) // page
            vector = (ctypes.c_ubyte * pages)()
            if _libc.mincore(address, size, vector) != 0:
                return None
            step = max(1, pages // SAMPLE_PAGES)
            sampled = range(0, pages, step)
            return sum(vector[i] & 1 for i in sampled) / len(sampled)
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)


@dataclass
class PrefetchReport:
    files_read: list[str] = field(default_factory=list)
    files_resident: list[str] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0
    error: str | None = None

    def summary(self) -> dict[str, object]:
        rate = self.bytes_read / self.seconds / 1e9 if self.seconds > 0 and self.bytes_read else None
        return {"files_read": self.files_read, "files_already_cached": self.files_resident,
                "mb_read": round(self.bytes_read / 1e6, 1), "seconds": round(self.seconds, 2),
                "gb_per_s": round(rate, 2) if rate else None, **({"error": self.error} if self.error else {})}


def read_into_page_cache(paths: Iterable[Path], threads: int,
                         residency: Callable[[Path], float | None] = resident_fraction) -> PrefetchReport:
    """Reads every file not yet resident, in CHUNK_BYTES pieces over `threads` readers; blocks until done."""
    report = PrefetchReport()
    started = time.monotonic()
    pieces: list[tuple[Path, int, int]] = []
    for path in dict.fromkeys(paths):
        fraction = residency(path)
        if fraction is not None and fraction >= RESIDENT_ENOUGH:
            report.files_resident.append(path.name)
            continue
        size = path.stat().st_size
        report.files_read.append(path.name)
        pieces += [(path, offset, min(CHUNK_BYTES, size - offset)) for offset in range(0, size, CHUNK_BYTES)]
    if pieces:
        local = threading.local()

        def read(piece: tuple[Path, int, int]) -> int:
            path, offset, length = piece
            buffer = getattr(local, "buffer", None)
            if buffer is None:
                buffer = local.buffer = bytearray(CHUNK_BYTES)
            fd = os.open(path, os.O_RDONLY)
            try:
                return os.preadv(fd, [memoryview(buffer)[:length]], offset)
            finally:
                os.close(fd)

        try:
            with ThreadPoolExecutor(max(1, threads), thread_name_prefix="prefetch") as pool:
                report.bytes_read = sum(pool.map(read, pieces))
        except OSError as error:
            report.error = f"{type(error).__name__}: {error}"
    report.seconds = time.monotonic() - started
    return report


class Prefetcher:
    """Starts read_into_page_cache in the background, one run per set of files at a time."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._busy: set[Path] = set()
        self._lock = threading.Lock()

    def start(self, paths: Iterable[Path], label: str) -> threading.Thread | None:
        """Reads the files not already being read by another job; returns the reading thread (None: nothing to do)."""
        if self.threads <= 0:
            return None
        with self._lock:
            todo = [p for p in dict.fromkeys(paths) if p not in self._busy]
            self._busy.update(todo)
        if not todo:
            return None

        def run() -> None:
            try:
                report = read_into_page_cache(todo, self.threads)
                if report.files_read or report.error:
                    log.info("[%s] model files read ahead: %s", label, report.summary())
            finally:
                with self._lock:
                    self._busy.difference_update(todo)

        thread = threading.Thread(target=run, name=f"prefetch-{label}", daemon=True)
        thread.start()
        return thread
