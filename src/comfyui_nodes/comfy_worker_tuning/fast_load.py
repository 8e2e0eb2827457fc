"""A diffusion model's safetensors file read straight into GPU memory, at the speed of the disk or the page cache.

ComfyUI v0.29 with `--highvram` (dynamic VRAM off) builds a diffusion model on the CPU, moves its empty weights to
the GPU, then copies each tensor from the file's memory map into them: one pageable copy after another, each page
faulted in on the way (Wan 14B's 28.6 GB: 30 s from a cold disk, 15 s from the page cache, on an H200;
docs/benchmarks/video.md). Here several threads read the file with pread into pinned buffers and copy each piece to
its tensor on the GPU on their own CUDA stream while they read the next; the model then takes these tensors as its
weights where their dtype and shape are its own (no second copy, no empty weights moved first).

Only `comfy.sd.load_diffusion_model` (UNETLoader and the like) of a `.safetensors` file goes this way, and only on
a CUDA device in ComfyUI's high-VRAM state with room for the file twice; anything else, and any failure here, takes
ComfyUI's own path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger("comfy_worker_tuning.fast_load")

CHUNK_BYTES = 32 << 20
HEADER_LIMIT = 100 << 20
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


# keys of the quantized layouts (ComfyUI's comfy_quant, the older scaled fp8): ComfyUI's loader reads them on the CPU
QUANTIZED_MARKS = (".comfy_quant", ".scale_weight", ".scale_input", "scaled_fp8")


class NotLoadable(ValueError):
    """The file is not one this reader handles (ComfyUI's own loader then reads it)."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute offsets in the file
    end: int


@dataclass
class Piece:
    """One read of the file: [offset, offset + length), and where each part of it goes."""
    offset: int
    length: int
    parts: list[tuple[str, int, int, int]] = field(default_factory=list)  # name, offset in piece, in tensor, bytes


def read_header(path: str) -> tuple[list[TensorEntry], dict | None]:
    """The tensors of a safetensors file, in file order, and its `__metadata__`."""
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise NotLoadable("shorter than a safetensors header")
        header_bytes = int.from_bytes(prefix, "little")
        if header_bytes > min(HEADER_LIMIT, size - 8):
            raise NotLoadable(f"header of {header_bytes} bytes")
        try:
            header = json.loads(file.read(header_bytes))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise NotLoadable(f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise NotLoadable("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    quantized = [name for name in header if name.endswith(QUANTIZED_MARKS)]
    if quantized or (isinstance(metadata, dict) and "_quantization_metadata" in metadata):
        raise NotLoadable(f"a quantized layout ({quantized[0] if quantized else '_quantization_metadata'}): "
                          "ComfyUI's loader reads its quantization data on the CPU")
    base = 8 + header_bytes
    entries = []
    for name, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise NotLoadable(f"tensor {name!r}: dtype {info.get('dtype')!r}")
            shape = tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise NotLoadable(f"tensor {name!r}: {type(error).__name__} {error}") from None
        numel = 1
        for n in shape:
            numel *= n
        if end - begin != numel * dtype.itemsize or begin < 0 or base + end > size:
            raise NotLoadable(f"tensor {name!r}: offsets {begin}–{end} do not fit its shape or the file")
        entries.append(TensorEntry(name, dtype, shape, base + begin, base + end))
    entries.sort(key=lambda entry: entry.start)
    return entries, metadata


def plan_pieces(entries: list[TensorEntry], chunk: int = CHUNK_BYTES) -> list[Piece]:
    """The file's data cut into reads of at most `chunk` bytes; a tensor larger than a chunk spans several."""
    pieces: list[Piece] = []
    current: Piece | None = None
    for entry in entries:
        done = 0
        while done < entry.end - entry.start:
            at = entry.start + done
            if current is None or at != current.offset + current.length or current.length >= chunk:
                current = Piece(at, 0)
                pieces.append(current)
            take = min(chunk - current.length, entry.end - at)
            current.parts.append((entry.name, current.length, done, take))
            current.length += take
            done += take
    return pieces


def _read_fully(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise OSError(f"file ended at byte {offset}")
        view, offset = view[got:], offset + got


def read_to_device(path: str, device: torch.device, threads: int,
                   chunk: int = CHUNK_BYTES) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Every tensor of the file, on `device`, with the file's metadata (as `comfy.utils.load_torch_file` returns)."""
    entries, metadata = read_header(path)
    tensors = {entry.name: torch.empty(entry.shape, dtype=entry.dtype, device=device) for entry in entries}
    flat = {name: tensor.view(-1).view(torch.uint8) for name, tensor in tensors.items() if tensor.numel()}
    on_cuda = device.type == "cuda"
    if on_cuda:  # memory freed by kernels still queued must not be written by the readers' streams
        torch.cuda.current_stream(device).synchronize()
    pieces = iter(plan_pieces(entries, chunk))
    lock = threading.Lock()
    errors: list[BaseException] = []
    inference = torch.is_inference_mode_enabled()  # ComfyUI runs nodes in inference mode: the tensors are made so

    def next_piece() -> Piece | None:
        with lock:
            return None if errors else next(pieces, None)

    def copy_pieces(fd: int) -> None:
        stream = torch.cuda.Stream(device) if on_cuda else None
        buffers = [torch.empty(chunk, dtype=torch.uint8, pin_memory=on_cuda) for _ in range(2)]
        copied: list[torch.cuda.Event | None] = [None, None]
        turn = 0
        try:
            while (piece := next_piece()) is not None:
                if copied[turn] is not None:
                    copied[turn].synchronize()  # the copy out of this buffer is done: it may be read into again
                buffer = buffers[turn]
                _read_fully(fd, memoryview(buffer.numpy())[:piece.length], piece.offset)
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    for name, at, into, length in piece.parts:
                        flat[name][into:into + length].copy_(buffer[at:at + length], non_blocking=on_cuda)
                    if stream is not None:
                        copied[turn] = torch.cuda.Event()
                        copied[turn].record(stream)
                turn ^= 1
        finally:
            if stream is not None:
                stream.synchronize()  # no copy may still write into memory about to be used or freed

    def reader() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                with torch.inference_mode(inference):
                    copy_pieces(fd)
            finally:
                os.close(fd)
        except BaseException as error:  # handed to the caller's thread below
            with lock:
                errors.append(error)

    workers = [threading.Thread(target=reader, name=f"fast-load-{i}", daemon=True) for i in range(max(1, threads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if on_cuda and hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()  # the readers' pinned buffers back to the system, not kept by torch's cache
    if errors:
        error = errors[0]
        flat.clear()  # the traceback keeps this frame: the GPU memory must not stay held by it
        tensors.clear()
        errors.clear()
        raise error
    return dict(sorted(tensors.items())), metadata  # in safetensors' own order


@dataclass
class FastLoadSettings:
    threads: int = 0  # 0: off
    force: bool = False  # tests: take this path on any device, in any VRAM state
    loads: list[dict] = field(default_factory=list)  # per load: file, bytes, seconds, GB/s, weights taken as-is


SETTINGS = FastLoadSettings()
_TAKING = threading.local()


def eligible(path: str, model_options: dict, device: torch.device, vram_high: bool) -> str | None:
    """Why this load takes ComfyUI's own path (None: it may take the fast one)."""
    if SETTINGS.threads <= 0:
        return "off"
    if not path.lower().endswith((".safetensors", ".sft")):
        return "not a safetensors file"
    if "offload_device" in model_options or "load_device" in model_options:
        return "the loader sets its own devices"
    if SETTINGS.force:
        return None
    if device.type != "cuda" or not vram_high:
        return "not a CUDA device in the high-VRAM state"
    free, _total = torch.cuda.mem_get_info(device)
    needed = 2 * os.path.getsize(path) + (2 << 30)
    if free < needed:
        return f"{free / 2**30:.1f} GiB free on the GPU, {needed / 2**30:.1f} GiB needed (the file twice, 2 GiB)"
    return None


def as_the_models_weights(module: torch.nn.Module, state_dict: dict) -> int | None:
    """Makes every tensor of `state_dict` fit the weight of `module` it is loaded into, converting its dtype where
    the model's differs (what copying into that weight would do); the number converted. Keys the module does not
    have are left (loading ignores them). None, with nothing changed, when a tensor's shape is not its weight's:
    then it is loaded as ComfyUI loads it."""
    own = module.state_dict()
    targets = {}
    for key, tensor in state_dict.items():
        mine = own.get(key)
        if mine is None:
            continue
        if mine.shape != tensor.shape:
            log.info("fast load: %s %s is not the shape of the model's %s; copied as ComfyUI does", key,
                     tuple(tensor.shape), tuple(mine.shape))
            return None
        targets[key] = mine.dtype
    converted = 0
    for key, dtype in targets.items():
        if state_dict[key].dtype != dtype:
            state_dict[key] = state_dict[key].to(dtype)
            converted += 1
    return converted


def wrap_load_model_weights(original: Callable) -> Callable:
    """BaseModel.load_model_weights that, inside a fast load, has the diffusion model take the loaded GPU tensors as
    its weights, once ComfyUI has renamed them (process_unet_state_dict); where a tensor does not fit, the model
    moves to their device first and copies them, as ComfyUI does."""
    def load_model_weights(self, sd, unet_prefix="", assign=False):
        device = getattr(_TAKING, "device", None)
        if device is None or assign:
            return original(self, sd, unet_prefix, assign)
        module = self.diffusion_model
        module_load = module.load_state_dict

        def load_state_dict(state_dict, strict=True, assign=False):
            converted = as_the_models_weights(module, state_dict)
            if converted is None:
                self.to(device)
                return module_load(state_dict, strict=strict, assign=assign)
            _TAKING.assigned, _TAKING.converted = True, converted
            return module_load(state_dict, strict=strict, assign=True)

        module.load_state_dict = load_state_dict
        try:
            return original(self, sd, unet_prefix, assign)
        finally:
            del module.load_state_dict
    return load_model_weights


def wrap_load_diffusion_model(original: Callable, from_state_dict: Callable, target: Callable[[], torch.device],
                              vram_high: Callable[[], bool], offload_device: Callable[[], torch.device]) -> Callable:
    """comfy.sd.load_diffusion_model that reads an eligible file with read_to_device; every other load, and any
    failure of the fast one (reading, building the model), goes to `original`."""
    def load_diffusion_model(unet_path, model_options=None, disable_dynamic=False):
        model_options = {} if model_options is None else model_options
        name = os.path.basename(str(unet_path))
        device = target()
        why_not = eligible(str(unet_path), model_options, device, vram_high())
        if why_not is None:
            patcher, why_not = _load_fast(str(unet_path), model_options, disable_dynamic, device, from_state_dict,
                                          offload_device)
            if patcher is not None:
                patcher.cached_patcher_init = (original, (unet_path, model_options))
                return patcher
            log.warning("fast load of %s failed (%s); ComfyUI's loader reads it", name, why_not)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        elif why_not != "off":
            log.info("fast load not used for %s: %s", name, why_not)
        return original(unet_path, model_options=model_options, disable_dynamic=disable_dynamic)
    return load_diffusion_model


def _load_fast(path: str, model_options: dict, disable_dynamic: bool, device: torch.device,
               from_state_dict: Callable, offload_device: Callable[[], torch.device]) -> tuple[object, str | None]:
    """(the model's patcher, None), or (None, why not): whatever failed is dropped before ComfyUI's loader runs."""
    started = time.monotonic()
    try:
        sd, metadata = read_to_device(path, device, SETTINGS.threads)
    except (NotLoadable, OSError, RuntimeError) as error:
        return None, f"reading: {type(error).__name__}: {error}"
    read_s = time.monotonic() - started
    size = sum(t.nbytes for t in sd.values())
    options = {**model_options, "offload_device": torch.device("cpu")}  # no empty weights moved to the GPU first
    _TAKING.device, _TAKING.assigned, _TAKING.converted = device, False, 0
    try:
        patcher = from_state_dict(sd, model_options=options, metadata=metadata, disable_dynamic=disable_dynamic)
    except Exception as error:  # any failure here is retried by ComfyUI's own loader
        return None, f"building the model: {type(error).__name__}: {error}"
    finally:
        _TAKING.device = None
        del sd
    if patcher is None:
        return None, "the model type was not recognised"
    offload = offload_device()
    patcher.offload_device = offload
    patcher.model.device = offload
    patcher.model.to(device)  # what the file did not hold (buffers ComfyUI computes) joins the weights
    if device.type == "cuda" and (_TAKING.converted or not _TAKING.assigned):
        torch.cuda.empty_cache()  # what conversion or copying freed, for other processes on this GPU
    record = {"file": os.path.basename(path), "bytes": size, "read_s": round(read_s, 3),
              "total_s": round(time.monotonic() - started, 3), "gb_per_s": round(size / read_s / 1e9, 2),
              "weights_taken_as_read": _TAKING.assigned, "dtype_converted": _TAKING.converted,
              "threads": SETTINGS.threads}
    SETTINGS.loads.append(record)
    log.info("fast load: %s", record)
    return patcher, None
