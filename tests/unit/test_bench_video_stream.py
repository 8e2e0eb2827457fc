"""The video benchmark's stream mode, its pure parts: videos per hour of a stream, the summary against vanilla
(VS), s/step from the probe's records, and the read-back that fails a job whose output is broken."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

BENCH_VIDEO = Path(__file__).resolve().parents[2] / "bench" / "video"
sys.path.append(str(BENCH_VIDEO))  # last: its report.py must not shadow bench/report.py for other tests
sys.path.append(str(BENCH_VIDEO.parent))  # bench/: prompt_timing.py

from output_check import check_output, expected_frames  # noqa: E402
from stream import STREAM_CONFIGS, median_step_s, stream_record, stream_summary, stream_wall_s  # noqa: E402

_spec = importlib.util.spec_from_file_location("video_report", BENCH_VIDEO / "report.py")
assert _spec is not None and _spec.loader is not None
video_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(video_report)


def job(done_s: float, ok: bool = True, instance: str | None = "gpu0") -> dict:
    return {"ok": ok, "done_s": done_s, "instance": instance}


def test_a_stream_counts_finished_jobs_per_hour_over_the_whole_wall_time():
    record = stream_record([job(30.0), job(60.0, instance="gpu0b"), job(90.0, ok=False, instance=None)], 90.0,
                           "videos", 97.5)
    assert record["ok"] == 2 and record["failed"] == 1
    assert record["videos_per_hour"] == 80.0  # 2 videos in 90 s; the failed job's time counts, the job does not
    assert record["per_instance"] == {"gpu0": 1, "gpu0b": 1, "failed": 1}
    assert record["done_s"] == [30.0, 60.0, 90.0] and record["busy_pct_stream"] == 97.5
    assert stream_record([], 0.0, "videos", None)["videos_per_hour"] is None


def config(name: str, rate: float | None, failed: int = 0, busy: float | None = None) -> dict:
    return {"spec": STREAM_CONFIGS[name], "videos_per_hour": rate, "failed": failed, "busy_pct_stream": busy,
            "unit": "videos"}


def test_the_summary_takes_the_best_worker_configuration_without_a_failed_job():
    configs = {"VS": config("VS", 400.0, busy=80.0), "WS": config("WS", 440.0, busy=88.0),
               "WS2": config("WS2", 520.0, failed=1), "W": {"spec": {"base": "worker"}, "jobs": []}}
    summary = stream_summary(configs, cpu=False)
    assert summary["videos_per_hour"] == {"VS": 400.0, "WS": 440.0, "WS2": 520.0}  # W is not a stream
    assert summary["ratio_to_VS"] == {"VS": 1.0, "WS": 1.1, "WS2": 1.3}
    assert summary["best_worker"] == "WS" and summary["best_worker_to_VS"] == 1.1  # WS2 lost a job
    assert summary["busy_pct"]["WS"] == 88.0 and summary["failed"]["WS2"] == 1 and summary["note"] is None


def test_the_summary_without_vanilla_has_no_ratio_and_a_dry_run_says_so():
    summary = stream_summary({"WS": config("WS", 100.0), "WS2": config("WS2", 150.0)}, cpu=True)
    assert summary["best_worker"] == "WS2" and summary["best_worker_to_VS"] is None and summary["ratio_to_VS"] == {}
    assert "not a result" in summary["note"]


def test_a_vanilla_stream_that_lost_a_job_is_no_baseline_and_an_unfinished_job_leaves_the_time_waited():
    summary = stream_summary({"VS": config("VS", 400.0, failed=1), "WS": config("WS", 440.0)}, cpu=False)
    assert summary["ratio_to_VS"] == {} and summary["best_worker_to_VS"] is None and summary["best_worker"] == "WS"
    assert stream_wall_s([{"done_s": 8.0}, {"done_s": 17.5}], 30.0) == 17.5
    assert stream_wall_s([{"done_s": 8.0}, {"done_s": None, "ok": False}], 30.0) == 30.0
    assert stream_wall_s([], 2.0) == 2.0


def test_the_report_table_shows_each_stream_configuration_against_vs():
    streams = (("VS", [job(9.0, instance="vanilla")] * 2, 18.0, 70.0), ("WS", [job(8.0)] * 2, 16.0, 90.0))
    configs = {name: {"spec": STREAM_CONFIGS[name], **stream_record(jobs, wall, "videos", busy)}
               for name, jobs, wall, busy in streams}
    table = video_report.stream_table({"configs": configs, "stream_summary": stream_summary(configs, cpu=False)})
    assert "| VS | 400.0 | 1.0 | 70.0 | 2 / 2 | 18.0 |" in table
    assert "| WS | 450.0 | 1.125 | 90.0 | 2 / 2 | 16.0 | {'gpu0': 2} |" in table
    assert "best worker configuration: WS, 1.125 × VS" in table


def test_s_per_step_pairs_steps_within_one_sampler_run_only():
    events = {"events": [{"kind": "UNETLoader", "t0": 0, "t1": 5},
                         {"kind": "KSampler", "steps": [10.0, 10.5, 11.0]},
                         {"kind": "KSampler", "steps": [50.0, 50.6, 51.2, 51.8]}]}
    assert median_step_s(events) == 0.6  # 0.5, 0.5, 0.6, 0.6, 0.6: the 39 s between the runs is not a step
    assert median_step_s({"events": []}) is None


def test_wan_videos_have_four_frames_a_latent_after_the_first():
    assert expected_frames("wan1.3b", 33) == 33 and expected_frames("wan14b", 81) == 81
    assert expected_frames("wan1.3b", 7) == 5 and expected_frames("flux12b", 1) is None


def tiny_mp4(frames: int) -> bytes:
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), index * 20, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def test_an_output_that_does_not_read_back_or_has_the_wrong_length_fails(tmp_path: Path):
    video = tiny_mp4(5)
    good = check_output(video, "wan_bench_00001_.mp4", 5, tmp_path)
    assert good["frames"] == 5 and good["width"] == 64 and "error" not in good
    assert "asked for 9" in check_output(video, "wan_bench_00001_.mp4", 9, tmp_path)["error"]
    assert "error" in check_output(video[: len(video) // 3], "cut.mp4", 5, tmp_path)
    assert "error" in check_output(b"not a png", "flux_bench_00001_.png", None, tmp_path)
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (8, 4)).save(png, format="PNG")
    assert check_output(png.getvalue(), "flux_bench_00001_.png", None, tmp_path) == {
        "bytes": len(png.getvalue()), "width": 8, "height": 4}
