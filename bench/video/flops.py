"""FLOPs of one sampling step of the benchmark's models, counted with torch's FlopCounterMode on the meta device
(no GPU, no weights: shapes only), with ComfyUI's own model classes.

    python bench/video/flops.py COMFYUI_DIR [--out FILE]

A step is one forward of the diffusion model on the batch ComfyUI's KSampler runs: cond and uncond (CFG, batch 2)
for Wan (cfg 6); batch 1 for Flux.1-dev (cfg 1: the uncond is skipped, guidance goes in as an embedding).
Wan 2.1 T2V at 832×480: 33 frames → 9 latent frames, 81 → 21; patch 1×2×2; umt5 context of 512 tokens.
Wan 2.1 I2V 14B at 832×480×81: 36 input channels (noise 16 + mask 4 + start-image latent 16), the CLIP-vision H
penultimate states (257 × 1280) projected and put before the text context, a second (image) key/value per
cross-attention. Flux.1-dev at 1024²: latent 16×128×128, patch 2 → 4096 image tokens, T5 context of 256 tokens
(ComfyUI's Flux tokenizer pads a short prompt to 256), CLIP-L pooled vector 768.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

WAN = {
    "wan1.3b": {"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30},
    "wan14b": {"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40},
}
SHAPES = {"832x480x33": (832, 480, 33), "832x480x81": (832, 480, 81)}
FLUX_DEV = {"hidden_size": 3072, "num_heads": 24, "depth": 19, "depth_single_blocks": 38}


def wan_step_flops(size: str, width: int, height: int, frames: int, batch: int = 2,
                   model_type: str = "t2v") -> dict[str, float]:
    import torch
    from model_writer import meta_wan

    in_dim = 36 if model_type == "i2v" else 16
    model = meta_wan(model_type, WAN[size], torch.bfloat16)
    with torch.device("meta"):
        latent_frames = (frames - 1) // 4 + 1
        x = torch.empty(batch, in_dim, latent_frames, height // 8, width // 8, dtype=torch.bfloat16)
        t = torch.empty(batch, dtype=torch.bfloat16)
        context = torch.empty(batch, 512, 4096, dtype=torch.bfloat16)
        kwargs = {"clip_fea": torch.empty(batch, 257, 1280, dtype=torch.bfloat16)} if model_type == "i2v" else {}
        result = count(model, x, t, context, **kwargs)
    result["tokens"] = latent_frames * (height // 16) * (width // 16)
    return result


def flux_step_flops(width: int, height: int, batch: int = 1, context_tokens: int = 256) -> dict[str, float]:
    import comfy.ops
    import torch
    from comfy.ldm.flux.model import Flux

    with torch.device("meta"):
        model = Flux(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                     mlp_ratio=4.0, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True,
                     guidance_embed=True, txt_ids_dims=[], dtype=torch.bfloat16, device="meta",
                     operations=comfy.ops.disable_weight_init, **FLUX_DEV)
        x = torch.empty(batch, 16, height // 8, width // 8, dtype=torch.bfloat16)
        t = torch.empty(batch, dtype=torch.bfloat16)
        context = torch.empty(batch, context_tokens, 4096, dtype=torch.bfloat16)
        result = count(model, x, t, context, y=torch.empty(batch, 768, dtype=torch.bfloat16),
                       guidance=torch.empty(batch, dtype=torch.bfloat16))
    result["tokens"] = (height // 16) * (width // 16) + context_tokens
    return result


def count(model, *args, **kwargs) -> dict[str, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    # On the meta device SDPA runs its math form: attention is the batched matmuls, linear layers are (add)mm.
    attention = sum(n for op, n in by_op.items() if "bmm" in op or "attention" in op)
    linear = sum(n for op, n in by_op.items() if op.endswith(("addmm", ".mm")))
    return {"tflop_per_step": counter.get_total_flops() / 1e12, "attention_tflop": attention / 1e12,
            "linear_tflop": linear / 1e12, "by_op_tflop": {op: round(n / 1e12, 3) for op, n in by_op.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("comfy")
    parser.add_argument("--out")
    parser.add_argument("--only", choices=("t2v", "i2v_flux"), help="the Wan T2V sizes, or I2V 14B + Flux.1-dev")
    args = parser.parse_args()
    sys.path.insert(0, args.comfy)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.use_pytorch_cross_attention = True  # SDPA, as on the GPU (CPU would pick sub-quadratic)
    cases = {}
    if args.only != "i2v_flux":
        for size in WAN:
            for shape, (width, height, frames) in SHAPES.items():
                cases[f"{size}_{shape}"] = (wan_step_flops, (size, width, height, frames))
    if args.only != "t2v":
        cases["wan14b_i2v_832x480x81"] = (wan_step_flops, ("wan14b", 832, 480, 81, 2, "i2v"))
        cases["flux12b_1024x1024"] = (flux_step_flops, (1024, 1024))
    result = {}
    for name, (function, case_args) in cases.items():
        result[name] = function(*case_args)
        print(name, json.dumps({k: v for k, v in result[name].items() if k != "by_op_tflop"}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
