"""The S3 client of the worker (output delivery and models by s3:// URL share it) and the upload of job outputs
through boto3's managed transfer: a file goes up in concurrent multipart parts read from disk, never whole in RAM.

The client is set for S3-compatible stores as much as for AWS: botocore ≥ 1.36 adds CRC checksums to every upload
and asks for them on every download by default, which Cloudflare R2, Google Cloud Storage and older MinIO refuse;
here checksums are sent and checked only where an operation requires them. AWS endpoints use virtual-host
addressing (`bucket.s3.region.amazonaws.com`), every other endpoint path addressing (`endpoint/bucket/key`), which
MinIO needs and R2 and GCS accept. Credentials never reach a log line or an error message."""

from __future__ import annotations

import functools
import io
import threading
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from comfy_worker.errors import DeliveryFailed
from comfy_worker.redaction import redact_url
from comfy_worker.settings import S3Config
from comfy_worker.url_guard import guard_boto_client, refused_cause

PART_BYTES = 16 * 1024 * 1024
TRANSFER = TransferConfig(
    multipart_threshold=PART_BYTES,
    multipart_chunksize=PART_BYTES,
    max_concurrency=4,  # parts in flight: memory stays near max_concurrency × PART_BYTES whatever the file's size
    use_threads=True,
)

_lock = threading.Lock()


def addressing_style(endpoint_url: str) -> str:
    """`virtual` for AWS's own endpoints, `path` for any other S3-compatible store."""
    host = (urlsplit(endpoint_url).hostname or "").lower()
    return "virtual" if host == "amazonaws.com" or host.endswith(".amazonaws.com") else "path"


def client_config(endpoint_url: str) -> Config:
    return Config(
        signature_version="s3v4",
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": addressing_style(endpoint_url)},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


@functools.lru_cache(maxsize=16)
def client(config: S3Config):
    """One client per bucket configuration, shared by threads (boto3 clients are thread-safe once made); a job's own
    endpoint (config.guard set) connects only where the URL guard allows."""
    with _lock:  # boto3's session set-up is not thread-safe
        made = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            region_name=config.region,
            config=client_config(config.endpoint_url),
        )
    return guard_boto_client(made, config.guard) if config.guard is not None else made


def object_key(config: S3Config, job_id: str, name: str) -> str:
    return "/".join(part for part in (config.prefix, job_id, name) if part)


def upload(config: S3Config, key: str, data: bytes | Path, content_type: str) -> str:
    """Stores `data` (bytes, or a file read from disk part by part) under `key`; returns a presigned GET URL valid
    for the configured time."""
    s3 = client(config)
    extra = {"ContentType": content_type}
    try:
        if isinstance(data, Path):
            s3.upload_file(str(data), config.bucket, key, ExtraArgs=extra, Config=TRANSFER)
        else:
            s3.upload_fileobj(io.BytesIO(data), config.bucket, key, ExtraArgs=extra, Config=TRANSFER)
        return s3.generate_presigned_url(
            "get_object", Params={"Bucket": config.bucket, "Key": key}, ExpiresIn=config.url_expiry_s
        )
    except (ClientError, S3UploadFailedError, BotoCoreError, OSError) as error:
        where = f"uploading {key} to bucket {config.bucket!r} at {redact_url(config.endpoint_url)}"
        refused = refused_cause(error)
        if refused is not None:
            raise DeliveryFailed(f"{where} was refused: {refused}") from None
        raise DeliveryFailed(f"{where} failed: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    """The S3 error code (NoSuchBucket, AccessDenied, …) or the exception's type; never its text, which can name
    a local path. The managed transfer wraps the ClientError of a failed part in S3UploadFailedError."""
    cause = error.__context__ if isinstance(error, S3UploadFailedError) else error
    if isinstance(cause, ClientError):
        return str(cause.response.get("Error", {}).get("Code", "error"))
    return type(error).__name__
