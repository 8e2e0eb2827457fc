"""The worker's in-process switches for one ComfyUI instance (a custom node the worker loads into every instance).

POST /worker/tuning {"tf32": bool, "cudnn_benchmark": bool, "compile": {"backend": str, "mode": str|null}|null,
"png_compress_level": int|null} applies the torch switches, logs each one (`✓ Enabled TF32 …`) and answers with the
state read back from torch; GET /worker/tuning answers the same state. With `compile` set, every diffusion model
loaded afterwards (UNETLoader, checkpoint loaders) is wrapped with torch.compile through ComfyUI's own helper, so no
workflow changes; a workflow that has its own TorchCompileModel node replaces the wrapper with its own.

`fast_load` {"threads": int, "force": bool} (or null: off) reads diffusion model files straight into GPU memory
with that many readers (fast_load.py); `force` takes that path on any device (the CPU tests).

`png_compress_level` is the zlib level SaveImage writes its PNGs with (ComfyUI's is 4). Nodes that set their own level
keep it: PreviewImage's 1, a subclass that sets `compress_level` itself, nodes with a compress_level input.

Switching compile on while models are loaded wraps those too (in place: the loader's cached output is the patcher
every next job clones), so an instance that served uncompiled switches to compiled without reloading anything.

GET /worker/compile: what torch.compile did here (dynamo's counters, every group; compile seconds; recompile
reasons; each compiled model and the seconds of its first call) and what its code depends on (GPU, torch, CUDA,
triton, ComfyUI versions). POST /worker/compile/save {"path"} and /worker/compile/load {"path"}: PyTorch's
Mega-Cache written to / loaded from a file (compile_cache.py); failures answer {"error": ...}.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref

import comfy.memory_management
import comfy.model_base
import comfy.model_management
import comfy.sd
import nodes
import server
import torch
from aiohttp import web

from . import compile_cache, fast_load

log = logging.getLogger("comfy_worker_tuning")

COMFY_PNG_COMPRESS_LEVEL = 4  # SaveImage's own in ComfyUI v0.29
STATE: dict = {"tf32": None, "cudnn_benchmark": None, "compile": None, "compiled_models": 0, "applied": [],
               "png_compress_level": COMFY_PNG_COMPRESS_LEVEL}
COMPILED: list[dict] = []  # per compiled model: its class and the seconds of its first call (compile included)
LOADED: weakref.WeakSet = weakref.WeakSet()  # the diffusion models loaded through our hooks and still alive
FIRST_CALL_KEY = "comfy_worker.first_call"


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
        wrapped = sum(1 for patcher in list(LOADED) if not _is_compiled(patcher) and _compile(patcher) is patcher)
        if wrapped:
            _report(f"✓ torch.compile wrapper set on {wrapped} loaded model(s)")
    else:
        _report("✗ Disabled torch.compile of diffusion models")
    fast = request.get("fast_load") or {}
    fast_load.SETTINGS.threads = int(fast.get("threads") or 0)
    fast_load.SETTINGS.force = bool(fast.get("force"))
    if fast_load.SETTINGS.threads:
        _report(f"✓ Fast load of diffusion models to the GPU ({fast_load.SETTINGS.threads} readers)")
    level = request.get("png_compress_level")
    if level is not None:
        STATE["png_compress_level"] = int(level)
        _report(f"✓ PNG compress level {int(level)} for SaveImage")
    return state()


def state() -> dict:
    return {**STATE, "torch": _torch_state(),
            "fast_load": {"threads": fast_load.SETTINGS.threads, "loads": fast_load.SETTINGS.loads[-20:]}}


def _is_compiled(model_patcher) -> bool:
    return "torch_compile_kwargs" in getattr(model_patcher, "model_options", {})


def _first_call_timer(record: dict):
    """An apply_model wrapper that times the first call of a compiled model: the compile (or the cache load) and,
    with reduce-overhead, the first CUDA graph recording."""
    def wrapper(executor, *args, **kwargs):
        if record["first_call_s"] is not None:
            return executor(*args, **kwargs)
        started = time.monotonic()
        try:
            return executor(*args, **kwargs)
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            record["first_call_s"] = round(time.monotonic() - started, 3)
    return wrapper


def _compile(model_patcher):
    if model_patcher is not None and hasattr(model_patcher, "get_model_object"):
        LOADED.add(model_patcher)
    options = STATE["compile"]
    if not options or model_patcher is None or not hasattr(model_patcher, "get_model_object"):
        return model_patcher
    from comfy.patcher_extension import WrappersMP
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    started = time.monotonic()
    set_torch_compile_wrapper(model_patcher, backend=options.get("backend", "inductor"), mode=options.get("mode"))
    record = {"model": type(model_patcher.model).__name__, "first_call_s": None}
    model_patcher.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, FIRST_CALL_KEY)
    model_patcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, FIRST_CALL_KEY, _first_call_timer(record))
    COMPILED.append(record)
    STATE["compiled_models"] += 1
    log.info("torch.compile wrapper set on %s in %.2f s (compiles on first use)",
             type(model_patcher.model).__name__, time.monotonic() - started)
    return model_patcher


def _high_vram() -> bool:
    return (comfy.model_management.vram_state == comfy.model_management.VRAMState.HIGH_VRAM
            and not comfy.memory_management.aimdo_enabled)


_load_diffusion_model = fast_load.wrap_load_diffusion_model(
    comfy.sd.load_diffusion_model, comfy.sd.load_diffusion_model_state_dict, comfy.model_management.get_torch_device,
    _high_vram, comfy.model_management.unet_offload_device)
comfy.model_base.BaseModel.load_model_weights = fast_load.wrap_load_model_weights(
    comfy.model_base.BaseModel.load_model_weights)
_load_checkpoint = comfy.sd.load_checkpoint_guess_config


def load_diffusion_model(*args, **kwargs):
    return _compile(_load_diffusion_model(*args, **kwargs))


def load_checkpoint_guess_config(*args, **kwargs):
    model, *rest = _load_checkpoint(*args, **kwargs)
    return (_compile(model), *rest)


comfy.sd.load_diffusion_model = load_diffusion_model
comfy.sd.load_checkpoint_guess_config = load_checkpoint_guess_config


def _get_compress_level(node) -> int:
    return node.__dict__.get("_own_compress_level", STATE["png_compress_level"])


def _set_compress_level(node, level: int) -> None:
    node.__dict__["_own_compress_level"] = level


_save_image_init = nodes.SaveImage.__init__


def save_image_init(self, *args, **kwargs) -> None:
    """SaveImage's own level (4) gives way to the configured one, read at each save: ComfyUI keeps node objects
    between prompts. A subclass that sets its level after this, or without calling it (PreviewImage), keeps its own."""
    _save_image_init(self, *args, **kwargs)
    self.__dict__.pop("_own_compress_level", None)


nodes.SaveImage.compress_level = property(_get_compress_level, _set_compress_level)
nodes.SaveImage.__init__ = save_image_init


@server.PromptServer.instance.routes.get("/worker/tuning")
async def get_tuning(request: web.Request) -> web.Response:
    return web.json_response(state())


@server.PromptServer.instance.routes.post("/worker/tuning")
async def post_tuning(request: web.Request) -> web.Response:
    return web.json_response(apply(await request.json()))


def _comfyui_version() -> str | None:
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except ImportError:
        return None


def compile_report() -> dict:
    return {"compile": STATE["compile"], "compiled_models": STATE["compiled_models"], "models": list(COMPILED),
            "counters": compile_cache.counters(), "compile_seconds": compile_cache.compile_seconds(),
            "recompile_reasons": compile_cache.recompile_reasons(),
            "environment": compile_cache.environment(_comfyui_version())}


@server.PromptServer.instance.routes.get("/worker/compile")
async def get_compile(request: web.Request) -> web.Response:
    return web.json_response(compile_report())


async def _path_of(request: web.Request) -> str:
    try:
        body = await request.json()
    except ValueError:
        return ""
    return str(body.get("path") or "") if isinstance(body, dict) else ""


@server.PromptServer.instance.routes.post("/worker/compile/save")
async def post_compile_save(request: web.Request) -> web.Response:
    path = await _path_of(request)
    return web.json_response(await asyncio.get_running_loop().run_in_executor(None, compile_cache.save, path))


@server.PromptServer.instance.routes.post("/worker/compile/load")
async def post_compile_load(request: web.Request) -> web.Response:
    path = await _path_of(request)
    return web.json_response(await asyncio.get_running_loop().run_in_executor(None, compile_cache.load, path))


NODE_CLASS_MAPPINGS: dict = {}
