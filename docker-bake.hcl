# Image variants: `docker buildx bake` builds the base image; `docker buildx bake sdxl` one with SDXL baked in.
# Gated downloads: `docker buildx bake sdxl --secret id=hf_token,env=HF_TOKEN` (never stored in a layer).
variable "REGISTRY" { default = "ghcr.io/comfy-worker" }
variable "TAG" { default = "dev" }
variable "COMFYUI_VERSION" { default = "v0.29.0" }
# cu128 or cu130 (comfy-kitchen's CUDA kernels: ComfyUI enables them on cu130 only; docs/deployment.md)
variable "TORCH_INDEX" { default = "https://download.pytorch.org/whl/cu128" }

group "default" { targets = ["base"] }

target "common" {
  context    = "."
  dockerfile = "Dockerfile"
  target     = "final"
  platforms  = ["linux/amd64"]
  args       = { COMFYUI_VERSION = COMFYUI_VERSION, TORCH_INDEX = TORCH_INDEX }
}

target "base" {
  inherits   = ["common"]
  tags       = ["${REGISTRY}/worker:${TAG}"]
  cache-from = ["type=registry,ref=${REGISTRY}/worker:buildcache"]
  cache-to   = ["type=registry,ref=${REGISTRY}/worker:buildcache,mode=max"]
}

target "sdxl" {
  inherits = ["common"]
  tags     = ["${REGISTRY}/worker:${TAG}-sdxl"]
  args = {
    COMFYUI_VERSION = COMFYUI_VERSION
    TORCH_INDEX     = TORCH_INDEX
    MODELS = join(" ", [
      "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors|checkpoints",
      "https://huggingface.co/madebyollin/sdxl-vae-fp16-fix/resolve/main/sdxl_vae.safetensors|vae",
    ])
  }
}
