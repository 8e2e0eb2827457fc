"""The worker's in-process switches for one ComfyUI instance (a custom node the worker loads into every instance).

POST /worker/tuning {"tf32": bool, "cudnn_benchmark": bool, "compile": {"backend": str, "mode": str|null}|null}
applies the torch switches, logs each one (`✓ Enabled TF32 …`) and answers with the state read back from torch;
GET /worker/tuning answers the same state. With `compile` set, every diffusion model loaded afterwards (UNETLoader,
checkpoint loaders) is wrapped with torch.compile through ComfyUI's own helper, so no workflow changes; a workflow
that has its own TorchCompileModel node replaces the wrapper with its own.
"""

from __future__ import annotations

import logging
import os
import time

import comfy.sd
import server
import torch
from aiohttp import web

log = logging.getLogger("comfy_worker_tuning")

STATE: dict = {"tf32": None, "cudnn_benchmark": None, "compile": None, "compiled_models": 0, "applied": []}


def _torch_state() -> dict:
    return {
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "allocator": torch.cuda.get_allocator_backend() if torch.cuda.is_available() else "cpu",
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
        "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""),
    }


def _report(line: str) -> None:
    STATE["applied"].append(line)
    log.info(line)


def apply(request: dict) -> dict:
    STATE["applied"] = []
    tf32 = bool(request.get("tf32"))
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    _report(f"{'✓ Enabled' if tf32 else '✗ Disabled'} TF32 for matmul and cuDNN")
    benchmark = bool(request.get("cudnn_benchmark"))
    torch.backends.cudnn.benchmark = benchmark
    _report(f"{'✓ Enabled' if benchmark else '✗ Disabled'} cudnn.benchmark")
    compile_options = request.get("compile") or None
    STATE.update(tf32=tf32, cudnn_benchmark=benchmark, compile=compile_options)
    if compile_options:
        _report(f"✓ Enabled torch.compile of diffusion models on load (backend {compile_options.get('backend')}, "
                f"mode {compile_options.get('mode') or 'default'})")
    else:
        _report("✗ Disabled torch.compile of diffusion models")
    return state()


def state() -> dict:
    return {**STATE, "torch": _torch_state()}


def _compile(model_patcher):
    options = STATE["compile"]
    if not options or model_patcher is None or not hasattr(model_patcher, "get_model_object"):
        return model_patcher
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    started = time.monotonic()
    set_torch_compile_wrapper(model_patcher, backend=options.get("backend", "inductor"), mode=options.get("mode"))
    STATE["compiled_models"] += 1
    log.info("torch.compile wrapper set on %s in %.2f s (compiles on first use)",
             type(model_patcher.model).__name__, time.monotonic() - started)
    return model_patcher


_load_diffusion_model = comfy.sd.load_diffusion_model
_load_checkpoint = comfy.sd.load_checkpoint_guess_config


def load_diffusion_model(*args, **kwargs):
    return _compile(_load_diffusion_model(*args, **kwargs))


def load_checkpoint_guess_config(*args, **kwargs):
    model, *rest = _load_checkpoint(*args, **kwargs)
    return (_compile(model), *rest)


comfy.sd.load_diffusion_model = load_diffusion_model
comfy.sd.load_checkpoint_guess_config = load_checkpoint_guess_config


@server.PromptServer.instance.routes.get("/worker/tuning")
async def get_tuning(request: web.Request) -> web.Response:
    return web.json_response(state())


@server.PromptServer.instance.routes.post("/worker/tuning")
async def post_tuning(request: web.Request) -> web.Response:
    return web.json_response(apply(await request.json()))


NODE_CLASS_MAPPINGS: dict = {}
