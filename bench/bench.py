"""The GPU benchmark: every performance number in docs/benchmarks/ comes from here.

    python bench/bench.py --plan flags  --comfy DIR --models DIR --out DIR [--deadline S]   # one GPU
    python bench/bench.py --plan worker --comfy DIR --models DIR --out DIR [--deadline S]   # two GPUs
    python bench/bench.py --plan smoke  ...  --cpu                                           # a CPU dry run

`flags` compares ComfyUI configurations on one GPU, each instance started the way the worker starts it
(src/comfy_worker/instance.py) and jobs posted straight to it: vanilla defaults, the best uncompiled
configuration known before, ours, each switch of the tuning node toggled on the same instance, the allocator,
torch.compile with a cold and a warm cache (P4, P5, P6).
`worker` drives the worker itself (comfy_worker.worker.Worker.handle, the handler's only call) with jobs
submitted concurrently as RunPod does: 1 vs 2 GPUs (P1), through the worker vs straight to ComfyUI (P2), host
RAM per extra instance (P3), CPU pinning on and off, VRAM modes, warm-up and cold start (P6, P7).
Results go to OUT/results.json as each phase ends (a later phase failing keeps the earlier ones);
bench/report.py turns them into docs/benchmarks/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import statistics
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probes import MIB, GpuSampler, bf16_peak_tflops, cpu_seconds, meminfo_mib, smaps_mib
from workloads import WORKLOADS

from comfy_worker.fleet import write_custom_nodes_config
from comfy_worker.gpus import detect_gpus
from comfy_worker.instance import ComfyInstance, InstanceSpec
from comfy_worker.settings import Settings, load_settings
from comfy_worker.tuning import LaunchTuning, node_request, plan_launch_tuning
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
        self.results: dict[str, Any] = {"plan": args.plan, "args": vars(args), "phases": {}, "errors": []}
        self.seed = 1000
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
            return WORKLOADS["sd15"](self.seed, resolution=128, steps=2)
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
        """Posts every workflow to /prompt at once and waits on ComfyUI's websocket for each to finish, as ComfyUI's
        own websocket API example does (polling /history instead takes the GIL from the sampling thread and slows
        the very job it waits for)."""
        import websocket

        mark = instance.lines_logged
        client_id = uuid.uuid4().hex
        socket = websocket.create_connection(f"{instance.client.websocket_url}?clientId={client_id}", timeout=900)
        try:
            started = time.monotonic()
            pending = set()
            for workflow in workflows:
                prompt_id, _ = instance.client.submit(workflow, client_id, {})
                pending.add(prompt_id)
            seen: dict[str, float] = {}
            while pending:
                message = socket.recv()
                if not isinstance(message, str):
                    continue  # preview images
                event = json.loads(message)
                data = event.get("data") or {}
                finished = event.get("type") in ("execution_success", "execution_error", "execution_interrupted") or (
                    event.get("type") == "executing" and data.get("node") is None)
                if finished and data.get("prompt_id") in pending:
                    seen[data["prompt_id"]] = time.monotonic() - started
                    pending.discard(data["prompt_id"])
        finally:
            socket.close()
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

    def through_worker(self, worker: Worker, kind: str, count: int, pin: int | None = None) -> dict[str, Any]:
        """`count` jobs handed to the worker at once, as RunPod hands them to a worker with that concurrency."""

        async def run_all() -> list[tuple[float, dict[str, Any]]]:
            started = time.monotonic()

            async def one() -> tuple[float, dict[str, Any]]:
                job_input: dict[str, Any] = {"workflow": self.workflow(kind)}
                if pin is not None:
                    job_input["gpu"] = pin
                result = await worker.handle({"id": f"bench-{uuid.uuid4().hex[:8]}", "input": job_input})
                return time.monotonic() - started, result

            return await asyncio.gather(*(one() for _ in range(count)))

        pids = {i.label: i.pid for i in worker.fleet.instances}
        cpu_before = {label: cpu_seconds(pid) for label, pid in pids.items()}
        with GpuSampler() as sampler:
            done = self.loop.run_until_complete(run_all())
        wall = max(seconds for seconds, _ in done)
        results = [result for _, result in done]
        errors = [r["error"] for r in results if "error" in r]
        per_instance: dict[str, int] = {}
        for result in results:
            per_instance[result.get("instance", "failed")] = per_instance.get(result.get("instance", "failed"), 0) + 1
        its = [s["it_per_s"] for r in results for s in r.get("timings", {}).get("sampling", {}).values()
               if s.get("it_per_s")]
        return {
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
        }

    def sequential_direct_vs_worker(self, worker: Worker, kind: str, rounds: int) -> dict[str, Any]:
        """P2: one job at a time, alternating: through the worker (handle → base64 result) and posted straight to
        the same instance."""
        instance = worker.fleet.instances[0]
        direct, through = [], []
        for _ in range(rounds):
            direct.append(self.post_and_wait(instance, [self.workflow(kind)])[0]["done_s"])
            started = time.monotonic()
            job = {"id": "p2", "input": {"workflow": self.workflow(kind), "gpu": 0}}
            result = self.loop.run_until_complete(worker.handle(job))
            if "error" in result:
                raise RuntimeError(result["error"])
            through.append(time.monotonic() - started)
        return {"direct_s": direct, "worker_s": through, "direct_median_s": median(direct),
                "worker_median_s": median(through), "ratio": round(median(through) / median(direct), 4)}


# --- plans ------------------------------------------------------------------------------------------------------
def plan_flags(bench: Bench) -> None:
    """One GPU, instances one after another; jobs posted straight to ComfyUI."""
    jobs = bench.args.jobs
    gpu = 0
    bench.record("peak", bf16_peak_tflops(gpu) if not bench.args.cpu else {"bf16_tflops": None})
    base = bench.settings()
    pinned = plan_launch_tuning(base, bench.gpus, [gpu])[0] if not bench.args.cpu else LaunchTuning()

    def configuration(name: str, tuning: LaunchTuning, switches: dict[str, Any] | None, kind: str = "sdxl",
                      keep: bool = False, settings: Settings = base):
        instance, ready_s = bench.direct(settings, gpu, tuning, switches)
        try:
            result = bench.cold_then_steady(instance, ready_s, kind, jobs)
            result["cpus"] = tuning.cpu_set.describe() if tuning.cpu_set else "all"
            bench.record(name, result)
        finally:
            if not keep:
                instance.stop()
        return instance

    torch_defaults = {"tf32": False, "cudnn_benchmark": False, "compile": None}
    # 1. ComfyUI's defaults: no flag, no pinning, torch's own switches (the node is loaded but not asked)
    bench.phase("vanilla", 60, configuration, "vanilla", LaunchTuning(), None)
    # 2. the best uncompiled configuration known before: --highvram, native allocator with max_split_size_mb:512,
    #    pinned, torch's switches
    native = LaunchTuning(("--highvram", "--disable-cuda-malloc"), {**pinned.env,
                          "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}, pinned.cpu_set, pinned.vram)
    instance = bench.phase("prior_best", 60, configuration, "prior_best", native, torch_defaults, "sdxl", True)
    if instance is not None:
        try:
            for name, switches in (("switch_tf32", {"tf32": True, "cudnn_benchmark": False}),
                                   ("switch_cudnn_benchmark", {"tf32": False, "cudnn_benchmark": True}),
                                   ("switch_none_again", torch_defaults)):
                def toggled(switches=switches):
                    instance.switches = instance.client.apply_tuning({**switches, "compile": None})
                    result = bench.steady(instance, "sdxl", jobs)
                    result["switches"] = instance.switches.get("applied")
                    return result
                result = bench.phase(name, 30, toggled)
                if result:
                    bench.record(name, result)
        finally:
            instance.stop()
    # 3. the allocator alone: ComfyUI's cudaMallocAsync with everything else as in 2
    async_alloc = LaunchTuning(("--highvram",), pinned.env, pinned.cpu_set, pinned.vram)
    bench.phase("async_allocator", 60, configuration, "async_allocator", async_alloc, torch_defaults)
    # 4. unpinned, else as 2
    unpinned = LaunchTuning(native.flags, {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}, None, pinned.vram)
    bench.phase("unpinned", 60, configuration, "unpinned", unpinned, torch_defaults)
    # 5. SD1.5-size jobs, vanilla and ours
    bench.phase("sd15_vanilla", 45, configuration, "sd15_vanilla", LaunchTuning(), None, "sd15")
    ours = node_request(bench.settings(WARMUP_WORKFLOW="{}"), on_gpu=True)  # the worker's defaults, compile too
    ours_switches = {**ours, "compile": None}
    bench.phase("sd15_ours", 45, configuration, "sd15_ours", native, ours_switches, "sd15")
    if bench.args.cpu:
        return
    # 6. torch.compile (inductor) of the diffusion model on load: cold cache, then a new process on the warm cache
    if not bench.args.keep_compile_cache:
        shutil.rmtree(bench.work / "compile-cache", ignore_errors=True)
    for mode in bench.args.compile_modes.split(","):
        compiled = {**ours, "compile": {"backend": "inductor", "mode": None if mode == "default" else mode}}
        bench.phase(f"compile_{mode}_cold_cache", 200, configuration, f"compile_{mode}_cold_cache", native, compiled)
        bench.phase(f"compile_{mode}_warm_cache", 90, configuration, f"compile_{mode}_warm_cache", native, compiled)


def plan_worker(bench: Bench) -> None:
    """The worker itself, on every GPU of the machine."""
    jobs = bench.args.jobs
    gpus = max(1, len(bench.gpus))
    sdxl_warmup = json.dumps(bench.workflow("sdxl"))
    cpu_env = {"COMFY_CPU_INSTANCES": "1"} if bench.args.cpu else {}
    bench.record("peak", bf16_peak_tflops(0) if not bench.args.cpu else {"bf16_tflops": None})

    def one_gpu() -> None:
        worker, start_s = bench.start_worker(COMFY_NUM_GPUS="0" if bench.args.cpu else "1", TORCH_COMPILE="off",
                                             **cpu_env)
        try:
            ready = dict(worker.startup_s)
            cold = bench.through_worker(worker, "sdxl", 1)
            steady = bench.through_worker(worker, "sdxl", 1)
            bench.record("w1_cold_start", {"start_s": round(start_s, 2), "startup": ready, "cold_job": cold,
                                           "next_job": steady, "ram": memory_snapshot(instances_of(worker))})
            bench.record("w1_p2_sdxl", bench.sequential_direct_vs_worker(worker, "sdxl", 5))
            bench.record("w1_sdxl", bench.through_worker(worker, "sdxl", jobs))
            bench.through_worker(worker, "sd15", 1)
            bench.record("w1_p2_sd15", bench.sequential_direct_vs_worker(worker, "sd15", 5))
            bench.record("w1_sd15", bench.through_worker(worker, "sd15", jobs * 2))
        finally:
            worker.stop()

    def all_gpus(name: str, **env: str) -> None:
        count = "2" if bench.args.cpu else ""
        worker, start_s = bench.start_worker(WARMUP_WORKFLOW=sdxl_warmup, COMFY_CPU_INSTANCES=count or "1", **env)
        try:
            first = bench.through_worker(worker, "sdxl", len(worker.fleet.instances))
            result = {"start_s": round(start_s, 2), "startup": dict(worker.startup_s), "first_jobs": first,
                      "ram": memory_snapshot(instances_of(worker))}
            result["sdxl"] = bench.through_worker(worker, "sdxl", jobs * gpus)
            if name != "w2_unpinned":
                result["sdxl_gpu0_only"] = bench.through_worker(worker, "sdxl", jobs, pin=0)
            if name == "w2_pinned":
                result["sd15"] = bench.through_worker(worker, "sd15", jobs * 2 * gpus)
            bench.record(name, result)
        finally:
            worker.stop()

    bench.phase("w1", 100, one_gpu)
    bench.phase("w2_pinned", 80, all_gpus, "w2_pinned", TORCH_COMPILE="off")
    bench.phase("w2_unpinned", 70, all_gpus, "w2_unpinned", TORCH_COMPILE="off", COMFY_CPU_PINNING="0")
    bench.phase("ram_high", 60, second_instance_ram, bench, "high")
    if bench.args.compile_modes and not bench.args.cpu:
        # the defaults: with WARMUP_WORKFLOW set, TORCH_COMPILE=auto compiles during the warm-up
        if not bench.args.keep_compile_cache:
            shutil.rmtree(bench.work / "compile-cache", ignore_errors=True)
        bench.phase("w2_defaults_compiled", 150, all_gpus, "w2_defaults_compiled")
    bench.phase("ram_dynamic", 60, second_instance_ram, bench, "dynamic")


def second_instance_ram(bench: Bench, mode: str) -> None:
    """P3: host RAM added by a second instance holding the same model, in a VRAM mode."""
    settings = bench.settings(COMFY_VRAM_MODE=mode)
    gpu_ids = [g.index for g in bench.gpus][:2] or [None, None]
    tunings = plan_launch_tuning(settings, bench.gpus, gpu_ids) if bench.gpus else [LaunchTuning(), LaunchTuning()]
    before = memory_snapshot({})
    first, _ = bench.direct(settings, gpu_ids[0], tunings[0], node_request(settings, on_gpu=False))
    second = None
    try:
        one = bench.steady(first, "sdxl", 2)
        after_first = memory_snapshot({"a": first})
        if len(bench.gpus) < 2 and not bench.args.cpu:
            bench.record(f"ram_{mode}", {"note": "one GPU only", "before": before, "after_first": after_first})
            return
        second, _ = bench.direct(settings, gpu_ids[1], tunings[1], node_request(settings, on_gpu=False))
        two = bench.steady(second, "sdxl", 2)
        after_second = memory_snapshot({"a": first, "b": second})
        model_bytes = sum(v for k, v in bench.results["models"].get("files", {}).items()
                          if k in ("sdxl_unet.safetensors", "clip_l.safetensors", "clip_g.safetensors",
                                   "sd_vae.safetensors"))
        added = {key: after_second["meminfo"][key] - after_first["meminfo"][key]
                 for key in ("Used", "AnonPages", "Cached", "Shmem")}
        bench.record(f"ram_{mode}", {
            "before": before, "after_first": after_first, "after_second": after_second, "added_mib": added,
            "model_files_mib": round(model_bytes / 2**20),
            "p3_used": round(added["Used"] * 2**20 / model_bytes, 3) if model_bytes else None,
            "first_its": one["its_median"], "second_its": two["its_median"],
            "flags": list(tunings[0].flags),
        })
    finally:
        first.stop()
        if second:
            second.stop()


def plan_p2probe(bench: Bench) -> None:
    """Where the worker's per-job overhead (P2) comes from, one hypothesis per phase, on GPU 0."""

    from comfy_worker.follower import PromptFollower
    from comfy_worker.logs import JobLog
    from comfy_worker.progress import ProgressReporter

    rounds = 2 if bench.args.cpu else 7

    def follower_direct(instance: ComfyInstance) -> float:
        follower = PromptFollower(instance.client, uuid.uuid4().hex, 2.0, JobLog("probe"))
        started = time.monotonic()
        follower.connect()
        try:
            workflow = bench.workflow("sdxl")
            prompt_id, _ = instance.client.submit(workflow, follower.client_id, {})
            follower.follow(prompt_id, workflow, started + 600, 600, __import__("threading").Event(),
                            ProgressReporter({}, "probe", 1e9, None))
        finally:
            follower.close()
        return time.monotonic() - started

    def pinned_worker() -> None:
        worker, _ = bench.start_worker(COMFY_NUM_GPUS="1", TORCH_COMPILE="off")
        try:
            bench.through_worker(worker, "sdxl", 2)
            bench.record("p2_in_process", bench.sequential_direct_vs_worker(worker, "sdxl", rounds))
            instance = worker.fleet.instances[0]
            raw, ours = [], []
            for _ in range(rounds):
                raw.append(bench.post_and_wait(instance, [bench.workflow("sdxl")])[0]["done_s"])
                ours.append(follower_direct(instance))
            bench.record("p2_follower_alone", {"direct_s": raw, "follower_s": ours,
                                               "ratio": round(median(ours) / median(raw), 4)})
            cpus = set(instance.tuning.cpu_set.cpus) if instance.tuning.cpu_set else set()
            spare = sorted(set(os.sched_getaffinity(0)) - cpus)
            if spare:
                original = os.sched_getaffinity(0)
                tasks = [int(t) for t in os.listdir("/proc/self/task")]
                for task in tasks:
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(task, spare)
                try:
                    result = bench.sequential_direct_vs_worker(worker, "sdxl", rounds)
                    result["harness_cpus"] = spare
                    bench.record("p2_harness_on_spare_cores", result)
                finally:
                    for task in [int(t) for t in os.listdir("/proc/self/task")]:
                        with contextlib.suppress(OSError):
                            os.sched_setaffinity(task, original)
        finally:
            worker.stop()

    def unpinned_worker() -> None:
        worker, _ = bench.start_worker(COMFY_NUM_GPUS="1", TORCH_COMPILE="off", COMFY_CPU_PINNING="0")
        try:
            bench.through_worker(worker, "sdxl", 2)
            bench.record("p2_unpinned", bench.sequential_direct_vs_worker(worker, "sdxl", rounds))
        finally:
            worker.stop()

    def compiled_worker() -> None:
        """Compiled jobs vary by 2 % instead of ±15 %: the overhead shows above the noise."""
        worker, _ = bench.start_worker(COMFY_NUM_GPUS="1", WARMUP_WORKFLOW=json.dumps(bench.workflow("sdxl")))
        try:
            bench.through_worker(worker, "sdxl", 2)
            result = bench.sequential_direct_vs_worker(worker, "sdxl", rounds)
            result["startup"] = dict(worker.startup_s)
            bench.record("p2_compiled", result)
        finally:
            worker.stop()

    bench.phase("p2_pinned", 90, pinned_worker)
    bench.phase("p2_unpinned_worker", 50, unpinned_worker)
    bench.phase("p2_compiled", 120, compiled_worker)


def plan_scaling(bench: Bench) -> None:
    """The worker on 1, 2 and 4 GPUs (separate workers, same job mix): throughput, host RAM per extra instance, the
    per-GPU balance; then a concurrent run of --soak-s seconds on every GPU for each COMFY_CACHE value in
    --soak-caches, every answer checked, RAM sampled."""
    counts = [n for n in (1, 2, 4, 8) if n <= max(len(bench.gpus), 2 if bench.args.cpu else 1)]
    sdxl_warmup = json.dumps(bench.workflow("sdxl"))
    model_bytes = sdxl_model_bytes(bench)
    baseline = meminfo_mib()
    bench.record("scaling_baseline", {"meminfo": baseline, "model_files_mib": round(model_bytes / MIB),
                                      "counts": counts})

    def run(count: int) -> None:
        before = meminfo_mib()
        worker, start_s = bench.start_worker(WARMUP_WORKFLOW=sdxl_warmup, TORCH_COMPILE="off", **instances(count))
        try:
            bench.through_worker(worker, "sdxl", count)  # every instance past its first real job
            ram = memory_snapshot(instances_of(worker))
            result = bench.through_worker(worker, "sdxl", bench.args.jobs * count)
            result.update(start_s=round(start_s, 2), startup=dict(worker.startup_s), instances=count, ram=ram,
                          host_used_added_mib=ram["meminfo"]["Used"] - before["Used"])
            bench.record(f"scale_{count}", result)
            if count == counts[-1] and caches and caches[0] == "classic":  # COMFY_CACHE's default: this worker
                soak_phase(worker, count, caches.pop(0))
        finally:
            worker.stop()

    def soak_phase(worker: Worker | None, count: int, cache: str) -> None:
        seconds = min(bench.args.soak_s, bench.left() - 15 - (0 if worker else 30))
        if worker is not None:
            bench.record(f"soak_{count}_{cache}", soak(bench, worker, seconds, clients=2 * count))
            return
        worker, _ = bench.start_worker(WARMUP_WORKFLOW=sdxl_warmup, TORCH_COMPILE="off", COMFY_CACHE=cache,
                                       **instances(count))
        try:
            bench.record(f"soak_{count}_{cache}", soak(bench, worker, seconds, clients=2 * count))
        finally:
            worker.stop()

    def instances(count: int) -> dict[str, str]:
        if bench.args.cpu:
            return {"COMFY_NUM_GPUS": "0", "COMFY_CPU_INSTANCES": str(count)}
        return {"COMFY_NUM_GPUS": str(count)}

    caches = [c for c in bench.args.soak_caches.split(",") if c] if bench.args.soak_s else []
    for count in counts:
        bench.phase(f"scale_{count}", 45, run, count)
    bench.record("scaling_summary", scaling_summary(bench.results["phases"], counts, model_bytes))
    for cache in caches:
        bench.phase(f"soak_{counts[-1]}_{cache}", 60, soak_phase, None, counts[-1], cache)


def plan_models(bench: Bench) -> None:
    """Models by URL, served from a loopback HTTP server: a 100 MB file fetched by a job (its download time and what
    it adds to the job), then the SDXL VAE fetched by URL and used: download to first image, cold and cached."""
    import functools
    import http.server
    import threading

    served = bench.work / "served"
    served.mkdir(parents=True, exist_ok=True)
    (served / "random_100mb.safetensors").write_bytes(os.urandom(100 * MIB))
    vae = Path(bench.args.models) / "vae" / "sd_vae.safetensors"
    (served / "url_vae.safetensors").write_bytes(vae.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    cache = bench.work / "model-cache"
    shutil.rmtree(cache, ignore_errors=True)
    worker, start_s = bench.start_worker(COMFY_NUM_GPUS="0" if bench.args.cpu else "1", TORCH_COMPILE="off",
                                         MODEL_CACHE_DIR=str(cache), **({"COMFY_CPU_INSTANCES": "1"} if bench.args.cpu
                                                                        else {}))

    def job(workflow: dict[str, Any], models: list[dict[str, Any]]) -> dict[str, Any]:
        started = time.monotonic()
        result = bench.loop.run_until_complete(worker.handle(
            {"id": f"models-{uuid.uuid4().hex[:6]}", "input": {"workflow": workflow, "models": models}}))
        if "error" in result:
            raise RuntimeError(result["error"])
        timings = result["timings"]
        return {"job_s": round(time.monotonic() - started, 3), "download_ms": timings["download_ms"],
                "execution_ms": timings["execution_ms"], "phases_ms": timings["phases_ms"],
                "downloaded": result["models_downloaded"]}

    try:
        bench.record("models_warm_instance", job(bench.workflow("sdxl"), []))
        big = [{"url": f"{base}/random_100mb.safetensors", "folder": "loras"}]
        bench.record("models_100mb_cold", job(bench.workflow("sdxl"), big))
        bench.record("models_100mb_cached", job(bench.workflow("sdxl"), big))
        def vae_by_url() -> dict[str, Any]:  # a new seed each time, so that ComfyUI's cache serves nothing
            workflow = bench.workflow("sdxl")
            workflow["3"]["inputs"]["vae_name"] = f"{base}/url_vae.safetensors"
            return workflow

        result = job(vae_by_url(), [])
        result["vae_mib"] = round(vae.stat().st_size / MIB, 1)
        bench.record("models_vae_by_url_cold", result)
        bench.record("models_vae_by_url_cached", job(vae_by_url(), []))
        bench.record("models_start_s", {"start_s": round(start_s, 2)})
    finally:
        worker.stop()
        server.shutdown()


def sdxl_model_bytes(bench: Bench) -> int:
    files = bench.results["models"].get("files", {})
    names = ("sd15_unet.safetensors", "clip_l.safetensors", "sd_vae.safetensors") if bench.args.cpu else \
        ("sdxl_unet.safetensors", "clip_l.safetensors", "clip_g.safetensors", "sd_vae.safetensors")
    return sum(size for name, size in files.items() if name in names)


def scaling_summary(phases: dict[str, Any], counts: list[int], model_bytes: int) -> dict[str, Any]:
    rows = {n: phases[f"scale_{n}"] for n in counts if f"scale_{n}" in phases}
    if 1 not in rows:
        return {"error": "no 1-instance run"}
    one = rows[1]["images_per_min"]
    used_one = rows[1]["host_used_added_mib"]
    summary: dict[str, Any] = {"images_per_min": {n: r["images_per_min"] for n, r in rows.items()},
                               "ratio_to_one": {n: round(r["images_per_min"] / one, 3) for n, r in rows.items()},
                               "host_used_added_mib": {n: r["host_used_added_mib"] for n, r in rows.items()},
                               "per_instance_jobs": {n: r["per_instance"] for n, r in rows.items()}}
    summary["ram_per_extra_instance_mib"] = {
        n: round((r["host_used_added_mib"] - used_one) / (n - 1)) for n, r in rows.items() if n > 1}
    if model_bytes:
        summary["ram_per_extra_instance_over_model"] = {
            n: round(mib * MIB / model_bytes, 3) for n, mib in summary["ram_per_extra_instance_mib"].items()}
    return summary


def soak(bench: Bench, worker: Worker, seconds: float, clients: int) -> dict[str, Any]:
    """`clients` callers each hand the worker one job after another for `seconds`; every answer is checked (one
    PNG of the workflow's size); RAM is sampled every 10 s."""
    records: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    started = time.monotonic()
    end = started + seconds
    worker_pid = os.getpid()
    expected = 128 if bench.args.cpu else 1024

    async def client(number: int) -> None:
        while time.monotonic() < end:
            job_id = f"soak-{number}-{len(records)}"
            sent = time.monotonic()
            result = await worker.handle({"id": job_id, "input": {"workflow": bench.workflow("sdxl")}})
            problem = result.get("error") or check_png_answer(result, expected)
            records.append({"id": job_id, "t_s": round(sent - started, 2), "s": round(time.monotonic() - sent, 3),
                            "instance": result.get("instance"), "prompt_id": result.get("prompt_id"),
                            "error": problem})

    async def sample_memory() -> None:
        while time.monotonic() < end:
            memory.append({"t_s": round(time.monotonic() - started, 1), "used_mib": meminfo_mib()["Used"],
                           "worker_rss_mib": smaps_mib(worker_pid).get("Rss"),
                           "instances_rss_mib": {i.label: smaps_mib(i.pid).get("Rss")
                                                 for i in worker.fleet.instances}})
            await asyncio.sleep(10)

    async def run_all() -> None:
        await asyncio.gather(sample_memory(), *(client(n) for n in range(clients)))

    with GpuSampler() as sampler:
        bench.loop.run_until_complete(run_all())
    wall = time.monotonic() - started
    failures = [r for r in records if r["error"]]
    per_instance: dict[str, int] = {}
    for record in records:
        per_instance[record["instance"] or "none"] = per_instance.get(record["instance"] or "none", 0) + 1
    rss_growth = {label: memory[-1]["instances_rss_mib"][label] - memory[0]["instances_rss_mib"][label]
                  for label in memory[0]["instances_rss_mib"]} if len(memory) > 1 else {}
    prompt_ids = [r["prompt_id"] for r in records if r["prompt_id"]]  # two jobs given one prompt's outputs share one
    return {"seconds": round(wall, 1), "clients": clients, "jobs": len(records), "failures": len(failures),
            "failed": failures[:5], "answers_shared": len(prompt_ids) - len(set(prompt_ids)),
            "images_per_min": round(len(records) / wall * 60, 2), "per_instance": per_instance,
            "job_s_median": median([r["s"] for r in records]),
            "job_s_max": max((r["s"] for r in records), default=None),
            "instances_rss_growth_mib": rss_growth,
            "host_used_growth_mib": memory[-1]["used_mib"] - memory[0]["used_mib"] if memory else None,
            "memory": memory, "gpu": sampler.summary(), "jobs_timeline": [[r["t_s"], r["s"]] for r in records]}


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


# --- helpers ----------------------------------------------------------------------------------------------------
def instances_of(worker: Worker) -> dict[str, ComfyInstance]:
    return {instance.label: instance for instance in worker.fleet.instances}


def memory_snapshot(instances: dict[str, ComfyInstance]) -> dict[str, Any]:
    return {"meminfo": meminfo_mib(),
            "processes": {name: {k: v for k, v in smaps_mib(instance.pid).items()
                                 if k in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Anonymous", "Private_Clean",
                                          "Private_Dirty", "Shared_Clean")}
                          for name, instance in instances.items()}}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", choices=("flags", "worker", "smoke", "p2probe", "scaling", "models"), required=True)
    parser.add_argument("--comfy", required=True, help="the ComfyUI folder")
    parser.add_argument("--models", required=True, help="MODELS_DIR of bench/make_models.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/bench-work")
    parser.add_argument("--fe", default="", help="--front-end-root for ComfyUI (where the frontend is absent)")
    parser.add_argument("--jobs", type=int, default=6, help="jobs per measurement (per GPU in the worker plan)")
    parser.add_argument("--deadline", type=float, default=540)
    parser.add_argument("--compile-modes", default="default", help="torch.compile modes to try; empty: none")
    parser.add_argument("--cpu", action="store_true", help="a dry run on CPU instances with tiny shapes")
    parser.add_argument("--phases", default="", help="run only these phases (comma-separated names)")
    parser.add_argument("--soak-s", type=float, default=300, help="scaling plan: each concurrent run's length")
    parser.add_argument("--soak-caches", default="classic",
                        help="scaling plan: a concurrent run on all GPUs for each of these COMFY_CACHE values")
    parser.add_argument("--keep-compile-cache", action="store_true", help="start from the compile cache on disk")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    comfy_log = logging.getLogger("comfy_worker.comfyui")  # ComfyUI's own lines go to a file of their own
    comfy_log.propagate = False
    Path(args.out).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(args.out) / "comfyui.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    comfy_log.addHandler(handler)
    bench = Bench(args)
    try:
        if args.plan in ("flags", "smoke"):
            plan_flags(bench)
        if args.plan in ("worker", "smoke"):
            plan_worker(bench)
        if args.plan == "p2probe":
            plan_p2probe(bench)
        if args.plan == "scaling":
            plan_scaling(bench)
        if args.plan == "models":
            plan_models(bench)
    finally:
        bench.results["total_s"] = round(time.monotonic() - bench.started, 1)
        (bench.out / "results.json").write_text(json.dumps(bench.results, indent=1, default=str))
        log.info("done in %.0f s; %d errors", bench.results["total_s"], len(bench.results["errors"]))


if __name__ == "__main__":
    main()
