"""The benchmark's shared runner: instances started the way the worker starts them, jobs posted and timed,
results recorded as each phase ends; and the measures every plan uses."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import statistics
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from probes import GpuSampler, cpu_seconds, meminfo_mib, smaps_mib
from prompt_timing import post_all_timed
from workloads import WORKLOADS

from comfy_worker.fleet.fleet import write_custom_nodes_config
from comfy_worker.fleet.gpus import detect_gpus
from comfy_worker.fleet.instance import ComfyInstance, InstanceSpec
from comfy_worker.fleet.tuning import LaunchTuning
from comfy_worker.settings import Settings, load_settings
from comfy_worker.worker import Worker

log = logging.getLogger("bench")
TQDM_RATE = re.compile(r"(\d+)/(\d+) \[[^\]]*?,\s*([\d.]+)(it/s|s/it)\]")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        self.results: dict[str, Any] = {"plan": args.plan, "args": vars(args), "phases": {}, "errors": [],
                                        "date": time.strftime("%Y-%m-%d", time.gmtime())}
        self.seed = 1000
        self.cpu_shape = {"resolution": 128, "steps": 2}  # a dry run's SD1.5 jobs
        self.port = 8300
        self.models_yaml = self.work / "bench_models.yaml"
        self.work.mkdir(parents=True, exist_ok=True)
        self.models_yaml.write_text(
            f"bench:\n  base_path: {Path(args.models).resolve()}\n  diffusion_models: diffusion_models\n"
            "  text_encoders: text_encoders\n  vae: vae\n"
        )
        models_json = Path(args.models) / "models.json"
        self.results["models"] = json.loads(models_json.read_text()) if models_json.exists() else {}
        self.gpus = [] if args.cpu else detect_gpus()
        self.loop = asyncio.new_event_loop()  # one loop for every worker call: its queues' locks belong to it
        self.results["machine"] = machine_facts(self.gpus)

    # --- bookkeeping ---------------------------------------------------------------------------------------------
    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.started)

    def record(self, name: str, value: dict[str, Any]) -> None:
        value["t_s"] = round(time.monotonic() - self.started, 1)
        self.results["phases"][name] = value
        log.info("PHASE %s %s", name, json.dumps(value, default=str)[:1500])
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))

    def phase(self, name: str, needs_s: float, function, *args: Any, **kwargs: Any) -> Any:
        if self.args.phases and name not in self.args.phases.split(","):
            return None
        if self.left() < needs_s:
            log.warning("skipping %s: %.0f s left, needs %.0f", name, self.left(), needs_s)
            self.results["errors"].append(f"{name}: skipped, {self.left():.0f} s left")
            return None
        try:
            return function(*args, **kwargs)
        except Exception:
            log.error("phase %s failed:\n%s", name, traceback.format_exc())
            self.results["errors"].append(f"{name}: {traceback.format_exc()[-1500:]}")
            (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))
            return None

    def workflow(self, kind: str) -> dict[str, Any]:
        self.seed += 1
        if self.args.cpu:  # a dry run: the SD1.5 models only, tiny shapes, so a CPU gets through
            return WORKLOADS["sd15"](self.seed, **self.cpu_shape)
        return WORKLOADS[kind](self.seed)

    def settings(self, **env: str) -> Settings:
        base = {
            "COMFYUI_DIR": self.args.comfy,
            "COMFY_WORK_DIR": str(self.work / "instances"),
            "COMFY_EXTRA_MODEL_PATHS": str(self.models_yaml),
            "COMFY_EXTRA_ARGS": f"--front-end-root {self.args.fe}" if self.args.fe else "",
            "COMPILE_CACHE_DIR": str(self.work / "compile-cache"),
            "COMFY_NUM_GPUS": "0" if self.args.cpu else "",
            "COMFY_BASE_PORT": str(self.next_port(4)),
            "LOG_LEVEL": "INFO",
        }
        base.update(env)
        return load_settings(base)

    def next_port(self, count: int = 1) -> int:
        """The first of `count` consecutive loopback ports that nothing listens on (another benchmark may run)."""
        while not all(port_free(self.port + offset) for offset in range(count)):
            self.port += count
        port = self.port
        self.port += count
        return port

    # --- ComfyUI straight, without the worker ---------------------------------------------------------------------
    def direct(self, settings: Settings, gpu: int | None, tuning: LaunchTuning,
               switches: dict[str, Any] | None) -> tuple[ComfyInstance, float]:
        """Starts one ComfyUI as the worker would (folders, flags, CPU set), outside any worker."""
        if self.args.cpu:  # ComfyUI refuses VRAM flags next to --cpu
            gpu, tuning = None, LaunchTuning((), tuning.env)
        model_paths = [*settings.extra_model_paths, write_custom_nodes_config(settings)]
        instance = ComfyInstance(InstanceSpec(0 if gpu is None else gpu, gpu, self.next_port()), settings,
                                 model_paths, tuning)
        started = time.monotonic()
        instance.launch()
        instance.wait_ready(300)
        ready_s = time.monotonic() - started
        if switches is not None:
            instance.switches = instance.client.apply_tuning(switches)
        return instance, ready_s

    def post_and_wait(self, instance: ComfyInstance, workflows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Posts every workflow to /prompt at once (prompt_timing.py); each one's end, its execution time from
        ComfyUI's history and the sampler's it/s from the log."""
        mark = instance.lines_logged
        prompt_ids, seen = post_all_timed(instance.client, workflows, 900)
        if len(seen) < len(prompt_ids):
            raise TimeoutError(f"{len(prompt_ids) - len(seen)} of {len(prompt_ids)} prompts did not end: ComfyUI's "
                               "websocket was silent for 900 s")
        done = {prompt_id: (seconds, instance.client.history(prompt_id) or {}) for prompt_id, seconds in seen.items()}
        rates = sampler_rates(instance.lines_since(mark))
        jobs = []
        for index, (prompt_id, (seen_s, entry)) in enumerate(sorted(done.items(), key=lambda item: item[1][0])):
            status = entry.get("status", {})
            messages = status.get("messages", [])
            stamps = {kind: data.get("timestamp") for kind, data in messages if isinstance(data, dict)}
            end = stamps.get("execution_success") or stamps.get("execution_error")
            jobs.append({
                "ok": status.get("status_str") == "success",
                "done_s": round(seen_s, 3),
                "exec_s": round((end - stamps["execution_start"]) / 1000, 3) if end and stamps.get("execution_start")
                else None,
                "its": rates[index] if index < len(rates) else None,
            })
            instance.client.forget(prompt_id)
        return jobs

    def steady(self, instance: ComfyInstance, kind: str, count: int) -> dict[str, Any]:
        pid = instance.pid
        cpu_before = cpu_seconds(pid)
        with GpuSampler() as sampler:
            jobs = self.post_and_wait(instance, [self.workflow(kind) for _ in range(count)])
        wall = max(job["done_s"] for job in jobs)
        cpu_after = cpu_seconds(pid)
        its = [job["its"] for job in jobs if job["its"]]
        return {
            "jobs": count, "ok": sum(job["ok"] for job in jobs), "wall_s": round(wall, 3),
            "images_per_min": round(count / wall * 60, 2),
            "exec_s_median": median([job["exec_s"] for job in jobs]),
            "its_median": median(its), "its": its,
            "cpu_cores_busy": round((cpu_after - cpu_before) / wall, 2) if cpu_before is not None else None,
            "gpu": sampler.summary(),
        }

    def cold_then_steady(self, instance: ComfyInstance, ready_s: float, kind: str, count: int) -> dict[str, Any]:
        first = self.post_and_wait(instance, [self.workflow(kind)])[0]
        result = self.steady(instance, kind, count)
        result.update(ready_s=round(ready_s, 2), first_job_s=first["done_s"], first_exec_s=first["exec_s"],
                      first_its=first["its"], ram=memory_snapshot({"instance": instance}))
        result["switches"] = instance.switches.get("applied")
        result["flags"] = list(instance.tuning.flags)
        return result

    # --- the worker -----------------------------------------------------------------------------------------------
    def start_worker(self, **env: str) -> tuple[Worker, float]:
        started = time.monotonic()
        worker = Worker(self.settings(**env))
        worker.start()
        if worker.startup_error:
            raise RuntimeError(worker.startup_error)
        return worker, time.monotonic() - started

    def through_worker(self, worker: Worker, kind: str, count: int, pin: int | None = None,
                       timeline: bool = False) -> dict[str, Any]:
        """`count` jobs handed to the worker at once, as RunPod hands them to a worker with that concurrency. With
        `timeline`, also each job's span and instance, and the GPU busy samples (stream_details)."""

        async def run_all() -> list[tuple[float, float, dict[str, Any]]]:
            started = time.monotonic()

            async def one() -> tuple[float, float, dict[str, Any]]:
                job_input: dict[str, Any] = {"workflow": self.workflow(kind)}
                if pin is not None:
                    job_input["gpu"] = pin
                submitted = time.monotonic() - started
                result = await worker.handle({"id": f"bench-{uuid.uuid4().hex[:8]}", "input": job_input})
                return submitted, time.monotonic() - started, result

            return await asyncio.gather(*(one() for _ in range(count)))

        pids = {i.label: i.pid for i in worker.fleet.instances}
        cpu_before = {label: cpu_seconds(pid) for label, pid in pids.items()}
        with GpuSampler() as sampler:
            wall_started = time.time()
            done = self.loop.run_until_complete(run_all())
        wall = max(seconds for _, seconds, _ in done)
        results = [result for _, _, result in done]
        errors = [r["error"] for r in results if "error" in r]
        per_instance: dict[str, int] = {}
        for result in results:
            per_instance[result.get("instance", "failed")] = per_instance.get(result.get("instance", "failed"), 0) + 1
        its = [s["it_per_s"] for r in results for s in r.get("timings", {}).get("sampling", {}).values()
               if s.get("it_per_s")]
        details = stream_details(done, sampler, wall_started, wall) if timeline else {}
        return {
            **details,
            "jobs": count, "ok": count - len(errors), "errors": errors[:3], "wall_s": round(wall, 3),
            "images_per_min": round(count / wall * 60, 2), "per_instance": per_instance,
            "job_s_median": median([r["timings"]["total_ms"] / 1000 for r in results if "timings" in r]),
            "exec_s_median": median([r["timings"]["execution_ms"] / 1000 for r in results if "timings" in r]),
            "its_median": median(its),
            "phases_ms_median": median_phases(results),
            "warnings": sorted({w for r in results for w in r.get("warnings", [])})[:5],
            "cpu_cores_busy": {label: round((cpu_seconds(pid) - cpu_before[label]) / wall, 2)
                               for label, pid in pids.items() if cpu_before[label] is not None},
            "gpu": sampler.summary(),
            "tuning": results[0].get("tuning") if results else None,
            "compiled_jobs": sum(bool((r.get("tuning") or {}).get("compiled")) for r in results),
        }

    def sequential_direct_vs_worker(self, worker: Worker, kind: str, rounds: int) -> dict[str, Any]:
        """P2: one job at a time, alternating: through the worker (handle → base64 result) and posted straight to
        the same instance."""
        instance = worker.fleet.instances[0]
        direct, through, answered_by = [], [], []
        for _ in range(rounds):
            direct.append(self.post_and_wait(instance, [self.workflow(kind)])[0]["done_s"])
            started = time.monotonic()
            job = {"id": "p2", "input": {"workflow": self.workflow(kind), "gpu": 0}}
            result = self.loop.run_until_complete(worker.handle(job))
            if "error" in result:
                raise RuntimeError(result["error"])
            through.append(time.monotonic() - started)
            answered_by.append({"instance": result.get("instance"),
                                "compiled": bool((result.get("tuning") or {}).get("compiled"))})
        return {"direct_s": direct, "worker_s": through, "direct_median_s": median(direct),
                "worker_median_s": median(through), "ratio": round(median(through) / median(direct), 4),
                "direct_instance": instance.label, "worker_jobs": answered_by}


def stream_details(done: list[tuple[float, float, dict[str, Any]]], sampler: GpuSampler, wall_started: float,
                   wall: float) -> dict[str, Any]:
    """For a timeline of a stream of jobs: each job's submission, start on its instance (after its queue wait) and
    answer, in seconds from the first submission; the GPU busy samples over the stream (t, busy %) and busy % over
    it; the worker's own GPU busy figures where its answers carry them."""
    spans = []
    for submitted, answered, result in sorted(done, key=lambda item: item[1]):
        timings = result.get("timings", {})
        images = result.get("images") or [{}]
        spans.append({
            "instance": result.get("instance", "failed"), "ok": "error" not in result,
            "submitted_s": round(submitted, 3),
            "started_s": round(submitted + timings.get("queue_wait_ms", 0) / 1000, 3), "done_s": round(answered, 3),
            "png_bytes": len(images[0].get("data", "")) * 3 // 4 if images[0].get("type") == "base64" else None,
            "gpu_busy_pct": timings.get("gpu_busy_pct"),
        })
    answered = [result for _, _, result in sorted(done, key=lambda item: item[1]) if result.get("metrics")]
    last_metrics = answered[-1]["metrics"] if answered else []
    return {
        "job_spans": spans,
        **sampler.busy_record(wall_started, wall_started + wall),
        "timings_ms_median": {key: median([r["timings"].get(key) for r in (d[2] for d in done) if "timings" in r])
                              for key in ("queue_wait_ms", "delivery_ms", "total_ms", "gpu_busy_pct")},
        "png_bytes_median": median([span["png_bytes"] for span in spans]),
        "worker_gpu_busy_pct": {m.get("instance"): {"60s": m["gpu_busy_pct_60s"], "total": m.get("gpu_busy_pct_total")}
                                for m in last_metrics if isinstance(m, dict) and "gpu_busy_pct_60s" in m},
    }


def port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_png_answer(result: dict[str, Any], side: int) -> str | None:
    """None when the answer holds exactly one base64 PNG of side × side pixels, else what is wrong."""
    import base64
    import struct

    images = result.get("images") or []
    if len(images) != 1 or images[0].get("type") != "base64":
        return f"expected one base64 image, got {len(images)}"
    data = base64.b64decode(images[0]["data"])
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return None if (width, height) == (side, side) else f"PNG is {width}x{height}, not {side}x{side}"


def instances_of(worker: Worker) -> dict[str, ComfyInstance]:
    return {instance.label: instance for instance in worker.fleet.instances}


def memory_snapshot(instances: dict[str, ComfyInstance]) -> dict[str, Any]:
    return {"meminfo": meminfo_mib(),
            "processes": {name: process_memory(instance.pid) for name, instance in instances.items()}}


def process_memory(pid: int | None) -> dict[str, int]:
    """RSS, PSS and their parts (MiB) of one process."""
    return {k: v for k, v in smaps_mib(pid).items()
            if k in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Anonymous", "Private_Clean", "Private_Dirty",
                     "Shared_Clean")}


def sampler_rates(lines: list[str]) -> list[float]:
    """The final it/s of every finished sampler progress bar (tqdm) in ComfyUI's log lines."""
    rates = []
    for line in lines:
        finished = [m for m in TQDM_RATE.finditer(line) if m[1] == m[2]]
        if finished:
            match = finished[-1]
            value = float(match[3])
            rates.append(value if match[4] == "it/s" else 1 / value)
    return rates


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def median_phases(results: list[dict[str, Any]]) -> dict[str, float | None]:
    phases = [r["timings"]["phases_ms"] for r in results if "timings" in r]
    keys = phases[0].keys() if phases else []
    return {key: median([p[key] for p in phases]) for key in keys}


def machine_facts(gpus: list) -> dict[str, Any]:
    import platform

    facts = {"cpus": os.cpu_count(), "gpus": [g.name for g in gpus],
             "gpu_memory_mib": [g.memory_total_mib for g in gpus], "python": platform.python_version(),
             "memory_mib": meminfo_mib()["MemTotal"]}
    try:
        import torch

        facts["torch"] = torch.__version__
    except ImportError:
        pass
    return facts


def sdxl_model_bytes(bench: Bench) -> int:
    files = bench.results["models"].get("files", {})
    names = ("sd15_unet.safetensors", "clip_l.safetensors", "sd_vae.safetensors") if bench.args.cpu else \
        ("sdxl_unet.safetensors", "clip_l.safetensors", "clip_g.safetensors", "sd_vae.safetensors")
    return sum(size for name, size in files.items() if name in names)
