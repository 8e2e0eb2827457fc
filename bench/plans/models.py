"""The models plan: models by URL from a loopback server, cold and cached."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from probes import MIB
from runner import (
    Bench,
)

log = logging.getLogger("bench")


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
