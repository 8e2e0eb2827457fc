"""Model files a job names by URL: the `models` input field, and URLs written straight into loader inputs of the
workflow, which are rewritten to the cached file's name. Parsing only; cache.py fetches and keeps them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from comfy_worker.errors import InvalidInput
from comfy_worker.file_names import MODEL_EXTENSIONS, check_model_name
from comfy_worker.redaction import redact_url

SCHEMES = ("http", "https", "s3", "hf")
MODEL_FOLDERS = (
    "checkpoints", "loras", "vae", "diffusion_models", "text_encoders", "clip_vision", "controlnet",
    "upscale_models", "embeddings", "style_models", "gligen", "hypernetworks", "photomaker", "vae_approx",
    "model_patches", "audio_encoders", "latent_upscale_models", "unet", "clip",
)
# loader input → the folder its file lives in; class-specific entries first
INPUT_FOLDERS = {
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    "ckpt_name": "checkpoints", "lora_name": "loras", "unet_name": "diffusion_models", "vae_name": "vae",
    "clip_name": "text_encoders", "clip_name1": "text_encoders", "clip_name2": "text_encoders",
    "clip_name3": "text_encoders", "clip_name4": "text_encoders", "control_net_name": "controlnet",
    "style_model_name": "style_models", "gligen_name": "gligen", "hypernetwork_name": "hypernetworks",
    "photomaker_model_name": "photomaker",
}
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class ModelRef:
    """One model file a job needs: where it comes from, and where ComfyUI must find it."""

    url: str
    folder: str
    name: str
    sha256: str | None = None
    headers: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> str:
        return url_key(self.url)

    @property
    def shown_url(self) -> str:
        """The URL with its credentials (user:password@, signatures, tokens) redacted: safe to log and return."""
        return redact_url(self.url)


def url_key(url: str) -> str:
    """The cache's name for a URL's file: a hash of the URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:40]


def parse_models(raw: Any) -> tuple[ModelRef, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidInput("'models' must be a list of {url, folder, name} objects")
    refs = []
    for i, item in enumerate(raw):
        where = f"models[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object with 'url' and 'folder'")
        url = check_url(item.get("url"), where)
        folder = item.get("folder")
        if folder not in MODEL_FOLDERS:
            raise InvalidInput(f"{where}: 'folder' must be one of {', '.join(MODEL_FOLDERS)}, not {folder!r}")
        name = check_model_name(item.get("name", default_name(url)), where, folder)
        digest = item.get("sha256")
        if digest is not None and (not isinstance(digest, str) or not SHA256.match(digest)):
            raise InvalidInput(f"{where}: 'sha256' must be 64 hexadecimal digits")
        headers = item.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in headers.items()):
            raise InvalidInput(f"{where}: 'headers' must be an object of strings, e.g. an Authorization header")
        refs.append(ModelRef(url, folder, name, digest.lower() if digest else None, dict(headers)))
    names = [(r.folder, r.name) for r in refs]
    if len(set(names)) != len(names):
        raise InvalidInput("'models' names the same file twice in one folder")
    return tuple(refs)


def check_url(url: Any, where: str) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise InvalidInput(f"{where}: 'url' must be an http(s), s3:// or hf:// URL")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise InvalidInput(f"{where}: {scheme}:// is not fetched; use http(s), s3:// or hf://")
    if scheme == "hf" and len(PurePosixPath(urlsplit(url).netloc + urlsplit(url).path).parts) < 3:
        raise InvalidInput(f"{where}: an hf:// URL is hf://<owner>/<repo>[@revision]/<path in the repo>")
    return url


def default_name(url: str) -> str:
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    return name or "model.safetensors"


def rewrite_workflow_urls(workflow: dict[str, Any]) -> tuple[dict[str, Any], tuple[ModelRef, ...]]:
    """Loader inputs holding a URL → the cached file's name (`<hash>-<file name>`), and the models to fetch."""
    refs: list[ModelRef] = []
    rewritten = {}
    for node_id, node in workflow.items():
        inputs = node.get("inputs", {})
        changed = dict(inputs)
        for name, value in inputs.items():
            if not (isinstance(value, str) and value.split("://", 1)[0].lower() in SCHEMES and "://" in value):
                continue
            folder = INPUT_FOLDERS.get((node.get("class_type"), name)) or INPUT_FOLDERS.get(name)
            if folder is None:
                continue  # a URL in another kind of input (a prompt, an image loader) is not a model
            where = f"workflow node {node_id} ({node.get('class_type')}) input '{name}'"
            url = check_url(value, where)
            try:
                cached_name = check_model_name(f"{url_key(url)[:12]}-{default_name(url)}", where, folder)
            except InvalidInput:
                raise InvalidInput(
                    f"{where}: the URL {redact_url(url)} does not end in a model file name "
                    f"({', '.join(MODEL_EXTENSIONS)}), so ComfyUI would not list the file: name it in 'models' "
                    f"({{\"url\": ..., \"folder\": \"{folder}\", \"name\": \"my-model.safetensors\"}}) and put "
                    "that name in the input"
                ) from None
            ref = ModelRef(url, folder, cached_name)
            refs.append(ref)
            changed[name] = ref.name
        rewritten[node_id] = {**node, "inputs": changed} if changed != inputs else node
    return rewritten, tuple(dict.fromkeys(refs))
