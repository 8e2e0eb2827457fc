"""Streamed safetensors writing of random weights for the benchmark's model makers (make_wan_models.py,
make_i2v_flux_models.py): one tensor generated on the device, copied out and written at a time, so a 14B model
never sits whole in host RAM. Values: matrices ~ N(0, 0.02), norm weights / RMS gammas 1, biases 0."""

from __future__ import annotations

import json
import math
import os
import struct
import time
from collections.abc import Callable
from typing import Any

import torch

ST_DTYPE = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3",
            torch.uint8: "U8"}
Spec = tuple[str, tuple[int, ...], torch.dtype]


def meta_specs(module: torch.nn.Module, dtype: torch.dtype) -> list[Spec]:
    return [(k, tuple(v.shape), dtype) for k, v in module.state_dict().items()]


def meta_wan(model_type: str, dims: dict[str, int], dtype: torch.dtype) -> torch.nn.Module:
    """A Wan 2.1 diffusion model (t2v: 16 input channels, i2v: 36) built by ComfyUI's own class on the meta device;
    ComfyUI must be importable. `dims`: dim, ffn_dim, num_heads, num_layers."""
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    with torch.device("meta"):
        return WanModel(model_type=model_type, patch_size=(1, 2, 2), text_len=512,
                        in_dim=36 if model_type == "i2v" else 16, out_dim=16, freq_dim=256, text_dim=4096,
                        window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6, device="meta",
                        dtype=dtype, operations=comfy.ops.disable_weight_init, **dims)


class Writer:
    def __init__(self, device: str, seed: int = 1234) -> None:
        self.dev = torch.device(device if (device != "cuda" or torch.cuda.is_available()) else "cpu")
        self.gen = torch.Generator(device=self.dev).manual_seed(seed)
        self.info: dict[str, Any] = {"device": str(self.dev), "files": {}}

    def randn(self, shape: tuple[int, ...], std: float, dt: torch.dtype) -> torch.Tensor:
        if dt in (torch.float16, torch.bfloat16, torch.float32):
            return torch.empty(shape, device=self.dev, dtype=dt).normal_(0.0, std, generator=self.gen)
        return torch.empty(shape, device=self.dev, dtype=torch.float32).normal_(0.0, std, generator=self.gen).to(dt)

    def default_value(self, name: str, shape: tuple[int, ...], dt: torch.dtype, std: float = 0.02) -> torch.Tensor:
        if name.endswith("gamma"):
            return torch.ones(shape, device=self.dev, dtype=dt)
        if len(shape) <= 1:
            if name.endswith("bias"):
                return torch.zeros(shape, device=self.dev, dtype=dt)
            return torch.ones(shape, device=self.dev, dtype=dt)
        return self.randn(shape, std, dt)

    def write(self, path: str, specs: list[Spec], make: Callable[[str, tuple[int, ...], torch.dtype], torch.Tensor]
              | None = None, metadata: dict[str, str] | None = None) -> None:
        """specs: [(name, shape, dtype)]; make(name, shape, dtype) -> tensor (default_value when None)."""
        make = make or self.default_value
        os.makedirs(os.path.dirname(path), exist_ok=True)
        t0 = time.time()
        header, off = {}, 0
        for name, shape, dt in specs:
            n = math.prod(shape) * torch.empty((), dtype=dt).element_size()
            header[name] = {"dtype": ST_DTYPE[dt], "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        if metadata:
            header["__metadata__"] = metadata
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * ((8 - len(hb) % 8) % 8)
        params = 0
        with open(path + ".part", "wb", buffering=64 << 20) as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            for name, shape, dt in specs:
                t = make(name, shape, dt)
                assert tuple(t.shape) == tuple(shape) and t.dtype == dt, (name, t.shape, shape, t.dtype, dt)
                params += t.numel()
                b = t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
                f.write(memoryview(b))
                del t, b
        os.replace(path + ".part", path)
        sz = os.path.getsize(path)
        assert sz == 8 + len(hb) + off, (sz, off)
        dt_s = time.time() - t0
        print(f"saved {path}: {len(specs)} tensors, {params / 1e6:.1f} M values, {sz / 2**20:.0f} MiB, {dt_s:.1f}s",
              flush=True)
        self.info["files"][os.path.basename(path)] = {"tensors": len(specs), "values_M": round(params / 1e6, 1),
                                                      "MiB": round(sz / 2**20), "s": round(dt_s, 1)}
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()

    def t5_scaled_fp8(self, path: str, comfy_dir: str, config_name: str, spm: bytes | None = None) -> None:
        """A T5 encoder (comfy.text_encoders.t5.T5 with ComfyUI's config_name json) in ComfyUI's "scaled fp8" layout,
        the public *_fp8_e4m3fn_scaled files': every Linear weight float8_e4m3fn with a float32 `.scale_weight`, a
        `scaled_fp8` marker, embeddings and norms bf16; `spiece_model` (a SentencePiece model's bytes, which
        ComfyUI's UMT5 tokenizer reads its vocabulary from) when spm is given."""
        import comfy.ops
        from comfy.text_encoders.t5 import T5

        with open(os.path.join(comfy_dir, "comfy", "text_encoders", config_name)) as config_file:
            cfg = json.load(config_file)
        with torch.device("meta"):
            t5 = T5(cfg, dtype=torch.bfloat16, device="meta", operations=comfy.ops.manual_cast)
        base = meta_specs(t5, torch.bfloat16)
        linear = {n + ".weight" for n, mod in t5.named_modules() if isinstance(mod, torch.nn.Linear)}
        del t5
        specs: list[Spec] = [("scaled_fp8", (0,), torch.float8_e4m3fn)]
        for k, s, d in base:
            if k in linear:
                specs.append((k, s, torch.float8_e4m3fn))
                specs.append((k[:-len(".weight")] + ".scale_weight", (), torch.float32))
            else:
                specs.append((k, s, d))
        if spm is not None:
            specs.append(("spiece_model", (len(spm),), torch.uint8))
        # what comfy.sd.detect_te_model keys on for a T5-XXL / umt5-xxl (24 blocks, gated FFN of 10240)
        assert "encoder.block.23.layer.1.DenseReluDense.wi_1.weight" in linear
        scales: dict[str, torch.Tensor] = {}

        def make(n: str, s: tuple[int, ...], d: torch.dtype) -> torch.Tensor:
            if n == "spiece_model":
                return torch.frombuffer(bytearray(spm or b""), dtype=torch.uint8).to(self.dev)
            if n == "scaled_fp8":
                return torch.empty((0,), dtype=d, device=self.dev)
            if n.endswith(".scale_weight"):
                return scales.pop(n)
            if d == torch.float8_e4m3fn:
                w = torch.empty(s, device=self.dev, dtype=torch.float32).normal_(0.0, 0.02, generator=self.gen)
                scale = w.abs().amax() / 448.0
                scales[n[:-len(".weight")] + ".scale_weight"] = scale.to(torch.float32).reshape(())
                return (w / scale).to(torch.float8_e4m3fn)
            if n == "shared.weight":
                return self.randn(s, 1.0, d)
            if "relative_attention_bias" in n:
                return self.randn(s, 0.1, d)
            return self.default_value(n, s, d)

        self.write(path, specs, make)
