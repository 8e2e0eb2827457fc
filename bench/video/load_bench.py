"""A diffusion model file to the GPU: the tuning node's fast load against ComfyUI's way, side by side, one process.

usage: python3 bench/video/load_bench.py FILE.safetensors [--threads 8] [--cold] [--out RESULT.json]

`comfyui`: what ComfyUI v0.29 does with `--highvram` (dynamic VRAM off): safetensors' safe_open, get_tensor of each
key from the memory map, copied into a GPU tensor one at a time. `fast`: fast_load.read_to_device (pread into pinned
buffers by several readers, each copying to the GPU on its own stream). Each is timed to a synchronised GPU; the
page cache is warm unless --cold (then each run starts with the file evicted by posix_fadvise). Every tensor of the
two results is compared byte for byte.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

NODE = Path(__file__).resolve().parents[2] / "src" / "comfyui_nodes" / "comfy_worker_tuning" / "fast_load.py"


def load_fast_load():
    spec = importlib.util.spec_from_file_location("fast_load", NODE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def comfyui_way(path: str, device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    with safe_open(path, framework="pt", device="cpu") as file:
        for key in file.keys():  # noqa: SIM118 - safe_open is not iterable
            tensor = file.get_tensor(key)
            out[key] = torch.empty_like(tensor, device=device)
            out[key].copy_(tensor)
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(label: str, load, path: str, cold: bool) -> tuple[dict[str, torch.Tensor], dict]:
    if cold:
        evict(path)
    sync()
    started = time.monotonic()
    tensors = load()
    sync()
    seconds = time.monotonic() - started
    size = sum(t.nbytes for t in tensors.values())
    record = {"way": label, "cold": cold, "seconds": round(seconds, 2), "gb": round(size / 1e9, 2),
              "gb_per_s": round(size / seconds / 1e9, 2)}
    print("[load_bench]", json.dumps(record), flush=True)
    return tensors, record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script's path, no claim")
    parser.add_argument("--out")
    args = parser.parse_args()
    fast_load = load_fast_load()
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    results: dict = {"file": os.path.basename(args.file), "threads": args.threads, "gpu": gpu,
                     "runs": []}
    if not args.cold:
        with open(args.file, "rb") as file:  # warm the page cache once, outside the timings
            while file.read(64 << 20):
                pass
    fast, record = timed("fast", lambda: fast_load.read_to_device(args.file, device, args.threads)[0], args.file,
                         args.cold)
    results["runs"].append(record)
    fast = {key: tensor.cpu() for key, tensor in fast.items()}  # the GPU holds one copy at a time
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reference, record = timed("comfyui", lambda: comfyui_way(args.file, device), args.file, args.cold)
    results["runs"].append(record)
    different = [key for key, tensor in reference.items()
                 if not torch.equal(tensor.cpu().view(-1).view(torch.uint8), fast[key].view(-1).view(torch.uint8))]
    results["identical"] = not different and reference.keys() == fast.keys()
    results["different"] = different[:10]
    ways = {r["way"]: r["seconds"] for r in results["runs"]}
    results["comfyui_over_fast"] = round(ways["comfyui"] / ways["fast"], 2)
    print("[load_bench]", json.dumps({k: v for k, v in results.items() if k != "runs"}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
