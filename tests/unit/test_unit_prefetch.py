"""Reading model files into the page cache ahead of ComfyUI: residency from mincore, every byte read once, files
already cached or already being read skipped."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from comfy_worker.models.prefetch import CHUNK_BYTES, Prefetcher, read_into_page_cache, resident_fraction


def test_a_file_just_written_is_resident_and_is_not_read_again(tmp_path: Path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(3 * CHUNK_BYTES // 2))
    assert resident_fraction(path) == 1.0
    report = read_into_page_cache([path], threads=4)
    assert report.files_resident == ["model.safetensors"] and report.bytes_read == 0


def test_files_not_resident_are_read_whole_in_chunks_over_several_readers(tmp_path: Path):
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    paths[0].write_bytes(os.urandom(2 * CHUNK_BYTES + 5))
    paths[1].write_bytes(b"")
    report = read_into_page_cache([*paths, paths[0]], threads=3, residency=lambda _: 0.0)
    assert report.files_read == ["a.safetensors", "b.safetensors"]  # each once
    assert report.bytes_read == 2 * CHUNK_BYTES + 5 and report.error is None
    assert report.summary()["mb_read"] == round((2 * CHUNK_BYTES + 5) / 1e6, 1)


def test_a_file_that_cannot_be_read_is_reported_not_raised(tmp_path: Path):
    path = tmp_path / "gone.safetensors"
    path.write_bytes(b"x" * 10)
    unreadable = tmp_path / "dir.safetensors"
    unreadable.mkdir()
    report = read_into_page_cache([path, unreadable], threads=2, residency=lambda _: 0.0)
    assert report.error is not None and "IsADirectoryError" in report.error


def test_the_prefetcher_reads_in_the_background_and_skips_files_in_flight(tmp_path: Path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\0" * 1024)
    prefetcher = Prefetcher(threads=2)
    prefetcher._busy.add(path)  # another job is reading it
    assert prefetcher.start([path], "job-b") is None
    prefetcher._busy.clear()
    reading = prefetcher.start([path], "job-a")
    assert isinstance(reading, threading.Thread)
    reading.join(10)
    assert not prefetcher._busy  # released when done
    assert Prefetcher(threads=0).start([path], "off") is None
