"""The video benchmark: Wan 2.1 text-to-video and image-to-video, Flux.1-dev (and SDXL for the card-size
cases) through vanilla ComfyUI and through the worker, each configuration a fresh ComfyUI on GPU 0, timed per
sampler step by the probe node.

    python bench/video/video_bench.py --comfy DIR --models DIR --fe DIR --out DIR --work DIR \
        --workload wan14b|wan14b_i2v|flux12b|wan1.3b|sdxl --frames 81 --steps 4 --plan V,W,WF8 \
        [--width W --height H] [--jobs 2] [--stream-jobs 8] [--tag NAME] [--disk-read] [--deadline S]

Configurations (CONFIGS): V vanilla ComfyUI defaults, jobs posted straight to it; W the worker with its defaults
(comfy_worker.worker.Worker.handle, the handler's only call); WF8 the worker with the workflow's UNETLoader set to
fp8_e4m3fn_fast (the lossy fp8 opt-in); *24 the same on a 24 GiB card (a ballast process holds the rest of the
GPU, and the worker is told the card has 24 GiB); W24N/W24D/W24H force COMFY_VRAM_MODE normal/dynamic/high;
W24F adds ComfyUI's --fast-disk (dynamic loading offloads to the disk-backed file, not private RAM). WNL is W with
ComfyUI's own loader for the diffusion model (FAST_MODEL_LOAD_THREADS=0) instead of the tuning node's fast load; WH
and WHN are W and WNL with the page cache as the configurations before left it (no eviction).
Stream configurations (stream.py): VS vanilla, WS the worker, WS2 the worker with INSTANCES_PER_GPU=2; after one
warm-up job per instance, --stream-jobs jobs submitted at once; videos per hour, each job's finish time and
instance, GPU busy % over the stream, every output read back; `stream_summary` in the results compares them.
A configuration marked cold starts with the workload's model files evicted from the page cache, so its first job
is a cold start from disk. The second job of each configuration profiles its last sampler step (kernels, bytes
copied host → GPU). Results: OUT/video_<tag>.json, written as each configuration ends.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
sys.path.insert(0, str(HERE.parent))  # bench/: prompt_timing.py, shared with the image benchmark
sys.path.insert(0, str(HERE))

from host_probes import Ballast, GpuSampler, disk_read_rates, evict, meminfo_used_mib, process_memory_mib  # noqa: E402
from output_check import check_video  # noqa: E402
from stream import STREAM_CONFIGS, run_stream, stream_summary  # noqa: E402
from workflows import INPUT_IMAGE, WORKLOADS, start_image_png, workflow  # noqa: E402

from comfy_worker.fleet.gpus import Gpu, detect_gpus  # noqa: E402
from comfy_worker.fleet.instance import ComfyInstance, InstanceSpec  # noqa: E402
from comfy_worker.models.files import workflow_model_files  # noqa: E402
from comfy_worker.settings import load_settings  # noqa: E402
from comfy_worker.worker import Worker  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "V": {"base": "vanilla", "cold": True},
    "W": {"base": "worker", "cold": True},
    "WF8": {"base": "worker", "dtype": "fp8_e4m3fn_fast"},
    "V24": {"base": "vanilla", "ballast": 24},
    "W24": {"base": "worker", "ballast": 24},
    "W24N": {"base": "worker", "ballast": 24, "env": {"COMFY_VRAM_MODE": "normal"}},
    "W24D": {"base": "worker", "ballast": 24, "env": {"COMFY_VRAM_MODE": "dynamic"}},
    "W24H": {"base": "worker", "ballast": 24, "env": {"COMFY_VRAM_MODE": "high"}},
    "W24F": {"base": "worker", "ballast": 24, "extra_args": "--fast-disk"},
    # the diffusion model read by ComfyUI's own loader instead of the tuning node's fast load (cold, then warm cache)
    "WNL": {"base": "worker", "cold": True, "env": {"FAST_MODEL_LOAD_THREADS": "0"}},
    "WH": {"base": "worker"},
    "WHN": {"base": "worker", "env": {"FAST_MODEL_LOAD_THREADS": "0"}},
    **STREAM_CONFIGS,
}
ALLOC_CONF = "max_split_size_mb:512"  # what start.sh exports for the worker


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.time()
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.out.mkdir(parents=True, exist_ok=True)
        self.models_yaml = self.work / "video_models.yaml"
        self.work.mkdir(parents=True, exist_ok=True)
        self.models_yaml.write_text(
            f"bench:\n  base_path: {Path(args.models).resolve()}\n  diffusion_models: diffusion_models\n"
            "  text_encoders: text_encoders\n  vae: vae\n  clip_vision: clip_vision\n")
        self.gpu = GpuSampler()
        self.port = 8400
        self.seed = 5000
        self.loop = asyncio.new_event_loop()  # one loop for every worker call: the scheduler's locks belong to it
        self.results: dict[str, Any] = {"args": vars(args), "configs": {}, "errors": []}
        self.results["machine"] = {"gpu": getattr(self.gpu, "name", None), "gpu_mib": getattr(self.gpu, "total_mib",
                                                                                            None),
                                   "cpus": os.cpu_count(), "host_used_mib": meminfo_used_mib()}

    def left(self) -> float:
        return self.args.deadline - (time.time() - self.started)

    def save(self) -> None:
        path = self.out / f"video_{self.args.tag}.json"
        path.write_text(json.dumps(self.results, indent=1, default=str))

    def log(self, *parts: Any) -> None:
        print(f"[video {time.time() - self.started:6.1f}s]", *parts, flush=True)

    def workflow(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.seed += 1
        size = (self.args.width, self.args.height) if self.args.width else None
        graph = workflow(self.args.workload, self.seed, self.args.frames, self.args.steps, spec.get("dtype", "default"),
                         size)
        if self.args.tiny:  # CPU dry runs: the makers' --tiny writes *_tiny diffusion models
            graph["1"]["inputs"]["unet_name"] = graph["1"]["inputs"]["unet_name"].replace(".safetensors",
                                                                                            "_tiny.safetensors")
        return graph

    def model_paths(self) -> list[Path]:
        return [f.path for f in workflow_model_files(self.workflow({}), [Path(self.args.models)])]

    def settings(self, spec: dict[str, Any], vanilla: bool) -> Any:
        self.port += 2
        env = {"COMFYUI_DIR": self.args.comfy, "COMFY_WORK_DIR": str(self.work / f"inst_{self.port}"),
               "COMFY_EXTRA_MODEL_PATHS": str(self.models_yaml), "COMFY_EXTRA_ARGS": f"--front-end-root {self.args.fe}",
               "COMFY_CUSTOM_NODES_DIRS": str(HERE / "custom_nodes"), "COMFY_BASE_PORT": str(self.port),
               "COMPILE_CACHE_DIR": str(self.work / "compile-cache"), "JOB_TIMEOUT_S": "900",
               "COMFY_NUM_GPUS": "0" if self.args.cpu else "1", "LOG_LEVEL": "INFO",
               "OUTPUT_INLINE_LIMIT_MB": "200"}  # random weights make noise videos: 10+ MB of mp4
        if vanilla:  # ComfyUI's own defaults: its RAM cache, cudaMallocAsync, no pinning, no VRAM flag
            env.update(COMFY_CACHE="ram", COMFY_CUDA_MALLOC="async", COMFY_CPU_PINNING="0", COMFY_VRAM_MODE="dynamic")
        env.update(spec.get("env", {}))
        if self.args.cpu:
            env.update(spec.get("cpu_env", {}))
        if spec.get("extra_args"):
            env["COMFY_EXTRA_ARGS"] += " " + spec["extra_args"]
        return load_settings(env)

    # --- one configuration ----------------------------------------------------------------------------------------
    def run_config(self, name: str) -> None:
        spec = CONFIGS[name]
        result: dict[str, Any] = {"spec": spec, "t0": round(time.time() - self.started, 1), "jobs": []}
        self.results["configs"][name] = result
        ballast = worker = instance = None
        try:
            if spec.get("cold") and not self.args.warm:
                evict(self.model_paths())
            if spec.get("ballast") and not self.args.cpu:
                ballast = Ballast(spec["ballast"])
                result["ballast"] = ballast.info
            vanilla = spec["base"] == "vanilla"
            settings = self.settings(spec, vanilla)
            if vanilla:
                os.environ.pop("PYTORCH_CUDA_ALLOC_CONF", None)
                instance = ComfyInstance(InstanceSpec(0, None if self.args.cpu else 0, settings.base_port), settings,
                                         [*settings.extra_model_paths, write_nodes_yaml(self.work)])
                started = time.time()
                instance.launch()
                instance.wait_ready(300)
            else:
                os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOC_CONF
                gpus = None
                if spec.get("ballast") and not self.args.cpu:
                    real = detect_gpus()[0]
                    gpus = [Gpu(real.index, f"{real.name} as a {spec['ballast']} GiB card", spec["ballast"] * 1024,
                                real.pci_bus_id)]
                worker = Worker(settings, gpus=[] if self.args.cpu else gpus)
                started = time.time()
                worker.start()
                if worker.startup_error:
                    raise RuntimeError(worker.startup_error)
                instance = worker.fleet.instances[0]
            result["ready_s"] = round(time.time() - started, 2)
            result["launch"] = instance.tuning.describe() + " | " + " ".join(instance.tuning.flags)
            port = instance.spec.port
            result["state"] = requests.get(f"http://127.0.0.1:{port}/probe/state", timeout=10).json()
            if spec.get("stream"):
                result.update(run_stream(self, worker, worker.fleet.instances if worker else [instance], INPUT_IMAGE))
                self.results["stream_summary"] = stream_summary(self.results["configs"], self.args.cpu)
                self.log(name, {k: result.get(k) for k in ("ok", "failed", "wall_s", "videos_per_hour",
                                                           "busy_pct_stream", "per_instance", "skipped")})
            else:
                for index in range(self.args.jobs):
                    if index and self.left() < 60:
                        result["skipped_jobs"] = self.args.jobs - index
                        break
                    if index == 1:
                        requests.post(f"http://127.0.0.1:{port}/probe/profile_next", timeout=10)
                    job = self.run_job(spec, worker, instance)
                    result["jobs"].append(job)
                    self.log(name, f"job {index}", {k: job.get(k) for k in (
                        "status", "wall_s", "s_per_step", "to_first_step_s", "UNETLoader_s", "VAEDecode_s", "error")})
                    self.save()
                    if job["status"] != "success":
                        break
            if worker:
                result["fast_load"] = requests.get(f"http://127.0.0.1:{port}/worker/tuning", timeout=10).json().get(
                    "fast_load")
            result["memory_mib"] = process_memory_mib(instance.pid)
            result["host_used_mib"] = meminfo_used_mib()
        except Exception:
            result["error"] = traceback.format_exc()[-3000:]
            self.log(name, "ERROR", result["error"])
        finally:
            if worker:
                result["worker_log_warnings"] = [j.get("warnings") for j in result["jobs"]]
                worker.stop()
            elif instance:
                instance.stop()
            if ballast:
                ballast.stop()
            result["t1"] = round(time.time() - self.started, 1)
            if instance is not None:
                result["log_tail"] = instance.log_tail(40).splitlines()
            self.save()

    def run_job(self, spec: dict[str, Any], worker: Worker | None, instance: ComfyInstance) -> dict[str, Any]:
        graph = self.workflow(spec)
        submitted = time.time()
        job: dict[str, Any] = {}
        image = self.start_image() if "LoadImage" in {node["class_type"] for node in graph.values()} else None
        if worker is not None:
            job_input: dict[str, Any] = {"workflow": graph}
            if image:  # the I2V start image as the job's `images` input, the way a client sends it
                job_input["images"] = [{"name": INPUT_IMAGE, "image": base64.b64encode(image).decode()}]
            answer = self.loop.run_until_complete(worker.handle({"id": f"bench-{self.seed}", "input": job_input}))
            job["status"] = "error" if "error" in answer else "success"
            job["error"] = answer.get("error")
            job["timings"] = {k: answer.get("timings", {}).get(k) for k in ("queue_wait_ms", "execution_ms",
                                                                           "phases_ms", "delivery_ms", "total_ms")}
            job["warnings"] = answer.get("warnings")
            job["tuning"] = answer.get("tuning")
            videos = answer.get("videos") or answer.get("gifs") or []
            job["outputs"] = {key: len(answer.get(key) or []) for key in ("images", "videos", "gifs")}
            if videos and videos[0].get("type") == "base64":
                job["video"] = check_video(base64.b64decode(videos[0]["data"]), self.work / "last.mp4")
        else:
            if image:  # vanilla: ComfyUI's own upload endpoint puts it in the instance's input folder
                requests.post(f"http://127.0.0.1:{instance.spec.port}/upload/image", timeout=60,
                              files={"image": (INPUT_IMAGE, image, "image/png")},
                              data={"overwrite": "true"}).raise_for_status()
            job.update(post_and_wait(instance.spec.port, graph, timeout_s=900))
        job["wall_s"] = round(time.time() - submitted, 2)
        events = requests.get(f"http://127.0.0.1:{instance.spec.port}/probe/events", timeout=30).json()
        job.update(step_metrics(events, submitted))
        job["gpu"] = self.gpu.window(submitted, time.time())
        return job

    def start_image(self) -> bytes:
        return start_image_png(self.args.width or 832, self.args.height or 480)


def write_nodes_yaml(work: Path) -> Path:
    path = work / "probe_nodes.yaml"
    path.write_text(f"video_probe:\n  custom_nodes: |\n    {HERE / 'custom_nodes'}\n")
    return path


def post_and_wait(port: int, graph: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    answer = requests.post(f"{base}/prompt", json={"prompt": graph}, timeout=60)
    if answer.status_code != 200:
        return {"status": "rejected", "error": answer.text[:2000]}
    prompt_id = answer.json()["prompt_id"]
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        history = requests.get(f"{base}/history/{prompt_id}", timeout=30).json().get(prompt_id)
        if history and history.get("status", {}).get("completed") is not None:
            status = history["status"].get("status_str")
            errors = [m[1] for m in history["status"].get("messages", []) if m[0] == "execution_error"]
            return {"status": status, "error": (errors[0].get("exception_message") if errors else None)}
        time.sleep(0.25)
    return {"status": "timeout"}


def step_metrics(events: dict[str, Any], submitted: float) -> dict[str, Any]:
    """Per-node seconds, s/step (median of step-to-step times, the profiled step left out), and the time from
    submission to the start of the first step (its end minus one median step)."""
    metrics: dict[str, Any] = {"cuda_memory": events.get("memory")}
    for event in events.get("events", []):
        kind = event["kind"]
        metrics[f"{kind}_s"] = round(metrics.get(f"{kind}_s", 0) + event["t1"] - event["t0"], 3)
        if kind != "KSampler":
            continue
        steps = event.get("steps") or []
        diffs = [b - a for a, b in itertools.pairwise(steps)]
        if "profile" in event:
            metrics["profile"] = event["profile"]
            diffs = diffs[:-1]
        if diffs:
            step = statistics.median(diffs)
            metrics["s_per_step"] = round(step, 4)
            metrics["to_first_step_s"] = round(steps[0] - step - submitted, 2)
            metrics["steps"] = len(steps)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("comfy", "models", "fe", "out", "work"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--workload", default="wan14b", choices=WORKLOADS)
    parser.add_argument("--width", type=int, help="the workload's own size when left out (dry runs: smaller)")
    parser.add_argument("--height", type=int)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--stream-jobs", type=int, default=8, help="jobs submitted at once in a stream configuration")
    parser.add_argument("--plan", default="V,W")
    parser.add_argument("--tag", default="run")
    parser.add_argument("--deadline", type=float, default=540)
    parser.add_argument("--disk-read", action="store_true", help="measure the cold read rate of the model files")
    parser.add_argument("--cpu", action="store_true", help="a dry run without a GPU")
    parser.add_argument("--warm", action="store_true", help="no configuration starts with an evicted page cache")
    parser.add_argument("--tiny", action="store_true", help="the *_tiny diffusion model (dry runs)")
    args = parser.parse_args()
    run = Run(args)
    if args.disk_read:
        run.results["disk_read"] = disk_read_rates(run.model_paths(), threads=8)
        run.log("disk read", run.results["disk_read"])
    for name in args.plan.split(","):
        if run.left() < 90:
            run.results["errors"].append(f"{name}: skipped, {run.left():.0f} s left")
            continue
        run.run_config(name)
    run.gpu.stop()
    run.save()
    run.log("done")


if __name__ == "__main__":
    main()
