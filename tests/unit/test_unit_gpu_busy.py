"""GPU busy %: the window arithmetic on recorded sample lists, the ring, the sampler thread with an injected reader,
and NVML's reader against a stand-in of pynvml's interface (no GPU here)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from comfy_worker.fleet.gpu_busy import BusyRing, GpuBusySampler, NvmlReader, busy_between, busy_last, start_gpu_busy
from comfy_worker.settings import SettingsError, load_settings

# A sample every 1/6 s (some GPUs' rhythm). Busy for the first second (t in (0, 1]), idle for the next one.
SIXTH = 1 / 6
RECORDED = [(round(k * SIXTH, 4), 100.0 if k <= 6 else 0.0) for k in range(1, 13)]
# Read from an H200 (driver 580): one sample each 200 ms while a matmul loop started at t = 0.
H200_MATMUL = list(zip([0.06, 0.26, 0.46, 0.66, 0.86, 1.06, 1.26, 1.46, 1.66, 1.86, 2.06, 2.26, 2.46, 2.66],
                       [1, 70, 100, 100, 100, 100, 100, 99, 100, 99, 100, 99, 100, 99], strict=True))


def test_a_window_over_every_sample_is_their_time_weighted_mean():
    assert busy_between(RECORDED, 0.0, 2.0) == pytest.approx(50.0)
    assert busy_between(RECORDED, 0.0, 1.0) == pytest.approx(100.0)
    assert busy_between(RECORDED, 1.0, 2.0) == pytest.approx(0.0)


def test_samples_read_from_an_h200():
    assert busy_between(H200_MATMUL, 0.26, 2.66) == pytest.approx(1196 / 12)
    assert busy_between(H200_MATMUL, 0.0, 0.26) == pytest.approx((0.06 * 1 + 0.2 * 70) / 0.26)
    assert busy_between(H200_MATMUL, 2.5, 3.0) == pytest.approx(99.0)  # covered up to the last sample only


def test_a_window_that_cuts_a_sample_counts_only_the_part_inside():
    # [0.5, 1.25]: 0.5 s busy, then 0.25 s idle
    assert busy_between(RECORDED, 0.5, 1.25) == pytest.approx(100 * 0.5 / 0.75)
    # inside one sample's stretch: that sample's value
    assert busy_between(RECORDED, 1.05, 1.1) == pytest.approx(0.0)
    assert busy_between(RECORDED, 0.9, 0.95) == pytest.approx(100.0)


def test_time_no_sample_covers_is_left_out_not_counted_as_idle():
    # a second of samples at 100 %, sampling stopped for 4 s, one sample at 0 % that stands for its last second
    samples = [(0.1 * k, 100.0) for k in range(1, 11)] + [(5.0, 0.0)]
    assert busy_between(samples, 0.0, 5.0) == pytest.approx(50.0)  # 1 s at 100, 1 s at 0; 3 s unknown
    assert busy_between(samples, 0.0, 5.0, max_span_s=0.5) == pytest.approx(100 * 1.0 / 1.5)
    assert busy_between(samples, 2.0, 3.5) is None  # entirely in the gap


def test_no_samples_or_a_window_outside_them_is_unknown():
    assert busy_between([], 0.0, 10.0) is None
    assert busy_between(RECORDED, 5.0, 9.0) is None  # after the last sample
    assert busy_between(RECORDED, -9.0, -2.0) is None  # before the first sample's stretch
    assert busy_between(RECORDED, 1.0, 1.0) is None  # an empty window


def test_the_first_sample_stands_for_at_most_max_span_before_it():
    assert busy_between([(10.0, 80.0)], 0.0, 20.0) == pytest.approx(80.0)
    assert busy_between([(10.0, 80.0)], 0.0, 8.9) is None


def test_the_rolling_figure_is_the_last_window_before_now():
    samples = [(float(t), 100.0 if t <= 60 else 20.0) for t in range(1, 121)]  # one a second
    assert busy_last(samples, now=120.0, window_s=60.0) == pytest.approx(20.0)
    assert busy_last(samples, now=90.0, window_s=60.0) == pytest.approx(60.0)  # 30 s at 100, 30 s at 20


def test_the_ring_keeps_its_horizon_and_totals_since_it_began():
    ring = BusyRing(horizon_s=10.0, max_span_s=1.0)
    ring.add([(float(t), 100.0) for t in range(1, 11)])
    ring.add([(float(t), 0.0) for t in range(11, 31)])
    ring.add([(30.0, 100.0), (29.5, 100.0)])  # already seen / out of order: skipped
    assert [t for t, _ in ring.samples] == [float(t) for t in range(20, 31)]
    assert ring.total() == pytest.approx(100 * 10 / 30)  # the first 10 s are gone from the ring, not from the total
    assert BusyRing().total() is None


class Recorder:
    """A sample source for the sampler: each call returns one sample per GPU at the current time."""

    def __init__(self, values: dict[int, float], failing: frozenset[int] = frozenset()) -> None:
        self.values = values
        self.failing = failing
        self.calls = 0
        self.closed = threading.Event()

    def __call__(self, gpu: int) -> list[tuple[float, float]]:
        assert not self.closed.is_set(), "read after close"
        self.calls += 1
        if gpu in self.failing:
            raise RuntimeError("GPU is lost")
        return [(time.monotonic(), self.values[gpu])]

    def close(self) -> None:
        self.closed.set()


def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_sampler_fills_each_gpus_ring_from_its_reader_and_stops_cleanly():
    recorder = Recorder({0: 90.0, 3: 30.0, 5: 50.0}, failing=frozenset({5}))
    sampler = GpuBusySampler([3, 0, 5, 3], 0.01, recorder, recorder.close)
    started = time.monotonic()
    sampler.start()
    wait_until(lambda: len(sampler._rings[3].samples) >= 10)
    assert sampler.sampling and sampler.gpus == [0, 3, 5]
    assert sampler.busy_between(0, started, time.monotonic()) == 90.0
    assert sampler.figures(3) == {"gpu_busy_pct_60s": 30.0, "gpu_busy_pct_total": 30.0}
    assert sampler.figures(5) == {"gpu_busy_pct_60s": None, "gpu_busy_pct_total": None}  # unreadable, not fatal
    assert sampler.figures(None) == {"gpu_busy_pct_60s": None, "gpu_busy_pct_total": None}  # a CPU instance
    thread = sampler._thread
    sampler.stop()
    assert thread is not None and not thread.is_alive() and recorder.closed.is_set()
    calls = recorder.calls
    time.sleep(0.05)
    assert recorder.calls == calls  # nothing read after stop
    assert sampler.figures(0)["gpu_busy_pct_60s"] is None and sampler.busy_between(0, started, time.monotonic()) is None


def test_without_nvml_a_gpu_or_sampling_every_figure_is_none():
    for sampler in (start_gpu_busy([None, None], 100), start_gpu_busy([0, 1], 0), GpuBusySampler.off(),
                    GpuBusySampler([0], 0.1, None)):
        sampler.start()
        assert not sampler.sampling and sampler._thread is None
        assert sampler.busy_between(0, 0.0, time.monotonic()) is None
        assert sampler.figures(0) == {"gpu_busy_pct_60s": None, "gpu_busy_pct_total": None}
        sampler.stop()


class NvmlError(Exception):
    def __init__(self, value: int) -> None:
        self.value = value


class StandInNvml:
    """pynvml's calls the reader makes, answering as a driver does: samples newer than the timestamp asked for,
    NOT_FOUND when there is none; or NOT_SUPPORTED for a GPU that keeps no samples."""

    NVMLError = NvmlError
    NVML_ERROR_NOT_FOUND, NVML_ERROR_NOT_SUPPORTED, NVML_GPU_UTILIZATION_SAMPLES = 6, 3, 1

    def __init__(self, keeps_samples: bool) -> None:
        self.keeps_samples = keeps_samples
        self.kept: list[tuple[int, int]] = []  # (wall-clock µs, %)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetSamples(self, handle, sampling_type, last_seen_us):
        assert sampling_type == self.NVML_GPU_UTILIZATION_SAMPLES
        if not self.keeps_samples:
            raise NvmlError(self.NVML_ERROR_NOT_SUPPORTED)
        new = [SimpleNamespace(timeStamp=t, sampleValue=SimpleNamespace(uiVal=v)) for t, v in self.kept
               if t > last_seen_us]
        if not new:
            raise NvmlError(self.NVML_ERROR_NOT_FOUND)
        return 1, new  # NVML_VALUE_TYPE_UNSIGNED_INT

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=42, memory=7)


def test_nvml_samples_are_read_once_each_on_the_monotonic_clock():
    nvml = StandInNvml(keeps_samples=True)
    reader = NvmlReader(nvml, [0])
    now_us = int(time.time() * 1e6)
    nvml.kept = [(now_us - 5_000_000, 100), (now_us + 1000, 60), (now_us + 167_000, 80)]  # the first predates it
    samples = reader(0)
    assert [v for _, v in samples] == [60.0, 80.0]
    assert samples[0][0] == pytest.approx(time.monotonic(), abs=0.05)
    assert samples[1][0] - samples[0][0] == pytest.approx(0.166, abs=1e-6)
    assert reader(0) == []  # NOT_FOUND: nothing new
    assert not reader.polls(0)


def test_a_gpu_that_keeps_no_samples_is_polled():
    reader = NvmlReader(StandInNvml(keeps_samples=False), [2])
    before = time.monotonic()
    [(at, pct)] = reader(2)
    assert pct == 42.0 and before <= at <= time.monotonic()
    assert reader._polled == {2} and reader.polls(2)


def test_the_sample_interval_is_a_performance_setting():
    assert load_settings({}).gpu_busy_sample_ms == 100
    assert load_settings({"GPU_BUSY_SAMPLE_MS": "0"}).gpu_busy_sample_ms == 0
    with pytest.raises(SettingsError, match="GPU_BUSY_SAMPLE_MS='-5' must be at least 0"):
        load_settings({"GPU_BUSY_SAMPLE_MS": "-5"})
