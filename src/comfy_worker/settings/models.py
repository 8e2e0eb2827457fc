"""Models fetched by URL: the shared cache and its limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from comfy_worker.settings.reader import NETWORK_VOLUME, EnvReader, Variable

MODELS = (
    Variable("MODEL_CACHE_DIR",
             "/runpod-volume/.cache/comfy-worker-models if a volume is mounted, else <work dir>/model-cache",
             "The cache of model files fetched by URL, shared by every instance (and every worker on the volume).",
             "models"),
    Variable("MODEL_CACHE_MAX_GB", "100",
             "The cache's size; least recently used files not in use are evicted past it.", "models"),
    Variable("MODEL_MAX_FILE_GB", "50", "Largest model file fetched.", "models"),
    Variable("MODEL_DOWNLOAD_TIMEOUT_S", "3600",
             "Time limit for downloading one model file (and never past the job's timeout).", "models"),
    Variable("HF_TOKEN", "", "Hugging Face token for hf:// model URLs (gated or private repositories).", "models"),
)


@dataclass(frozen=True)
class ModelSettings:
    model_cache_dir: Path
    model_cache_max_bytes: int
    model_max_file_bytes: int
    model_download_timeout_s: float
    hf_token: str

    @classmethod
    def read(cls, env: EnvReader) -> ModelSettings:
        return cls(
            model_cache_dir=_model_cache_dir(env),
            model_cache_max_bytes=int(env.number("MODEL_CACHE_MAX_GB", 100, minimum=0.000001) * 1e9),
            model_max_file_bytes=int(env.number("MODEL_MAX_FILE_GB", 50, minimum=0.000001) * 1e9),
            model_download_timeout_s=env.number("MODEL_DOWNLOAD_TIMEOUT_S", 3600, minimum=1),
            hf_token=env.raw("HF_TOKEN"),
        )


def _model_cache_dir(env: EnvReader) -> Path:
    if env.raw("MODEL_CACHE_DIR"):
        return Path(env.raw("MODEL_CACHE_DIR")).expanduser()
    if NETWORK_VOLUME.is_dir():
        return NETWORK_VOLUME / ".cache" / "comfy-worker-models"
    return env.work_dir() / "model-cache"
