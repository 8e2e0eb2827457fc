"""Where a model file comes from: the https URL and headers of an http(s) or hf:// model, an S3 object, and
reading either in chunks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit

import requests

from comfy_worker.errors import InvalidInput, ModelDownloadFailed
from comfy_worker.models.urls import ModelRef
from comfy_worker.settings import S3Config
from comfy_worker.url_guard import refused_cause

CHUNK = 1 << 20


@dataclass(frozen=True)
class Credentials:
    s3: S3Config | None  # the request's bucket credentials, else the worker's
    hf_token: str


def http_request(ref: ModelRef, credentials: Credentials) -> tuple[str, dict[str, str]]:
    """The https URL and headers for an http(s) or hf:// model. An hf:// URL becomes the `resolve` URL that
    huggingface_hub's `hf_hub_url` builds; a revision with a slash is written %2F-encoded (`@refs%2Fpr%2F1`)."""
    if ref.url.lower().startswith("hf://"):
        parts = urlsplit(ref.url)
        owner, repo_rev, *path = f"{parts.netloc}{parts.path}".split("/")
        repo, _, revision = repo_rev.partition("@")
        revision, file = quote(unquote(revision or "main"), safe=""), quote(unquote("/".join(path)))
        url = f"https://huggingface.co/{owner}/{repo}/resolve/{revision}/{file}"
        headers = dict(ref.headers)
        if credentials.hf_token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {credentials.hf_token}"
        return url, headers
    return ref.url, dict(ref.headers)


def s3_object(ref: ModelRef, config: S3Config | None, head_only: bool = False) -> tuple[BinaryIO, int | None]:
    from botocore.exceptions import BotoCoreError, ClientError

    from comfy_worker.s3 import client as s3_client  # boto3 is slow to import and only needed here

    if config is None:
        raise ModelDownloadFailed(f"{ref.shown_url} needs S3 credentials: give 's3' in the job or set BUCKET_*")
    parts = urlsplit(ref.url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    client = s3_client(config)
    try:
        if head_only:
            client.head_object(Bucket=bucket, Key=key)
            return None, None  # type: ignore[return-value]
        answer = client.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        raise ModelDownloadFailed(f"downloading {ref.shown_url} failed: HTTP {status} "
                                  f"({error.response.get('Error', {}).get('Code')})") from None
    except BotoCoreError as error:
        refused = refused_cause(error)
        if refused is not None:
            raise InvalidInput(f"downloading {ref.shown_url} from the job's S3 endpoint was refused: "
                               f"{refused}") from None
        raise ModelDownloadFailed(f"downloading {ref.shown_url} failed: {type(error).__name__}") from None
    return answer["Body"], answer.get("ContentLength")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read1_chunks(response: requests.Response) -> Iterator[bytes]:
    """What each socket read brings (up to CHUNK): the caller checks its limits after every read, however slowly
    the server sends."""
    while chunk := response.raw.read1(CHUNK, decode_content=True):
        yield chunk


def chunks(body: Any) -> Iterator[bytes]:
    while chunk := body.read(CHUNK):
        yield chunk
