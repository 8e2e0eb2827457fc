"""The video benchmark's stream mode (issue 15): N jobs of the workload submitted at once, as RunPod submits them,
to vanilla ComfyUI (every prompt posted to its /prompt, then a wait for all) and to the worker (N Worker.handle
calls gathered on the bench's loop). After one warm-up job per instance (the model load; not counted): the
stream's wall time, videos (or images) per hour, each job's finish time and instance, s/step per instance, GPU busy
% over the stream, and every returned output read back (outputs.check_output), so that a broken output fails its
job. `stream_summary` compares the configurations."""

from __future__ import annotations

import asyncio
import base64
import itertools
import statistics
import time
import uuid
from typing import Any

import requests
from output_check import check_output, expected_frames
from prompt_timing import post_all_timed

STREAM_CONFIGS: dict[str, dict[str, Any]] = {
    "VS": {"base": "vanilla", "stream": True},
    "WS": {"base": "worker", "stream": True},
    # `auto` picks one instance when no WARMUP_WORKFLOW is set; a CPU dry run has no GPU to share: two CPU instances
    "WS2": {"base": "worker", "stream": True, "env": {"INSTANCES_PER_GPU": "2"},
            "cpu_env": {"COMFY_CPU_INSTANCES": "2"}},
}
MIN_STREAM_LEFT_S = 60  # seconds of the deadline a stream needs to be worth starting


def run_stream(run: Any, worker: Any, instances: list[Any], image_name: str) -> dict[str, Any]:
    """One warm-up job per instance, submitted together (each instance loads the models; not counted), then the
    stream of run.args.stream_jobs jobs. `run` is video_bench's Run; `worker` None for vanilla ComfyUI; `image_name`
    what the workflow's LoadImage (I2V) reads."""
    image = None
    if "LoadImage" in {node["class_type"] for node in run.workflow({}).values()}:
        image = (image_name, run.start_image())
    if image and worker is None:  # vanilla: ComfyUI's own upload endpoint, once
        instances[0].client.upload_input(*image)
    warm = submit_all(run, worker, instances[0], len(instances), image)
    record: dict[str, Any] = {"warm_jobs": warm}
    for instance in instances:
        probe_events(instance)  # the warm-up's records, dropped
    if run.left() < MIN_STREAM_LEFT_S:
        return {**record, "skipped": f"{run.left():.0f} s of the deadline left after the warm-up"}
    started = time.time()
    jobs = submit_all(run, worker, instances[0], run.args.stream_jobs, image)
    wall = stream_wall_s(jobs, time.time() - started)
    gpu = run.gpu.window(started, started + wall)
    steps = {instance.label if worker else "vanilla": median_step_s(probe_events(instance)) for instance in instances}
    unit = "videos" if expected_frames(run.args.workload, run.args.frames) else "images"
    return {**record, **stream_record(jobs, wall, unit, gpu.get("busy_mean")), "jobs": jobs, "gpu": gpu,
            "s_per_step_by_instance": steps,
            "sampler_note": None if gpu else f"no GPU samples: {getattr(run.gpu, 'error', '')}"}


def stream_wall_s(jobs: list[dict[str, Any]], waited_s: float) -> float:
    """First submission to the last answer; a job that never finished (done_s None) leaves the time waited."""
    finished = [job["done_s"] for job in jobs if job.get("done_s") is not None]
    return waited_s if len(finished) < len(jobs) else max(finished, default=waited_s)


def submit_all(run: Any, worker: Any, instance: Any, count: int, image: tuple[str, bytes] | None
               ) -> list[dict[str, Any]]:
    """`count` jobs at once; each job's record with its outputs read back after the last one finished."""
    graphs = [run.workflow({}) for _ in range(count)]
    if worker is None:
        done = vanilla_all(instance, graphs, timeout_s=max(MIN_STREAM_LEFT_S, run.left()))
    else:
        done = run.loop.run_until_complete(worker_all(worker, graphs, image))
    frames = expected_frames(run.args.workload, run.args.frames)
    for job, files in done:
        checks = [check_output(data, name, frames, run.work) for name, data in files]
        job["outputs"] = checks
        if job["ok"] and not checks:
            job.update(ok=False, error="the job returned no output")
        elif job["ok"] and any("error" in check for check in checks):
            job.update(ok=False, error="an output did not read back: " + next(c["error"] for c in checks
                                                                                  if "error" in c))
    return [job for job, _ in done]


async def worker_all(worker: Any, graphs: list[dict[str, Any]], image: tuple[str, bytes] | None
                     ) -> list[tuple[dict[str, Any], list[tuple[str, bytes]]]]:
    started = time.monotonic()

    async def one(index: int, graph: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
        job_input: dict[str, Any] = {"workflow": graph}
        if image:  # the I2V start image as the job's `images` input, the way a client sends it
            job_input["images"] = [{"name": image[0], "image": base64.b64encode(image[1]).decode()}]
        answer = await worker.handle({"id": f"stream-{uuid.uuid4().hex[:8]}", "input": job_input})
        return worker_job(index, time.monotonic() - started, answer), returned_files(answer)

    return list(await asyncio.gather(*(one(index, graph) for index, graph in enumerate(graphs))))


def worker_job(index: int, done_s: float, answer: dict[str, Any]) -> dict[str, Any]:
    timings = answer.get("timings", {})
    seconds = {f"{key.removesuffix('_ms')}_s": round(timings[key] / 1000, 2)
               for key in ("queue_wait_ms", "execution_ms", "delivery_ms", "total_ms") if key in timings}
    return {"index": index, "ok": "error" not in answer, "done_s": round(done_s, 2),
            "instance": answer.get("instance"), "error": answer.get("error"), **seconds,
            "worker_gpu_busy_pct": timings.get("gpu_busy_pct"), "warnings": answer.get("warnings")}


def returned_files(answer: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [(item.get("filename", "output"), base64.b64decode(item["data"]))
            for key in ("videos", "gifs", "images") for item in answer.get(key) or []
            if item.get("type") == "base64"]


def vanilla_all(instance: Any, graphs: list[dict[str, Any]], timeout_s: float
                ) -> list[tuple[dict[str, Any], list[tuple[str, bytes]]]]:
    """Every prompt posted to ComfyUI's /prompt at once, timed by its websocket (prompt_timing.py), then each
    one's history and files (/view)."""
    prompt_ids, finished = post_all_timed(instance.client, graphs, timeout_s)
    return [vanilla_job(instance, index, prompt_id, finished.get(prompt_id))
            for index, prompt_id in enumerate(prompt_ids)]


def vanilla_job(instance: Any, index: int, prompt_id: str, done_s: float | None
                ) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    if done_s is None:
        return {"index": index, "ok": False, "done_s": None, "instance": "vanilla", "error": "timed out"}, []
    entry = instance.client.history(prompt_id) or {}
    status = entry.get("status", {})
    errors = [data.get("exception_message") for kind, data in status.get("messages", [])
              if kind == "execution_error" and isinstance(data, dict)]
    stamps = {kind: data.get("timestamp") for kind, data in status.get("messages", []) if isinstance(data, dict)}
    end = stamps.get("execution_success") or stamps.get("execution_error")
    files = []
    for node_output in entry.get("outputs", {}).values():
        for item in (saved for value in node_output.values() if isinstance(value, list) for saved in value):
            if isinstance(item, dict) and item.get("type") == "output" and "filename" in item:
                answer = requests.get(f"{instance.client.base_url}/view", timeout=60, params={
                    "filename": item["filename"], "subfolder": item.get("subfolder", ""), "type": "output"})
                answer.raise_for_status()
                files.append((item["filename"], answer.content))
    instance.client.forget(prompt_id)
    job = {"index": index, "ok": status.get("status_str") == "success", "done_s": round(done_s, 2),
           "instance": "vanilla", "error": errors[0] if errors else None,
           "execution_s": round((end - stamps["execution_start"]) / 1000, 2)
           if end and stamps.get("execution_start") else None}
    return job, files


def probe_events(instance: Any) -> dict[str, Any]:
    """The probe node's records since the last call (reading clears them)."""
    return requests.get(f"{instance.client.base_url}/probe/events", timeout=30).json()


def median_step_s(events: dict[str, Any]) -> float | None:
    """Median step-to-step time over every sampler run in the records (steps of different jobs never paired)."""
    diffs = [later - earlier for event in events.get("events", []) if event["kind"] == "KSampler"
             for earlier, later in itertools.pairwise(event.get("steps") or [])]
    return round(statistics.median(diffs), 4) if diffs else None


def stream_record(jobs: list[dict[str, Any]], wall_s: float, unit: str, busy_pct: float | None) -> dict[str, Any]:
    """A stream's figures: finished jobs per hour over the wall time from the first submission to the last answer
    (a failed job counts in the wall time, not in the rate), and which instance ran how many."""
    ok = sum(1 for job in jobs if job["ok"])
    per_instance: dict[str, int] = {}
    for job in jobs:
        label = job.get("instance") or "failed"
        per_instance[label] = per_instance.get(label, 0) + 1
    return {"stream_jobs": len(jobs), "ok": ok, "failed": len(jobs) - ok, "wall_s": round(wall_s, 2),
            "videos_per_hour": round(ok / wall_s * 3600, 1) if wall_s > 0 else None, "unit": unit,
            "busy_pct_stream": busy_pct, "per_instance": per_instance,
            "done_s": sorted(job["done_s"] for job in jobs if job.get("done_s") is not None)}


def stream_summary(configs: dict[str, dict[str, Any]], cpu: bool) -> dict[str, Any]:
    """Videos per hour of every stream configuration, each one's ratio to vanilla's (VS), and the best worker
    configuration without a failed job against VS."""
    streams = {name: config for name, config in configs.items()
               if config.get("spec", {}).get("stream") and config.get("videos_per_hour") is not None}
    rates = {name: config["videos_per_hour"] for name, config in streams.items()}
    vanilla = next((rate for name, rate in rates.items()  # a vanilla rate with failed jobs is no baseline
                    if streams[name]["spec"]["base"] == "vanilla" and streams[name].get("failed") == 0), None)
    clean = {name: rate for name, rate in rates.items()
             if streams[name]["spec"]["base"] == "worker" and streams[name].get("failed") == 0 and rate}
    best = max(clean, key=lambda name: clean[name]) if clean else None
    return {
        "videos_per_hour": rates,
        "unit": next((config.get("unit") for config in streams.values()), None),
        "ratio_to_VS": {name: round(rate / vanilla, 3) for name, rate in rates.items() if vanilla},
        "best_worker": best,
        "best_worker_to_VS": round(clean[best] / vanilla, 3) if best and vanilla else None,
        "busy_pct": {name: config.get("busy_pct_stream") for name, config in streams.items()},
        "failed": {name: config.get("failed") for name, config in streams.items()},
        "note": "a CPU dry run: tiny diffusion model, no GPU samples; not a result" if cpu else None,
    }
