"""Make random-weight Wan 2.1 model files of the real architectures for a ComfyUI benchmark.

usage: python3 bench/video/make_wan_models.py COMFYUI_DIR MODELS_DIR --spm SPIECE.model
                                  [--wan 1.3b,14b] [--device cuda|cpu] [--tiny] [--skip-existing]

Writes (safetensors, streamed tensor by tensor, so a 14B model never sits whole in host RAM):
  MODELS_DIR/diffusion_models/wan2.1_t2v_1.3B_fp16_rand.safetensors   dim 1536, 30 layers, ffn 8960, 12 heads
  MODELS_DIR/diffusion_models/wan2.1_t2v_14B_fp16_rand.safetensors    dim 5120, 40 layers, ffn 13824, 40 heads
  MODELS_DIR/vae/wan_2.1_vae_rand.safetensors                         Wan 2.1 VAE (dim 96, z 16), bf16
  MODELS_DIR/text_encoders/umt5_xxl_fp8_e4m3fn_scaled_rand.safetensors
        umt5-xxl encoder (24 blocks, d_model 4096, d_ff 10240, 64 heads, vocab 256384) in ComfyUI's
        "scaled fp8" layout (the public umt5_xxl_fp8_e4m3fn_scaled file's): every Linear weight float8_e4m3fn with
        a float32 `.scale_weight`, a `scaled_fp8` marker, embeddings and norms bf16, and `spiece_model` (the bytes
        of a SentencePiece model: ComfyUI's UMT5 tokenizer reads its vocabulary from that tensor).
Key names and shapes are read from ComfyUI's own classes (comfy.ldm.wan.model.WanModel, comfy.ldm.wan.vae.WanVAE,
comfy.text_encoders.t5.T5 with umt5_config_xxl.json), built on the meta device; the values are generated directly
on the GPU: matrices ~ N(0, 0.02), norm weights / RMS gammas 1, biases 0.
--tiny (CPU dry runs only): a Wan of dim 256, 2 layers (still detected as Wan 2.1 T2V).
"""
import argparse
import json
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("comfy")
ap.add_argument("models")
ap.add_argument("--spm", required=True, help="a SentencePiece .model file (pad 0, eos 1, unk 2)")
ap.add_argument("--wan", default="1.3b")
ap.add_argument("--device", default="cuda")
ap.add_argument("--tiny", action="store_true")
ap.add_argument("--skip-existing", action="store_true")
ap.add_argument("--no-te", action="store_true")
A = ap.parse_args()
sys.path.insert(0, A.comfy)

import torch  # noqa: E402
from model_writer import Writer, meta_specs, meta_wan  # noqa: E402

W = Writer(A.device)
dev = W.dev
INFO = W.info


def done(path):
    return A.skip_existing and os.path.exists(path)


t_all = time.time()
import comfy.cli_args  # noqa: E402  (parse_args([]) since comfy.options.args_parsing is False)

if dev.type == "cpu":
    comfy.cli_args.args.cpu = True  # local CPU dry run only
import comfy.model_detection  # noqa: E402
import comfy.ops  # noqa: E402

# ---------------- Wan 2.1 T2V diffusion models ----------------

WAN = {
    "1.3b": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "14b": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}
for size in [s for s in A.wan.split(",") if s]:
    cfg = dict(WAN[size])
    if A.tiny:
        cfg = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2)
    name = f"wan2.1_t2v_{'1.3B' if size == '1.3b' else '14B'}_fp16_rand{'_tiny' if A.tiny else ''}.safetensors"
    path = os.path.join(A.models, "diffusion_models", name)
    if done(path):
        print("exists", path)
        continue
    specs = meta_specs(meta_wan("t2v", cfg, torch.float16), torch.float16)
    # check ComfyUI recognises the key set as Wan 2.1 T2V with these dimensions before writing anything
    fake = {k: torch.empty(s, device="meta") for k, s, _ in specs}
    det = comfy.model_detection.detect_unet_config(fake, "")
    print(f"{size}: detect_unet_config -> {det}", flush=True)
    assert det["image_model"] == "wan2.1" and det["model_type"] == "t2v" and det["dim"] == cfg["dim"] \
        and det["num_layers"] == cfg["num_layers"] and det["ffn_dim"] == cfg["ffn_dim"], det
    mc = comfy.model_detection.model_config_from_unet(fake, "")
    print(f"{size}: model_config_from_unet -> {type(mc).__name__}", flush=True)
    INFO.setdefault("detected", {})[name] = {"unet_config": {k: str(v) for k, v in det.items()},
                                             "class": type(mc).__name__}
    del fake
    W.write(path, specs)

# ---------------- Wan 2.1 VAE ----------------
from comfy.ldm.wan.vae import WanVAE  # noqa: E402

path = os.path.join(A.models, "vae", "wan_2.1_vae_rand.safetensors")
if not done(path):
    with torch.device("meta"):
        v = WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                   temperal_downsample=[False, True, True], image_channels=3, conv_out_channels=3, dropout=0.0)
    specs = meta_specs(v, torch.bfloat16)
    del v
    keys = {k for k, _, _ in specs}
    assert "decoder.middle.0.residual.0.gamma" in keys
    assert "decoder.upsamples.0.upsamples.0.residual.2.weight" not in keys
    W.write(path, specs)

# ---------------- umt5-xxl text encoder, scaled fp8 ----------------
path = os.path.join(A.models, "text_encoders", "umt5_xxl_fp8_e4m3fn_scaled_rand.safetensors")
if not A.no_te and not done(path):
    with open(A.spm, "rb") as spm_file:
        W.t5_scaled_fp8(path, A.comfy, "umt5_config_xxl.json", spm_file.read())

INFO["total_s"] = round(time.time() - t_all, 1)
with open(os.path.join(A.models, "models.json"), "w") as f:
    json.dump(INFO, f, indent=1)
print("MAKE_MODELS_DONE", json.dumps(INFO), flush=True)
