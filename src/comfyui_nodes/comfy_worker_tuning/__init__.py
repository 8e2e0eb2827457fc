"""The worker's in-process switches for one ComfyUI instance (a custom node the worker loads into every instance).

POST /worker/tuning {"tf32": bool, "cudnn_benchmark": bool, "compile": {"backend": str, "mode": str|null}|null,
"png_compress_level": int|null} applies the torch switches, logs each one (`✓ Enabled TF32 …`) and answers with the
state read back from torch; GET /worker/tuning answers the same state. With `compile` set, every diffusion model
loaded afterwards (UNETLoader, checkpoint loaders) is wrapped with torch.compile through ComfyUI's own helper, so no
workflow changes; a workflow that has its own TorchCompileModel node replaces the wrapper with its own.

`png_compress_level` is the zlib level SaveImage writes its PNGs with (ComfyUI's is 4). Nodes that set their own level
keep it: PreviewImage's 1, a subclass that sets `compress_level` itself, nodes with a compress_level input.
"""

from __future__ import annotations

import logging
import os
import time

import comfy.sd
import nodes
import server
import torch
from aiohttp import web

log = logging.getLogger("comfy_worker_tuning")

COMFY_PNG_COMPRESS_LEVEL = 4  # SaveImage's own in ComfyUI v0.29
STATE: dict = {"tf32": None, "cudnn_benchmark": None, "compile": None, "compiled_models": 0, "applied": [],
               "png_compress_level": COMFY_PNG_COMPRESS_LEVEL}


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
    level = request.get("png_compress_level")
    if level is not None:
        STATE["png_compress_level"] = int(level)
        _report(f"✓ PNG compress level {int(level)} for SaveImage")
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


NODE_CLASS_MAPPINGS: dict = {}
