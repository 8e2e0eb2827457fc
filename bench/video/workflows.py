"""The video benchmark's workflows (API format) and the model files bench/video/make_wan_models.py writes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads import sdxl

WAN_UNET = {"wan1.3b": "wan2.1_t2v_1.3B_fp16_rand.safetensors", "wan14b": "wan2.1_t2v_14B_fp16_rand.safetensors"}
WAN_TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled_rand.safetensors"
WAN_VAE = "wan_2.1_vae_rand.safetensors"


def wan_t2v(model: str, seed: int, frames: int, steps: int, weight_dtype: str = "default",
            width: int = 832, height: int = 480) -> dict[str, Any]:
    """Wan 2.1 text-to-video as ComfyUI's template builds it: UNETLoader → ModelSamplingSD3 (shift 8) → KSampler
    (uni_pc, cfg 6) with umt5 through CLIPLoader (type wan); EmptyHunyuanLatentVideo; VAEDecode → CreateVideo
    (16 fps) → SaveVideo (mp4, h264)."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": WAN_UNET[model], "weight_dtype": weight_dtype}},
        "2": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        "3": {"class_type": "CLIPLoader", "inputs": {"clip_name": WAN_TEXT_ENCODER, "type": "wan",
                                                     "device": "default"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 0], "text":
              f"A red fox trots through fresh snow in a birch forest at golden hour, cinematic, seed {seed}"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 0], "text":
              f"blurry, low quality, static, overexposed, worst quality, jpeg artifacts {seed}"}},
        "6": {"class_type": "EmptyHunyuanLatentVideo",
              "inputs": {"width": width, "height": height, "length": frames, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": "uni_pc",
            "scheduler": "simple", "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
            "denoise": 1.0}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": WAN_VAE}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
        "10": {"class_type": "CreateVideo", "inputs": {"images": ["9", 0], "fps": 16.0}},
        "11": {"class_type": "SaveVideo", "inputs": {"video": ["10", 0], "filename_prefix": "wan_bench",
                                                     "format": "mp4", "codec": "h264"}},
    }


def workflow(workload: str, seed: int, frames: int, steps: int, weight_dtype: str = "default") -> dict[str, Any]:
    if workload == "sdxl":
        return sdxl(seed, steps=steps)
    return wan_t2v(workload, seed, frames, steps, weight_dtype)
