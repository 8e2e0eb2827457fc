"""What torch.compile did in this process, and its portable cache (PyTorch's Mega-Cache), for the tuning node.

Imports only torch and the standard library, so the tests load it outside ComfyUI. Every function answers a plain
JSON-able dict; `save` and `load` answer `{"error": ...}` instead of raising, so a bad path or a broken artefact
never takes the instance down.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# dynamo's per-phase compile times (torch._dynamo.utils.compilation_time_metrics): the whole frame compile, and the
# backend (inductor) inside it.
COMPILE_TIME_KEYS = {"_compile.compile_inner": "dynamo_compile_s", "OutputGraph.call_user_compiler": "backend_s",
                     "compile_fx_inner": "inductor_compile_s", "async_compile.wait": "async_compile_wait_s"}
MAX_REASONS = 20


def counters() -> dict[str, dict[str, int]]:
    """torch._dynamo.utils.counters, every group, as {group: {name: count}} (names made strings)."""
    from torch._dynamo.utils import counters as dynamo_counters

    return {str(group): {str(name): int(count) for name, count in values.items()}
            for group, values in dynamo_counters.items() if values}


def compile_seconds() -> dict[str, float]:
    from torch._dynamo.utils import compilation_time_metrics

    return {label: round(sum(compilation_time_metrics.get(key, [])), 3) for key, label in COMPILE_TIME_KEYS.items()}


def recompile_reasons() -> list[str]:
    """Why dynamo compiled a frame again (its failed guards), at most MAX_REASONS."""
    from torch._dynamo.utils import guard_failures

    return [f"{getattr(code, 'co_name', code)}: {reason}" for code, reasons in guard_failures.items()
            for reason in reasons][:MAX_REASONS]


def environment(comfyui_version: str | None) -> dict[str, Any]:
    """What the compiled code depends on, read in this process (the artefact's key is built from it)."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"gpu_name": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "comfyui": comfyui_version}


def info_summary(info: Any) -> dict[str, int]:
    """A CacheInfo as {kind: entries} (inductor, autotune, aot_autograd, pgo, …)."""
    artifacts = getattr(info, "artifacts", None) or {}
    return {str(kind): len(keys) for kind, keys in artifacts.items()}


def save(path: str) -> dict[str, Any]:
    """torch.compiler.save_cache_artifacts() written atomically to `path` (a temporary file beside it, then
    renamed), so a reader never sees half an artefact."""
    if not path:
        return {"error": "no path given: POST {\"path\": \"/where/to/write.megacache\"}"}
    started = time.monotonic()
    try:
        result = torch.compiler.save_cache_artifacts()
    except Exception as error:  # torch's own failure is reported, the instance goes on
        return {"error": f"torch.compiler.save_cache_artifacts failed: {type(error).__name__}: {error}"}
    if result is None:
        return {"error": "nothing to save: no compile was recorded in this instance (is compile on, and has a "
                         "compiled model run?)", "saved": False}
    data, info = result
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        return {"error": f"the artefact could not be written to {path}: {error.strerror or error}", "saved": False}
    return {"saved": True, "path": str(target), "bytes": len(data), "entries": info_summary(info),
            "seconds": round(time.monotonic() - started, 3)}


def load(path: str) -> dict[str, Any]:
    """torch.compiler.load_cache_artifacts(bytes of `path`): the caches are filled before anything compiles."""
    if not path:
        return {"error": "no path given: POST {\"path\": \"/where/the/artefact/is.megacache\"}"}
    started = time.monotonic()
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return {"error": f"the artefact {path} cannot be read: {error.strerror or error}", "loaded": False}
    try:
        info = torch.compiler.load_cache_artifacts(data)
    except Exception as error:
        return {"error": f"{path} is not a compile artefact this torch can load: {type(error).__name__}: {error}",
                "loaded": False}
    if info is None:  # torch logs why (a corrupt file, another torch's format) and loads nothing
        return {"error": f"{path} is not a compile artefact this torch can load (the instance's log says why)",
                "loaded": False, "bytes": len(data)}
    return {"loaded": True, "path": path, "bytes": len(data), "entries": info_summary(info),
            "seconds": round(time.monotonic() - started, 3)}
