"""How busy each GPU is: NVML's utilization, sampled in the background, as a mean over a time window.

A daemon thread keeps the samples of every GPU the fleet uses (the last 15 minutes, plus running totals since it
started). Without NVML (a CPU machine, tests) or with GPU_BUSY_SAMPLE_MS=0 it does nothing and every figure is None.

A sample is (time.monotonic() seconds, busy %). NVML's utilization is the share of the period before its
timestamp during which a kernel ran, so a sample stands for the stretch since the previous sample (at most
`max_span_s`: time after a gap in sampling is left out rather than guessed)."""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any

log = logging.getLogger("comfy_worker.gpu_busy")

Sample = tuple[float, float]  # (time.monotonic() in seconds, busy % 0-100)
SampleReader = Callable[[int], Sequence[Sample]]  # GPU index → its samples taken since the previous call

HORIZON_S = 15 * 60.0
MAX_SPAN_S = 1.0
WINDOW_S = 60.0
STOP_WAIT_S = 5.0


def busy_between(samples: Sequence[Sample], t0: float, t1: float, max_span_s: float = MAX_SPAN_S) -> float | None:
    """Time-weighted mean busy % over [t0, t1] of samples sorted by time: each sample counts for the part of its
    stretch inside the window. Time no sample covers (before the first one, gaps longer than `max_span_s`) is left
    out; None when no part of the window is covered."""
    busy = covered = 0.0
    i = bisect.bisect_right(samples, t0, key=itemgetter(0))  # the first sample whose stretch can end after t0
    while i < len(samples):
        t, pct = samples[i]
        begin = max(samples[i - 1][0] if i else -math.inf, t - max_span_s)
        if begin >= t1:
            break
        overlap = min(t, t1) - max(begin, t0)
        if overlap > 0:
            busy += pct * overlap
            covered += overlap
        i += 1
    return busy / covered if covered > 0 else None


def busy_last(samples: Sequence[Sample], now: float, window_s: float = WINDOW_S,
              max_span_s: float = MAX_SPAN_S) -> float | None:
    """The rolling figure: busy % over the `window_s` seconds before `now`."""
    return busy_between(samples, now - window_s, now, max_span_s)


class BusyRing:
    """One GPU's samples of the last `horizon_s`, and the busy seconds and covered seconds since it began (which
    outlive the ring)."""

    def __init__(self, horizon_s: float = HORIZON_S, max_span_s: float = MAX_SPAN_S) -> None:
        self.horizon_s = horizon_s
        self.max_span_s = max_span_s
        self.samples: deque[Sample] = deque()
        self.busy_s_total = 0.0
        self.covered_s_total = 0.0

    def add(self, samples: Iterable[Sample]) -> None:
        for t, pct in samples:
            previous = self.samples[-1][0] if self.samples else -math.inf
            if t <= previous:  # already seen, or out of order
                continue
            span = min(t - previous, self.max_span_s)
            self.busy_s_total += pct / 100 * span
            self.covered_s_total += span
            self.samples.append((t, float(pct)))
        if self.samples:
            oldest = self.samples[-1][0] - self.horizon_s
            while self.samples[0][0] < oldest:
                self.samples.popleft()

    def total(self) -> float | None:
        return 100 * self.busy_s_total / self.covered_s_total if self.covered_s_total > 0 else None


class GpuBusySampler:
    """Calls `read(gpu)` for every GPU each `interval_s` in a daemon thread and keeps what it returns. A sampler
    without a reader (no NVML, sampling off) never starts a thread and answers None."""

    def __init__(self, gpus: Iterable[int], interval_s: float, read: SampleReader | None,
                 close: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.gpus = sorted(set(gpus))
        self.interval_s = interval_s
        self._read = read
        self._close = close
        self._clock = clock
        max_span_s = max(MAX_SPAN_S, 2 * interval_s)  # polled readings farther apart than 1 s still join up
        self._rings = {gpu: BusyRing(max_span_s=max_span_s) for gpu in self.gpus}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: set[int] = set()  # GPUs whose last read failed (logged once until they read again)

    @classmethod
    def off(cls) -> GpuBusySampler:
        return cls([], 1.0, None)

    @property
    def sampling(self) -> bool:
        return self._thread is not None and not self._stopped.is_set()

    def start(self) -> None:
        if self._read is None or not self.gpus or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="gpu-busy", daemon=True)
        self._thread.start()
        log.info("sampling the busy %% of GPU %s every %g ms", ", ".join(map(str, self.gpus)), self.interval_s * 1000)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)
        with self._lock:
            if self._close is not None:
                self._close()
                self._close = None

    def _run(self) -> None:
        self.poll()
        while not self._stopped.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        """Reads every GPU's new samples. Only the thread calls it: one nvmlDeviceGetSamples call takes 1.4 ms on an
        H200, which a job's answer does not wait for (its window's last samples, up to one interval, are left out)."""
        with self._lock:
            if self._read is None or self._stopped.is_set():
                return
            for gpu, ring in self._rings.items():
                try:
                    ring.add(self._read(gpu))
                except Exception as error:  # a GPU that cannot be read must not end the sampling of the others
                    if gpu not in self._failing:
                        log.warning("GPU %d: its utilization could not be read (%s: %s)", gpu, type(error).__name__,
                                    error)
                    self._failing.add(gpu)
                else:
                    self._failing.discard(gpu)

    def _samples(self, gpu: int | None) -> tuple[BusyRing, list[Sample]] | None:
        if gpu not in self._rings or not self.sampling:
            return None
        with self._lock:
            ring = self._rings[gpu]
            return ring, list(ring.samples)

    def busy_between(self, gpu: int | None, t0: float, t1: float) -> float | None:
        """Busy % of `gpu` between two time.monotonic() readings; None without a GPU, samples or NVML."""
        found = self._samples(gpu)
        return _rounded(busy_between(found[1], t0, t1, found[0].max_span_s)) if found else None

    def figures(self, gpu: int | None) -> dict[str, float | None]:
        """An instance's metrics: its GPU's busy % over the last 60 s and since the sampling started."""
        found = self._samples(gpu)
        if found is None:
            return {"gpu_busy_pct_60s": None, "gpu_busy_pct_total": None}
        ring, samples = found
        with self._lock:
            total = ring.total()
        return {"gpu_busy_pct_60s": _rounded(busy_last(samples, self._clock(), WINDOW_S, ring.max_span_s)),
                "gpu_busy_pct_total": _rounded(total)}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def start_gpu_busy(gpus: Iterable[int | None], sample_ms: int) -> GpuBusySampler:
    """The fleet's sampler, sampling: off where GPU_BUSY_SAMPLE_MS is 0, there is no GPU, or NVML cannot be
    opened."""
    indexes = sorted({gpu for gpu in gpus if gpu is not None})
    if sample_ms <= 0 or not indexes:
        return GpuBusySampler.off()
    reader = NvmlReader.open(indexes)
    if reader is None:
        return GpuBusySampler.off()
    sampler = GpuBusySampler(indexes, sample_ms / 1000, reader, reader.close)
    sampler.start()
    return sampler


# The field of NVML's value union that holds each value type (nvmlValueType_t).
_VALUE_FIELDS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
NO_SAMPLES_FALLBACK_S = 3.0


class NvmlReader:
    """Reads a GPU's utilization samples: the driver's own (every 200 ms on an H200) through nvmlDeviceGetSamples, or,
    on a GPU that does not keep them, one nvmlDeviceGetUtilizationRates reading per call."""

    def __init__(self, nvml: Any, indexes: list[int]) -> None:
        self._nvml = nvml
        self._handles = {gpu: nvml.nvmlDeviceGetHandleByIndex(gpu) for gpu in indexes}
        now_us = int(time.time() * 1e6)  # NVML stamps samples with the wall clock, in µs
        self._last_seen = dict.fromkeys(indexes, now_us)
        self._polled: set[int] = set()
        self._got_samples: set[int] = set()
        self._opened = time.monotonic()

    @classmethod
    def open(cls, indexes: list[int]) -> NvmlReader | None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as error:  # no driver, no library: nothing to sample
            log.info("GPU busy %% not sampled: NVML is not available (%s)", type(error).__name__)
            return None
        try:
            return cls(pynvml, indexes)
        except Exception as error:
            log.warning("GPU busy %% not sampled: NVML could not open GPU %s (%s)", indexes, error)
            pynvml.nvmlShutdown()
            return None

    def __call__(self, gpu: int) -> list[Sample]:
        nvml, handle = self._nvml, self._handles[gpu]
        if gpu in self._polled:
            return [(time.monotonic(), float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))]
        try:
            value_type, samples = nvml.nvmlDeviceGetSamples(handle, nvml.NVML_GPU_UTILIZATION_SAMPLES,
                                                            self._last_seen[gpu])
        except nvml.NVMLError as error:
            nothing_new = error.value == nvml.NVML_ERROR_NOT_FOUND
            if nothing_new and (gpu in self._got_samples or time.monotonic() - self._opened < NO_SAMPLES_FALLBACK_S):
                return []
            if not nothing_new and error.value != nvml.NVML_ERROR_NOT_SUPPORTED:
                raise
            log.info("GPU %d keeps no utilization samples (%s): its utilization is polled instead", gpu, error)
            self._polled.add(gpu)
            return self(gpu)
        if not samples:
            return []
        self._got_samples.add(gpu)
        self._last_seen[gpu] = max(s.timeStamp for s in samples)
        field = _VALUE_FIELDS[value_type] if 0 <= value_type < len(_VALUE_FIELDS) else "uiVal"
        wall_minus_monotonic = time.time() - time.monotonic()
        return sorted((s.timeStamp / 1e6 - wall_minus_monotonic, float(getattr(s.sampleValue, field)))
                      for s in samples)

    def polls(self, gpu: int) -> bool:
        """Whether `gpu` is polled (no driver samples): each call is then one reading, so call it more often."""
        return gpu in self._polled

    def close(self) -> None:
        self._nvml.nvmlShutdown()
