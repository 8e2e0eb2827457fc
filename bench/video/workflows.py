"""The video benchmark's workflows (API format) and the model files bench/video/make_wan_models.py and
make_i2v_flux_models.py write."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads import sdxl

WAN_UNET = {"wan1.3b": "wan2.1_t2v_1.3B_fp16_rand.safetensors", "wan14b": "wan2.1_t2v_14B_fp16_rand.safetensors"}
WAN_TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled_rand.safetensors"
WAN_VAE = "wan_2.1_vae_rand.safetensors"
WAN_I2V_UNET = "wan2.1_i2v_480p_14B_fp16_rand.safetensors"
CLIP_VISION_H = "clip_vision_h_rand.safetensors"
FLUX_UNET = "flux1-dev_rand.safetensors"
FLUX_T5 = "t5xxl_fp8_e4m3fn_scaled_rand.safetensors"
FLUX_CLIP_L = "clip_l.safetensors"
FLUX_VAE = "ae_rand.safetensors"
INPUT_IMAGE = "bench_start_image.png"  # the I2V start image: sent as the job's `images` input / uploaded
WORKLOADS = ("wan1.3b", "wan14b", "wan14b_i2v", "flux12b", "sdxl")


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


def wan_i2v(seed: int, frames: int, steps: int, weight_dtype: str = "default", width: int = 832,
            height: int = 480) -> dict[str, Any]:
    """Wan 2.1 image-to-video as ComfyUI's template builds it: the start image (LoadImage) through CLIPVisionEncode
    (clip_vision_h) and WanImageToVideo, then the text-to-video graph's sampler (shift 8, uni_pc, cfg 6), VAEDecode,
    CreateVideo (16 fps), SaveVideo."""
    graph = wan_t2v("wan14b", seed, frames, steps, weight_dtype, width, height)
    graph["1"]["inputs"]["unet_name"] = WAN_I2V_UNET
    del graph["6"]  # the latent comes from WanImageToVideo
    graph.update({
        "12": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGE}},
        "13": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP_VISION_H}},
        "14": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["13", 0], "image": ["12", 0],
                                                            "crop": "none"}},
        "15": {"class_type": "WanImageToVideo", "inputs": {
            "positive": ["4", 0], "negative": ["5", 0], "vae": ["8", 0], "width": width, "height": height,
            "length": frames, "batch_size": 1, "clip_vision_output": ["14", 0], "start_image": ["12", 0]}},
    })
    graph["7"]["inputs"].update(positive=["15", 0], negative=["15", 1], latent_image=["15", 2])
    graph["11"]["inputs"]["filename_prefix"] = "wan_i2v_bench"
    return graph


def flux_dev(seed: int, steps: int, weight_dtype: str = "default", width: int = 1024,
             height: int = 1024) -> dict[str, Any]:
    """Flux.1-dev text-to-image as ComfyUI's example builds it: UNETLoader, DualCLIPLoader (type flux: clip_l +
    t5xxl), FluxGuidance 3.5, EmptySD3LatentImage, KSampler euler/simple at cfg 1 (one model call a step: the
    negative is never evaluated), VAEDecode with the Flux VAE, SaveImage."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": FLUX_UNET, "weight_dtype": weight_dtype}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": FLUX_CLIP_L, "clip_name2": FLUX_T5,
                                                         "type": "flux", "device": "default"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text":
              f"A lighthouse on a basalt cliff at dusk, waves breaking, volumetric light, 35 mm photo, seed {seed}"}},
        "4": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["3", 0], "guidance": 3.5}},
        "5": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
            "denoise": 1.0}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": FLUX_VAE}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "flux_bench"}},
    }


def workflow(workload: str, seed: int, frames: int, steps: int, weight_dtype: str = "default",
             size: tuple[int, int] | None = None) -> dict[str, Any]:
    """size: (width, height), the workload's own (832×480 video, 1024² Flux) when None."""
    if workload == "sdxl":
        return sdxl(seed, steps=steps)
    if workload == "flux12b":
        return flux_dev(seed, steps, weight_dtype, *(size or (1024, 1024)))
    if workload == "wan14b_i2v":
        return wan_i2v(seed, frames, steps, weight_dtype, *(size or (832, 480)))
    return wan_t2v(workload, seed, frames, steps, weight_dtype, *(size or (832, 480)))


def start_image_png(width: int = 832, height: int = 480) -> bytes:
    """The I2V start image: a smooth colour gradient (PNG) of the video's size."""
    import io

    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
