"""Outputs: inline or S3, the inline limit, the worker's bucket."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from comfy_worker.settings.reader import EnvReader, SettingsError, Variable
from comfy_worker.url_guard import UrlGuard

OUTPUTS = (
    Variable("OUTPUT_MODE", "auto",
             "base64, s3, or auto (base64 unless the response would pass OUTPUT_INLINE_LIMIT_MB).", "outputs"),
    Variable("OUTPUT_INLINE_LIMIT_MB", "10", "Largest response returned inline (RunPod's /run limit).", "outputs"),
    Variable("LOCAL_OUTPUT_DIR", "", "Also write each job's outputs under this folder (local runs).", "outputs"),
    Variable("BUCKET_ENDPOINT_URL", "", "S3 endpoint; with the keys below, outputs can go to S3.", "outputs"),
    Variable("BUCKET_ACCESS_KEY_ID", "", "S3 access key id.", "outputs"),
    Variable("BUCKET_SECRET_ACCESS_KEY", "", "S3 secret access key.", "outputs"),
    Variable("BUCKET_NAME", "",
             "S3 bucket; empty takes the first label of the endpoint's host (worker-comfyui's style).", "outputs"),
    Variable("BUCKET_PREFIX", "", "Key prefix: objects are stored as {prefix}/{job_id}/{filename}.", "outputs"),
    Variable("BUCKET_REGION", "", "S3 region (empty: the SDK's default).", "outputs"),
    Variable("BUCKET_URL_EXPIRY_S", "604800", "Lifetime of the presigned URLs returned (7 days).", "outputs"),
    Variable("PNG_COMPRESS_LEVEL", "1",
             "zlib level (0-9) of the PNGs that SaveImage (and nodes that inherit its level) writes in every "
             "instance; 4 is ComfyUI's own. 1: SDXL 1.23x the images/min of level 4 with one instance per GPU, "
             "2.6 % larger files (docs/benchmarks/stream.md). PreviewImage keeps its 1 and "
             "nodes with their own compress_level input keep the user's value.", "outputs"),
    Variable("STREAM_RESULTS", "0",
             "1: the handler is a generator that yields progress, latent previews (when a job asks for `previews`) "
             "and each output as it is saved, then the result (docs/streaming.md); RunPod's /stream shows them and "
             "/run, /runsync return the list of all of them. 0: one result per job, as worker-comfyui.", "outputs"),
)

OUTPUT_MODES = ("auto", "base64", "s3")


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    prefix: str = ""
    region: str | None = None
    url_expiry_s: int = 604800
    guard: UrlGuard | None = None  # set on a job's own endpoint, whose connections are checked; None: the worker's


@dataclass(frozen=True)
class OutputSettings:
    output_mode: str
    output_inline_limit_bytes: int
    local_output_dir: Path | None
    s3: S3Config | None
    stream_results: bool
    png_compress_level: int

    @classmethod
    def read(cls, env: EnvReader) -> OutputSettings:
        output_mode = env.raw("OUTPUT_MODE").lower() or "auto"
        if output_mode not in OUTPUT_MODES:
            raise SettingsError(f"OUTPUT_MODE={output_mode!r} is not one of {', '.join(OUTPUT_MODES)}")
        local_output = env.raw("LOCAL_OUTPUT_DIR")
        return cls(
            output_mode=output_mode,
            output_inline_limit_bytes=int(env.number("OUTPUT_INLINE_LIMIT_MB", 10, minimum=0) * 1_000_000),
            local_output_dir=Path(local_output).expanduser() if local_output else None,
            s3=_s3_from(env),
            stream_results=env.flag("STREAM_RESULTS", False),
            png_compress_level=_png_compress_level(env),
        )


def _png_compress_level(env: EnvReader) -> int:
    level = env.integer("PNG_COMPRESS_LEVEL", 1)
    if level > 9:
        raise SettingsError(f"PNG_COMPRESS_LEVEL={level} is not a zlib level: use 0 (none) to 9 (smallest)")
    return level


def _s3_from(env: EnvReader) -> S3Config | None:
    endpoint = env.raw("BUCKET_ENDPOINT_URL")
    key_id, secret = env.raw("BUCKET_ACCESS_KEY_ID"), env.raw("BUCKET_SECRET_ACCESS_KEY")
    if not endpoint:
        return None
    if not (key_id and secret):
        raise SettingsError("BUCKET_ENDPOINT_URL is set but BUCKET_ACCESS_KEY_ID or BUCKET_SECRET_ACCESS_KEY is not")
    endpoint, bucket = split_bucket_endpoint(endpoint, env.raw("BUCKET_NAME"))
    return S3Config(
        endpoint_url=endpoint,
        access_key_id=key_id,
        secret_access_key=secret,
        bucket=bucket,
        prefix=env.raw("BUCKET_PREFIX").strip("/"),
        region=env.raw("BUCKET_REGION") or None,
        url_expiry_s=env.integer("BUCKET_URL_EXPIRY_S", 604800, minimum=1),
    )


def split_bucket_endpoint(endpoint: str, bucket: str) -> tuple[str, str]:
    """Returns (endpoint, bucket). Without a bucket name, worker-comfyui's style applies: the endpoint's first host
    label names the bucket (https://my-bucket.s3.eu-west-1.amazonaws.com → my-bucket at https://s3.eu-west-1...)."""
    if bucket:
        return endpoint, bucket
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    label, _, rest = host.partition(".")
    if not rest or label.isdigit():
        raise SettingsError(
            f"BUCKET_NAME is empty and the endpoint {endpoint!r} does not start with a bucket name: set BUCKET_NAME"
        )
    netloc = rest + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")), label
