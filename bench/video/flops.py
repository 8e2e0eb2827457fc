"""FLOPs of one sampling step of the benchmark's models, counted with torch's FlopCounterMode on the meta device
(no GPU, no weights: shapes only), with ComfyUI's own model classes.

    python bench/video/flops.py COMFYUI_DIR [--out FILE]

A step is one forward of the diffusion model on the cond and uncond batch (CFG, batch 2), as ComfyUI's KSampler
runs it. Wan 2.1 T2V at 832×480: 33 frames → 9 latent frames, 81 → 21; patch 1×2×2; umt5 context of 512 tokens.
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


def wan_step_flops(size: str, width: int, height: int, frames: int, batch: int = 2) -> dict[str, float]:
    import comfy.ops
    import torch
    from comfy.ldm.wan.model import WanModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, out_dim=16, freq_dim=256,
                         text_dim=4096, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
                         device="meta", dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init, **WAN[size])
        latent_frames = (frames - 1) // 4 + 1
        x = torch.empty(batch, 16, latent_frames, height // 8, width // 8, dtype=torch.bfloat16)
        t = torch.empty(batch, dtype=torch.bfloat16)
        context = torch.empty(batch, 512, 4096, dtype=torch.bfloat16)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x, t, context)
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    # On the meta device SDPA runs its math form: attention is the batched matmuls, linear layers are (add)mm.
    attention = sum(n for op, n in by_op.items() if "bmm" in op or "attention" in op)
    linear = sum(n for op, n in by_op.items() if op.endswith(("addmm", ".mm")))
    tokens = latent_frames * (height // 16) * (width // 16)
    return {"tflop_per_step": counter.get_total_flops() / 1e12, "attention_tflop": attention / 1e12,
            "linear_tflop": linear / 1e12,
            "tokens": tokens, "by_op_tflop": {op: round(n / 1e12, 3) for op, n in by_op.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("comfy")
    parser.add_argument("--out")
    args = parser.parse_args()
    sys.path.insert(0, args.comfy)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.use_pytorch_cross_attention = True  # SDPA, as on the GPU (CPU would pick sub-quadratic)
    result = {}
    for size in WAN:
        for shape, (width, height, frames) in SHAPES.items():
            result[f"{size}_{shape}"] = wan_step_flops(size, width, height, frames)
            print(size, shape, json.dumps({k: v for k, v in result[f"{size}_{shape}"].items() if k != "by_op_tflop"}),
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
