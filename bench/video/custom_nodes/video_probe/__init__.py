"""A passive timing probe loaded into every benchmarked ComfyUI (a custom-node folder; it adds no nodes).

It wraps the loaders, text encode, the sampler and VAE decode, recording each call's wall time after a
torch.cuda.synchronize(), and the time of every sampler step (the step callback, also after a synchronize), so
s/step excludes loading and warm-up. POST /probe/profile_next makes the next sampler run profile its last step with
torch.profiler (CUDA activity only): the kernels that ran (fp8 GEMMs, attention backend) and the bytes copied host →
GPU during that step. GET /probe/events returns and clears the records, with the process's CUDA memory peaks.
PROBE_SDPA=cudnn|flash restricts PyTorch's attention backends.
"""

import json
import os
import re
import tempfile
import time

import latent_preview
import nodes
import server
import torch
from aiohttp import web

EVENTS = []
STEPS = []
PROFILE = {"next": False, "profiler": None, "result": None}
# fp8 GEMMs: cuBLAS's nvjet kernels name fp8 operands "qq" (nvjet_sm90_qqhsh_…: e4m3 × e4m3 → half), CUTLASS and
# cuDNN kernels e4m3/f8
FP8_KERNEL = re.compile(r"e4m3|e5m2|f8f8|fp8|_f8_|qgmma|nvjet_sm\d+_qq", re.IGNORECASE)
ATTENTION_KERNEL = re.compile(r"fmha|flash|attention|sdpa|attn", re.IGNORECASE)

_SDPA = os.environ.get("PROBE_SDPA", "")
if _SDPA == "cudnn":
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(True)
elif _SDPA == "flash":
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.enable_flash_sdp(True)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _wrap_method(cls, name, kind):
    original = getattr(cls, name)

    def wrapped(self, *args, **kwargs):
        _sync()
        started = time.time()
        try:
            return original(self, *args, **kwargs)
        finally:
            _sync()
            EVENTS.append({"kind": kind, "t0": started, "t1": time.time()})

    setattr(cls, name, wrapped)


_wrap_method(nodes.UNETLoader, "load_unet", "UNETLoader")
_wrap_method(nodes.CLIPLoader, "load_clip", "CLIPLoader")
_wrap_method(nodes.DualCLIPLoader, "load_clip", "CLIPLoader")
_wrap_method(nodes.VAELoader, "load_vae", "VAELoader")
_wrap_method(nodes.CLIPTextEncode, "encode", "CLIPTextEncode")
_wrap_method(nodes.VAEDecode, "decode", "VAEDecode")
_original_ksampler = nodes.common_ksampler


def _common_ksampler(*args, **kwargs):
    _sync()
    STEPS.clear()
    PROFILE["result"] = None
    started = time.time()
    try:
        return _original_ksampler(*args, **kwargs)
    finally:
        _sync()
        if PROFILE["profiler"] is not None:  # a run that ended early: close the profiler
            PROFILE["profiler"].stop()
            PROFILE["profiler"] = None
        event = {"kind": "KSampler", "t0": started, "t1": time.time(), "steps": list(STEPS)}
        if PROFILE["result"] is not None:
            event["profile"] = PROFILE["result"]
        EVENTS.append(event)


nodes.common_ksampler = _common_ksampler
_original_prepare_callback = latent_preview.prepare_callback


def _summarise_trace(path, step_s):
    with open(path) as trace_file:
        trace = json.load(trace_file)
    kernels, h2d_bytes, h2d_us, d2h_bytes = {}, 0, 0.0, 0
    for event in trace.get("traceEvents", []):
        category = event.get("cat", "")
        if category == "kernel":
            entry = kernels.setdefault(event.get("name", "?"), [0.0, 0])
            entry[0] += event.get("dur", 0.0)
            entry[1] += 1
        elif category == "gpu_memcpy":
            name = event.get("name", "")
            size = int((event.get("args") or {}).get("bytes", 0))
            if "HtoD" in name:
                h2d_bytes += size
                h2d_us += event.get("dur", 0.0)
            elif "DtoH" in name:
                d2h_bytes += size
    total_us = sum(v[0] for v in kernels.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:15]
    return {
        "step_s": round(step_s, 4),
        "kernel_ms": round(total_us / 1000, 1),
        "fp8_kernel_ms": round(sum(v[0] for k, v in kernels.items() if FP8_KERNEL.search(k)) / 1000, 1),
        "attention_kernel_ms": round(sum(v[0] for k, v in kernels.items() if ATTENTION_KERNEL.search(k)) / 1000, 1),
        "h2d_bytes": h2d_bytes, "h2d_ms": round(h2d_us / 1000, 1), "d2h_bytes": d2h_bytes,
        "top_kernels": [{"name": k[:160], "ms": round(v[0] / 1000, 2), "calls": v[1]} for k, v in top],
    }


def _prepare_callback(model, steps, x0_output_dict=None):
    callback_inner = _original_prepare_callback(model, steps, x0_output_dict)
    profile_this_run = PROFILE["next"]
    PROFILE["next"] = False

    def callback(step, x0, x, total_steps):
        _sync()
        STEPS.append(time.time())
        last = total_steps - 1
        if profile_this_run and step == last - 1 and PROFILE["profiler"] is None and torch.cuda.is_available():
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            try:
                profiler.start()
                PROFILE["profiler"] = profiler
            except Exception as error:  # a probe must never fail the job it measures
                PROFILE["result"] = {"error": repr(error)[:300]}
        elif PROFILE["profiler"] is not None and step == last:
            profiler = PROFILE["profiler"]
            PROFILE["profiler"] = None
            profiler.stop()
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "trace.json")
                profiler.export_chrome_trace(path)
                PROFILE["result"] = _summarise_trace(path, STEPS[-1] - STEPS[-2])
        return callback_inner(step, x0, x, total_steps)

    return callback


latent_preview.prepare_callback = _prepare_callback


def _memory():
    if not torch.cuda.is_available():
        return {}
    result = {"max_allocated_MiB": torch.cuda.max_memory_allocated() >> 20,
              "max_reserved_MiB": torch.cuda.max_memory_reserved() >> 20}
    free, total = torch.cuda.mem_get_info()
    result.update(device_free_MiB=free >> 20, device_total_MiB=total >> 20)
    torch.cuda.reset_peak_memory_stats()
    return result


@server.PromptServer.instance.routes.get("/probe/events")
async def probe_events(request):
    out = {"pid": os.getpid(), "events": list(EVENTS), "memory": _memory()}
    EVENTS.clear()
    return web.json_response(out)


@server.PromptServer.instance.routes.post("/probe/profile_next")
async def probe_profile_next(request):
    PROFILE["next"] = True
    return web.json_response({"ok": True})


@server.PromptServer.instance.routes.get("/probe/state")
async def probe_state(request):
    import comfy.cli_args as cli
    import comfy.model_management as mm

    return web.json_response({
        "vram_state": str(mm.vram_state), "dynamic_vram": cli.enables_dynamic_vram(),
        "fast": sorted(str(x) for x in (cli.args.fast or [])),
        "fp8_compute": mm.supports_fp8_compute(mm.get_torch_device()) if torch.cuda.is_available() else False,
        "sdpa": {"flash": torch.backends.cuda.flash_sdp_enabled(), "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                 "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled()},
        "allocator": torch.cuda.get_allocator_backend() if torch.cuda.is_available() else None,
    })


NODE_CLASS_MAPPINGS = {}
