"""Uploads job outputs to an S3-protocol bucket and returns presigned URLs. Credentials never reach a log line."""

from __future__ import annotations

import functools
import threading

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .errors import DeliveryFailed
from .redaction import redact_url
from .settings import S3Config
from .url_guard import guard_boto_client, refused_cause

_lock = threading.Lock()


@functools.lru_cache(maxsize=16)
def client(config: S3Config):
    """A client for the config's endpoint; a job's own endpoint (config.guard set) connects only where allowed."""
    with _lock:  # boto3's session set-up is not thread-safe
        made = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            region_name=config.region,
            config=Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}),
        )
    return guard_boto_client(made, config.guard) if config.guard is not None else made


def object_key(config: S3Config, job_id: str, name: str) -> str:
    return "/".join(part for part in (config.prefix, job_id, name) if part)


def upload(config: S3Config, key: str, data: bytes, content_type: str) -> str:
    """Stores `data` under `key`; returns a presigned GET URL valid for the configured time."""
    s3 = client(config)
    where = f"uploading {key} to bucket {config.bucket!r} at {redact_url(config.endpoint_url)}"
    try:
        s3.put_object(Bucket=config.bucket, Key=key, Body=data, ContentType=content_type)
        return s3.generate_presigned_url(
            "get_object", Params={"Bucket": config.bucket, "Key": key}, ExpiresIn=config.url_expiry_s
        )
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "error")
        raise DeliveryFailed(f"{where} failed: {code}") from None
    except BotoCoreError as error:
        refused = refused_cause(error)
        if refused is not None:
            raise DeliveryFailed(f"{where} was refused: {refused}") from None
        raise DeliveryFailed(f"{where} failed: {type(error).__name__}") from None
