"""The benchmark's workflows (API format), with the model files bench/make_models.py writes."""

from __future__ import annotations

from typing import Any

SDXL = "sdxl"
SD15 = "sd15"


def sdxl(seed: int, resolution: int = 1024, steps: int = 20) -> dict[str, Any]:
    """UNETLoader + DualCLIPLoader + 2 × CLIPTextEncode + EmptyLatentImage + KSampler (euler, cfg 7) + VAEDecode +
    SaveImage."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "sdxl_unet.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader",
              "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors", "type": "sdxl"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "sd_vae.safetensors"}},
        **_sampling(seed, resolution, steps),
    }


def sd15(seed: int, resolution: int = 512, steps: int = 20) -> dict[str, Any]:
    """The SD1.5-size case: small jobs, where per-job overhead shows."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "sd15_unet.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l.safetensors", "type": "stable_diffusion"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "sd_vae.safetensors"}},
        **_sampling(seed, resolution, steps),
    }


def _sampling(seed: int, resolution: int, steps: int) -> dict[str, Any]:
    return {
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": f"a red fox in the snow, {seed}", "clip": ["2", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": f"blurry, low quality, {seed}", "clip": ["2", 0]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": resolution, "height": resolution, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
            "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "bench"}},
    }


WORKLOADS = {SDXL: sdxl, SD15: sd15}
