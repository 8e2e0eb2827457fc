"""Make random-weight model files of the real architectures for the Wan 2.1 image-to-video and Flux.1-dev workloads.

usage: python3 bench/video/make_i2v_flux_models.py COMFYUI_DIR MODELS_DIR [--sets wan14b_i2v,flux12b]
                                       [--device cuda|cpu] [--tiny] [--skip-existing]

Writes (safetensors, streamed tensor by tensor through model_writer.Writer):
  wan14b_i2v:
    diffusion_models/wan2.1_i2v_480p_14B_fp16_rand.safetensors   Wan 2.1 I2V 14B: dim 5120, 40 layers, in_dim 36
        (16 noise + 4 mask + 16 image-latent channels), img_emb (CLIP-vision 1280 → 5120) and k_img/v_img per block
    clip_vision/clip_vision_h_rand.safetensors                   ViT-H/14 (ComfyUI's clip_vision_config_h.json), fp16
    (the Wan VAE and umt5-xxl it also needs: make_wan_models.py --wan "")
  flux12b:
    diffusion_models/flux1-dev_rand.safetensors                  Flux.1-dev: hidden 3072, 19 double + 38 single
        blocks, guidance embedding, bf16
    text_encoders/t5xxl_fp8_e4m3fn_scaled_rand.safetensors        T5-XXL encoder (t5_config_xxl.json) in the scaled-fp8
        layout of the public t5xxl_fp8_e4m3fn_scaled file
    text_encoders/clip_l.safetensors                             HF-format CLIP-L (bench/make_models.py's)
    vae/ae_rand.safetensors                                       the Flux VAE (16 latent channels, no quant convs)
Each diffusion model's key set is checked with ComfyUI's detect_unet_config / model_config_from_unet before writing.
--tiny (CPU dry runs only): the diffusion models small (Wan dim 256 / Flux hidden 256, 1-2 blocks, still detected as
Wan 2.1 I2V / Flux dev), written as *_tiny; CLIP-vision H and T5-XXL stay full size: ComfyUI picks their
configuration from fixed json files (CLIP-vision by its layer count, T5 by `flux_clip`), so no smaller one loads.
--check-only: the detection checks of the full-size key sets alone (meta device, nothing written).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("comfy")
ap.add_argument("models")
ap.add_argument("--sets", default="wan14b_i2v,flux12b")
ap.add_argument("--device", default="cuda")
ap.add_argument("--tiny", action="store_true")
ap.add_argument("--skip-existing", action="store_true")
ap.add_argument("--check-only", action="store_true", help="run the detection checks of the full-size key sets, write "
                "nothing (no weights are made: meta device)")
A = ap.parse_args()
sys.path.insert(0, A.comfy)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ (make_models.py)

import torch  # noqa: E402
from model_writer import Writer, meta_specs, meta_wan  # noqa: E402

W = Writer(A.device)
SETS = [s for s in A.sets.split(",") if s]
TINY = "_tiny" if A.tiny else ""
import comfy.cli_args  # noqa: E402

if W.dev.type == "cpu":
    comfy.cli_args.args.cpu = True  # local CPU dry run only
import comfy.model_detection  # noqa: E402
import comfy.ops  # noqa: E402


def todo(*parts: str) -> str | None:
    path = os.path.join(A.models, *parts)
    if A.check_only:
        return None if parts[0] != "diffusion_models" else path
    if A.skip_existing and os.path.exists(path):
        print("exists", path, flush=True)
        return None
    return path


def detected(name: str, specs: list, expect: dict) -> None:
    """ComfyUI's own detection on the key set (meta tensors): it must name the architecture we mean to write."""
    fake = {k: torch.empty(s, device="meta") for k, s, _ in specs}
    det = comfy.model_detection.detect_unet_config(fake, "")
    config = comfy.model_detection.model_config_from_unet(fake, "")
    print(f"{name}: detect_unet_config -> {det}; model_config_from_unet -> {type(config).__name__}", flush=True)
    wrong = {k: (det.get(k), v) for k, v in expect.items() if det.get(k) != v}
    assert not wrong and config is not None, (name, wrong, config)
    W.info.setdefault("detected", {})[name] = {"unet_config": {k: str(v) for k, v in det.items()},
                                               "class": type(config).__name__}


t_all = time.time()
if "wan14b_i2v" in SETS:
    cfg = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2) if A.tiny else \
        dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
    name = f"wan2.1_i2v_480p_14B_fp16_rand{TINY}.safetensors"
    path = todo("diffusion_models", name)
    if path:
        specs = meta_specs(meta_wan("i2v", cfg, torch.float16), torch.float16)
        detected(name, specs, {"image_model": "wan2.1", "model_type": "i2v", "in_dim": 36, **{
            k: cfg[k] for k in ("dim", "num_layers", "ffn_dim")}})
        if not A.check_only:
            W.write(path, specs)

    path = todo("clip_vision", "clip_vision_h_rand.safetensors")
    if path:
        from comfy.clip_model import CLIPVisionModelProjection

        with open(os.path.join(A.comfy, "comfy", "clip_vision_config_h.json")) as config_file:
            vision_config = json.load(config_file)
        with torch.device("meta"):
            vision = CLIPVisionModelProjection(vision_config, torch.float16, "meta", comfy.ops.manual_cast)
        specs = meta_specs(vision, torch.float16)
        del vision
        keys = {k for k, _, _ in specs}
        # comfy.clip_vision.load_clipvision_from_sd picks clip_vision_config_h.json by these keys (ViT-H: 32 layers)
        assert "vision_model.encoder.layers.30.layer_norm1.weight" in keys, "not detected as CLIP-vision H"
        assert "vision_model.encoder.layers.47.layer_norm1.weight" not in keys
        W.write(path, specs)

if "flux12b" in SETS:
    from comfy.ldm.flux.model import Flux

    cfg = dict(hidden_size=256, num_heads=2, depth=1, depth_single_blocks=1) if A.tiny else \
        dict(hidden_size=3072, num_heads=24, depth=19, depth_single_blocks=38)
    name = f"flux1-dev_rand{TINY}.safetensors"
    path = todo("diffusion_models", name)
    if path:
        with torch.device("meta"):
            m = Flux(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                     mlp_ratio=4.0, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True,
                     guidance_embed=True, txt_ids_dims=[], dtype=torch.bfloat16, device="meta",
                     operations=comfy.ops.disable_weight_init, **cfg)
        specs = meta_specs(m, torch.bfloat16)
        del m
        detected(name, specs, {"image_model": "flux", "guidance_embed": True, "vec_in_dim": 768,
                               "context_in_dim": 4096, **cfg})
        if not A.check_only:
            W.write(path, specs)

    path = todo("text_encoders", "t5xxl_fp8_e4m3fn_scaled_rand.safetensors")
    if path:
        W.t5_scaled_fp8(path, A.comfy, "t5_config_xxl.json")

    path = todo("text_encoders", "clip_l.safetensors")
    if path:
        from make_models import save, text_encoder_state_dict

        save(text_encoder_state_dict("clip_l", W.dev, W.gen), Path(path), W.info)

    path = todo("vae", "ae_rand.safetensors")
    if path:
        from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder

        ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
        with torch.device("meta"):
            ae = torch.nn.ModuleDict({"encoder": Encoder(**ddconfig), "decoder": Decoder(**ddconfig)})
        specs = meta_specs(ae, torch.bfloat16)
        del ae
        shapes = {k: s for k, s, _ in specs}
        # comfy.sd.VAE: decoder.conv_in with 16 input channels and no post_quant_conv -> the Flux AutoencodingEngine
        assert shapes["decoder.conv_in.weight"][1] == 16 and "post_quant_conv.weight" not in shapes
        W.write(path, specs)

W.info["total_s"] = round(time.time() - t_all, 1)
if A.check_only:
    sys.exit(0)
with open(os.path.join(A.models, f"models_{'_'.join(SETS)}.json"), "w") as f:
    json.dump(W.info, f, indent=1)
print("MAKE_MODELS_DONE", json.dumps(W.info), flush=True)
