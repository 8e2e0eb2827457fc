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
    base = 8 + header_bytes
    entries = []
    for name, info in header.items():
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
        if dtype is None:
            raise NotLoadable(f"tensor {name!r}: dtype {info.get('dtype') if isinstance(info, dict) else info!r}")
        shape = tuple(int(n) for n in info["shape"])
        begin, end = (int(n) for n in info["data_offsets"])
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
    pieces = iter(plan_pieces(entries, chunk))
    lock = threading.Lock()
    errors: list[BaseException] = []
    on_cuda = device.type == "cuda"
    inference = torch.is_inference_mode_enabled()  # ComfyUI runs nodes in inference mode: the tensors are made so

    def next_piece() -> Piece | None:
        with lock:
            return None if errors else next(pieces, None)

    def copy_pieces(fd: int) -> None:
        stream = torch.cuda.Stream(device) if on_cuda else None
        buffers = [torch.empty(chunk, dtype=torch.uint8, pin_memory=on_cuda) for _ in range(2)]
        copied: list[torch.cuda.Event | None] = [None, None]
        turn = 0
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
        if stream is not None:
            stream.synchronize()

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
        raise errors[0]
    return tensors, metadata


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
    if SETTINGS.force:
        return None
    if device.type != "cuda" or not vram_high:
        return "not a CUDA device in the high-VRAM state"
    free, _total = torch.cuda.mem_get_info(device)
    needed = 2 * os.path.getsize(path) + (2 << 30)
    if free < needed:
        return f"{free / 2**30:.1f} GiB free on the GPU, {needed / 2**30:.1f} GiB needed (the file twice, 2 GiB)"
    return None


def as_the_models_weights(module: torch.nn.Module, sd: dict, prefix: str) -> int | None:
    """Makes every tensor of `sd` under `prefix` fit the weight of `module` it is loaded into, converting its dtype
    where the model's differs (what copying into that weight would do); the number converted. None (nothing
    changed) when a tensor has no weight of its shape in the module: then it is loaded as ComfyUI loads it."""
    own = module.state_dict()
    targets = {}
    for key, tensor in sd.items():
        if key.startswith(prefix):
            mine = own.get(key[len(prefix):])
            if mine is None or mine.shape != tensor.shape:
                log.info("fast load: %s %s fits no weight of the model (%s); copied as ComfyUI does", key,
                         tuple(tensor.shape), "none of that name" if mine is None else f"its is {tuple(mine.shape)}")
                return None
            targets[key] = mine.dtype
    converted = 0
    for key, dtype in targets.items():
        if sd[key].dtype != dtype:
            sd[key] = sd[key].to(dtype)
            converted += 1
    return converted


def wrap_load_model_weights(original: Callable) -> Callable:
    """BaseModel.load_model_weights that, inside a fast load, takes the loaded GPU tensors as the model's weights
    (or, where a tensor fits no weight, moves the model to their device first and copies, as ComfyUI does)."""
    def load_model_weights(self, sd, unet_prefix="", assign=False):
        device = getattr(_TAKING, "device", None)
        if device is not None and not assign:
            converted = as_the_models_weights(self.diffusion_model, sd, unet_prefix)
            if converted is None:
                self.to(device)
            else:
                assign = True
                _TAKING.assigned, _TAKING.converted = True, converted
        return original(self, sd, unet_prefix, assign)
    return load_model_weights


def wrap_load_diffusion_model(original: Callable, from_state_dict: Callable, target: Callable[[], torch.device],
                              vram_high: Callable[[], bool], offload_device: Callable[[], torch.device]) -> Callable:
    """comfy.sd.load_diffusion_model that reads an eligible file with read_to_device; every other load, and any
    failure to read, goes to `original`."""
    def load_diffusion_model(unet_path, model_options=None, disable_dynamic=False):
        model_options = {} if model_options is None else model_options
        device = target()
        why_not = eligible(str(unet_path), model_options, device, vram_high())
        if why_not is not None:
            if why_not != "off":
                log.info("fast load not used for %s: %s", os.path.basename(str(unet_path)), why_not)
            return original(unet_path, model_options=model_options, disable_dynamic=disable_dynamic)
        started = time.monotonic()
        try:
            sd, metadata = read_to_device(str(unet_path), device, SETTINGS.threads)
        except (NotLoadable, OSError, RuntimeError) as error:
            log.warning("fast load of %s failed (%s: %s); ComfyUI's loader reads it", os.path.basename(str(unet_path)),
                        type(error).__name__, error)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return original(unet_path, model_options=model_options, disable_dynamic=disable_dynamic)
        read_s = time.monotonic() - started
        size = sum(t.nbytes for t in sd.values())
        options = {**model_options, "offload_device": torch.device("cpu")}  # no empty weights moved to the GPU first
        _TAKING.device, _TAKING.assigned, _TAKING.converted = device, False, 0
        try:
            patcher = from_state_dict(sd, model_options=options, metadata=metadata, disable_dynamic=disable_dynamic)
        finally:
            assigned, _TAKING.device = _TAKING.assigned, None
        if patcher is None:
            raise RuntimeError(f"ERROR: Could not detect model type of: {unet_path}")
        offload = offload_device()
        patcher.offload_device = offload
        patcher.model.device = offload
        patcher.model.to(device)  # what the file did not hold (buffers ComfyUI computes) joins the weights
        patcher.cached_patcher_init = (original, (unet_path, model_options))
        record = {"file": os.path.basename(str(unet_path)), "bytes": size, "read_s": round(read_s, 3),
                  "total_s": round(time.monotonic() - started, 3), "gb_per_s": round(size / read_s / 1e9, 2),
                  "weights_taken_as_read": assigned, "dtype_converted": _TAKING.converted,
                  "threads": SETTINGS.threads}
        SETTINGS.loads.append(record)
        log.info("fast load: %s", record)
        return patcher
    return load_diffusion_model
