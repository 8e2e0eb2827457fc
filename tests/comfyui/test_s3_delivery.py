"""Outputs to a real S3-protocol server (moto's server mode on loopback): key layout, presigned URLs that return
the same bytes, per-request buckets, and `auto` switching to S3 when the response would be too large."""

from __future__ import annotations

import dataclasses
import uuid

import boto3
import pytest
import requests
from conftest import make_job
from workflows import invert

from comfy_worker.settings import S3Config

pytestmark = pytest.mark.comfyui


@pytest.fixture
def bucket(s3_server) -> S3Config:
    config = S3Config(endpoint_url=s3_server, access_key_id="test-key-id", secret_access_key="test-secret",
                      bucket=f"outputs-{uuid.uuid4().hex[:8]}", prefix="renders", region="us-east-1")
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test-key-id", aws_secret_access_key="test-secret",
                 region_name="us-east-1").create_bucket(Bucket=config.bucket)
    return config


@pytest.fixture
def worker_settings(worker):
    """Lets a test change the worker's settings (bucket, inline limit), restoring them afterwards."""
    original = worker.settings

    def change(**fields):
        worker.settings = dataclasses.replace(original, **fields)

    yield change
    worker.settings = original


def request_s3(config: S3Config) -> dict:
    return {"endpoint_url": config.endpoint_url, "access_key_id": config.access_key_id,
            "secret_access_key": config.secret_access_key, "bucket": config.bucket, "prefix": config.prefix,
            "region": config.region}


def objects(config: S3Config) -> dict[str, dict]:
    client = boto3.client("s3", endpoint_url=config.endpoint_url, aws_access_key_id=config.access_key_id,
                          aws_secret_access_key=config.secret_access_key, region_name=config.region)
    listed = client.list_objects_v2(Bucket=config.bucket).get("Contents", [])
    return {o["Key"]: client.head_object(Bucket=config.bucket, Key=o["Key"]) for o in listed}


def test_s3_mode_uploads_under_prefix_job_filename_and_returns_a_working_url(worker, run, bucket):
    job = make_job(invert(prefix="sub/name"), output_mode="s3", s3=request_s3(bucket))
    result = run(worker.handle(job))
    assert "error" not in result, result
    [image] = result["images"]
    assert image["type"] == "s3_url" and result["output_mode"] == "s3"
    stored = objects(bucket)
    key = f"renders/{job['id']}/sub/{image['filename']}"
    assert list(stored) == [key]
    assert stored[key]["ContentType"] == "image/png"
    downloaded = requests.get(image["data"], timeout=10)
    assert downloaded.status_code == 200 and downloaded.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test-secret" not in str(result)


def test_auto_switches_to_s3_when_the_response_would_be_too_large(worker, run, bucket, worker_settings):
    worker_settings(s3=bucket, output_inline_limit_bytes=1)  # any output is "too large"
    result = run(worker.handle(make_job(invert())))
    assert "error" not in result, result
    assert result["output_mode"] == "s3" and result["images"][0]["type"] == "s3_url"
    assert requests.get(result["images"][0]["data"], timeout=10).content[:4] == b"\x89PNG"


def test_auto_stays_base64_under_the_limit(worker, run, bucket, worker_settings):
    worker_settings(s3=bucket)
    result = run(worker.handle(make_job(invert())))
    assert result["output_mode"] == "base64" and result["images"][0]["type"] == "base64"
    assert objects(bucket) == {}


def test_too_large_without_a_bucket_says_to_configure_one(worker, run, worker_settings):
    worker_settings(s3=None, output_inline_limit_bytes=1)
    result = run(worker.handle(make_job(invert())))
    assert "configure a bucket" in result["error"] and "BUCKET_ENDPOINT_URL" in result["error"]


def test_a_refused_upload_is_a_clear_error_without_credentials(worker, run, bucket):
    wrong = {**request_s3(bucket), "bucket": "no-such-bucket"}
    result = run(worker.handle(make_job(invert(), output_mode="s3", s3=wrong)))
    assert "no-such-bucket" in result["error"] and "NoSuchBucket" in result["error"]
    assert "test-secret" not in result["error"]
