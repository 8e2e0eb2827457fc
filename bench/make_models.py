"""Random-weight model files of real sizes for the benchmark, built with ComfyUI's own classes and transformers
configs (random weights compute exactly like trained ones), plus the FLOP count of one sampling step.

    python bench/make_models.py COMFYUI_DIR MODELS_DIR [--device cuda|cpu] [--only sd15]

Writes fp16 safetensors under MODELS_DIR:
  diffusion_models/sdxl_unet.safetensors   SDXL UNet (UNETLoader)
  diffusion_models/sd15_unet.safetensors   SD1.5 UNet
  text_encoders/clip_l.safetensors, clip_g.safetensors   HF-format CLIP-L / CLIP-G (DualCLIPLoader sdxl, CLIPLoader)
  vae/sd_vae.safetensors                   SD/SDXL VAE
and MODELS_DIR/models.json: sizes, and FLOPs per step (CFG batch of 2) counted by torch's FlopCounterMode on
ComfyUI's UNet at the benchmark shapes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
       "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
# (name, resolution, context length/dim, adm) for the FLOP count: the benchmark's shapes
FLOP_SHAPES = {"sdxl_unet": (1024, 2048, 2816), "sd15_unet": (512, 768, None)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("comfyui_dir", type=Path)
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", choices=("sd15", "all"), default="all")
    args = parser.parse_args()
    sys.path.insert(0, str(args.comfyui_dir))

    import torch

    device = torch.device(args.device if args.device != "cuda" or torch.cuda.is_available() else "cpu")
    import comfy.cli_args

    if device.type == "cpu":
        comfy.cli_args.args.cpu = True
    generator = torch.Generator(device=device).manual_seed(1234)
    report: dict = {"device": str(device), "files": {}, "flops_per_step": {}}
    started = time.monotonic()

    unets = {"sd15_unet": SD15_UNET} if args.only == "sd15" else {"sdxl_unet": SDXL_UNET, "sd15_unet": SD15_UNET}
    for name, config in unets.items():
        unet = build_unet(config, device, generator)
        report["flops_per_step"][name] = count_step_flops(unet, name, device)
        save(unet.state_dict(), args.models_dir / "diffusion_models" / f"{name}.safetensors", report)
        del unet
    vae = build_vae(device, generator)
    save(vae.state_dict(), args.models_dir / "vae" / "sd_vae.safetensors", report)
    del vae
    encoders = ("clip_l",) if args.only == "sd15" else ("clip_l", "clip_g")
    for name in encoders:
        path = args.models_dir / "text_encoders" / f"{name}.safetensors"
        save(text_encoder_state_dict(name, device, generator), path, report)
    report["seconds"] = round(time.monotonic() - started, 1)
    (args.models_dir / "models.json").write_text(json.dumps(report, indent=1))
    print("MODELS", json.dumps(report), flush=True)


def randomize(module, generator) -> None:
    import torch

    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.ndim <= 1:
                parameter.fill_(1.0) if name.endswith("weight") else parameter.zero_()
            else:
                parameter.normal_(0.0, 0.02, generator=generator)


def build_unet(config: dict, device, generator):
    import comfy.ops
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**config, dtype=torch.float16, device=device, operations=comfy.ops.disable_weight_init)
    randomize(unet, generator)
    return unet.to(torch.float16)


def count_step_flops(unet, name: str, device) -> float:
    """FLOPs of one denoising step with CFG (batch 2) at the benchmark resolution."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    resolution, context_dim, adm = FLOP_SHAPES[name]
    side = resolution // 8
    kwargs = {}
    if adm:
        kwargs["y"] = torch.zeros(2, adm, device=device, dtype=torch.float16)
    x = torch.zeros(2, 4, side, side, device=device, dtype=torch.float16)
    timesteps = torch.full((2,), 500.0, device=device)
    context = torch.zeros(2, 77, context_dim, device=device, dtype=torch.float16)
    if device.type == "cpu":
        return 0.0  # too slow to run here; the GPU run counts it
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(x, timesteps=timesteps, context=context, **kwargs)
    return float(counter.get_total_flops())


def build_vae(device, generator):
    from comfy.ldm.models.autoencoder import AutoencoderKL

    vae = AutoencoderKL(ddconfig=VAE, embed_dim=4).to(device)
    randomize(vae, generator)
    return vae


def text_encoder_state_dict(name: str, device, generator) -> dict:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    common = {"vocab_size": 49408, "max_position_embeddings": 77, "layer_norm_eps": 1e-5, "bos_token_id": 0,
              "eos_token_id": 49407, "pad_token_id": 1}
    if name == "clip_l":
        config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                hidden_act="quick_gelu", projection_dim=768, **common)
        model_class = CLIPTextModel
    else:
        config = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                num_attention_heads=20, hidden_act="gelu", projection_dim=1280, **common)
        model_class = CLIPTextModelWithProjection
    with torch.device(device):
        model = model_class(config)
    randomize(model, generator)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        # transformers 5 drops the "text_model." prefix; ComfyUI detects CLIP files by the HF names and would
        # otherwise ignore the weights (black images)
        if not key.startswith(("text_model.", "text_projection")):
            key = "text_model." + key
        state[key] = value
    if "text_projection.weight" not in state:
        state["text_projection.weight"] = torch.empty(config.projection_dim, config.hidden_size, device=device).normal_(
            0.0, 0.02, generator=generator)
    return state


def save(state: dict, path: Path, report: dict) -> None:
    import safetensors.torch
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu", torch.float16).contiguous() for key, value in state.items()}
    safetensors.torch.save_file(tensors, str(path))
    report["files"][path.name] = path.stat().st_size
    print(f"saved {path.name}: {path.stat().st_size / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
