"""The S3 client against moto's server on loopback: the requests it sends (no default CRC checksums, which R2 and GCS
refuse; path addressing off AWS), multipart uploads from disk, the model cache on the same client, and a 1 GB
upload whose memory growth is measured in a process of its own."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import requests
from conftest import free_port_block

from comfy_worker import s3
from comfy_worker.delivery.deliver import deliver
from comfy_worker.delivery.outputs import IN_MEMORY_MAX_BYTES, OutputFile, read_output
from comfy_worker.errors import DeliveryFailed
from comfy_worker.fleet.instance import InstanceDirs
from comfy_worker.models.sources import s3_object
from comfy_worker.models.urls import ModelRef
from comfy_worker.settings import S3Config

REPO = Path(__file__).resolve().parents[2]
CHECKSUM_HEADERS = ("x-amz-checksum-", "x-amz-sdk-checksum-algorithm", "x-amz-checksum-mode", "content-md5")


def make_bucket(endpoint: str) -> S3Config:
    config = S3Config(endpoint_url=endpoint, access_key_id="test-key-id", secret_access_key="test-secret",
                      bucket=f"big-{uuid.uuid4().hex[:8]}", region="us-east-1")
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test-key-id", aws_secret_access_key="test-secret",
                 region_name="us-east-1").create_bucket(Bucket=config.bucket)
    return config


class SentRequests:
    """Every request the shared client sends, as botocore hands it to the network."""

    def __init__(self, config: S3Config) -> None:
        self.events = s3.client(config).meta.events
        self.sent: list[tuple[str, str, dict[str, str]]] = []

    def __enter__(self) -> SentRequests:
        self.events.register("before-send.s3", self._record, unique_id="test-sent-requests")
        return self

    def __exit__(self, *_: object) -> None:
        self.events.unregister("before-send.s3", unique_id="test-sent-requests")

    def _record(self, request, **_: object) -> None:
        self.sent.append((request.method, request.url, {k.lower(): str(v) for k, v in request.headers.items()}))


def checksum_headers(sent: list[tuple[str, str, dict[str, str]]]) -> list[str]:
    return [f"{method} {name}" for method, _, headers in sent for name in headers
            if name.startswith(CHECKSUM_HEADERS)]


@pytest.mark.parametrize(("endpoint", "style"), [
    ("https://s3.eu-west-1.amazonaws.com", "virtual"),
    ("https://my-bucket.s3.amazonaws.com", "virtual"),
    ("https://0123abcd.r2.cloudflarestorage.com", "path"),
    ("https://storage.googleapis.com", "path"),
    ("http://minio.internal:9000", "path"),
    ("http://127.0.0.1:9000", "path"),
    ("https://amazonaws.com.example.org", "path"),
])
def test_addressing_style_is_virtual_on_aws_and_path_elsewhere(endpoint, style):
    assert s3.addressing_style(endpoint) == style
    assert s3.client_config(endpoint).s3 == {"addressing_style": style}


def test_uploads_send_no_default_checksums_and_address_the_bucket_by_path(s3_server, tmp_path):
    config = make_bucket(s3_server)
    big = tmp_path / "clip.mp4"
    big.write_bytes(os.urandom(s3.PART_BYTES * 2 + 12345))  # three parts
    with SentRequests(config) as requests_sent:
        small_url = s3.upload(config, "job/small.png", b"\x89PNG tiny", "image/png")
        big_url = s3.upload(config, "job/clip.mp4", big, "video/mp4")

    operations = [(method, url.split("?")[0].removeprefix(s3_server)) for method, url, _ in requests_sent.sent]
    assert ("PUT", f"/{config.bucket}/job/small.png") in operations  # path addressing on a non-AWS endpoint
    assert ("POST", f"/{config.bucket}/job/clip.mp4") in operations  # multipart: create, then complete
    parts = [url for method, url, _ in requests_sent.sent if method == "PUT" and "partNumber=" in url]
    assert len(parts) == 3
    assert checksum_headers(requests_sent.sent) == []  # botocore ≥ 1.36 would send x-amz-checksum-crc32 headers
    assert "checksum" not in small_url.lower() and "checksum" not in big_url.lower()

    assert requests.get(small_url, timeout=10).content == b"\x89PNG tiny"
    downloaded = requests.get(big_url, timeout=30)
    assert downloaded.headers["Content-Type"] == "video/mp4" and downloaded.content == big.read_bytes()


def test_the_model_cache_reads_s3_through_the_same_client_without_checksum_mode(s3_server):
    config = make_bucket(s3_server)
    s3.upload(config, "models/tiny.safetensors", b"weights", "application/octet-stream")
    ref = ModelRef(f"s3://{config.bucket}/models/tiny.safetensors", "checkpoints", "tiny.safetensors")
    with SentRequests(config) as requests_sent:
        body, size = s3_object(ref, config)
        assert (body.read(), size) == (b"weights", 7)
    [(method, url, _)] = requests_sent.sent
    assert method == "GET" and url.startswith(f"{s3_server}/{config.bucket}/models/tiny.safetensors")
    assert checksum_headers(requests_sent.sent) == []


def test_a_refused_multipart_upload_names_the_s3_error_not_the_local_path(s3_server, tmp_path):
    config = make_bucket(s3_server)
    missing = dataclasses.replace(config, bucket="no-such-bucket")
    big = tmp_path / "private-folder" / "clip.mp4"
    big.parent.mkdir()
    big.write_bytes(b"\0" * (s3.PART_BYTES + 1))
    with pytest.raises(DeliveryFailed, match="NoSuchBucket") as refused:
        s3.upload(missing, "job/clip.mp4", big, "video/mp4")
    assert "private-folder" not in str(refused.value) and "test-secret" not in str(refused.value)


# The peak is the kernel's high-water mark of this process's memory (VmHWM). getrusage's ru_maxrss would not do: it
# keeps the parent's size across fork and exec, so a child of pytest starts "peaked" at pytest's own RSS.
UPLOAD_AND_MEASURE = """
import json, sys, time
from pathlib import Path
from comfy_worker import s3
from comfy_worker.settings import S3Config

def vm_hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

config = S3Config(**json.loads(sys.argv[1]))
s3.client(config)
before = vm_hwm()
started = time.monotonic()
url = s3.upload(config, "job/big.mp4", Path(sys.argv[2]), "video/mp4")
seconds = time.monotonic() - started
print(json.dumps({"before": before, "peak": vm_hwm(), "seconds": seconds, "url": url}))
"""


@pytest.fixture
def separate_s3_server():
    """moto in its own process, so that the bytes it stores do not count in the uploader's memory."""
    port = free_port_block(1)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.timeout(600)
def test_a_1_gb_upload_streams_from_disk_with_bounded_memory(separate_s3_server, tmp_path):
    size = 1024**3
    config = make_bucket(separate_s3_server)
    video = tmp_path / "big.mp4"
    with open(video, "wb") as file:
        file.write(b"head-of-the-file")
        file.truncate(size)
    measured = subprocess.run(
        [sys.executable, "-c", UPLOAD_AND_MEASURE, json.dumps(dataclasses.asdict(config)), str(video)],
        capture_output=True, text=True, timeout=580, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=False,
    )
    assert measured.returncode == 0, measured.stderr[-2000:]
    report = json.loads(measured.stdout.strip().splitlines()[-1])
    growth_mb = (report["peak"] - report["before"]) / 1e6
    print(f"1 GiB upload: {report['seconds']:.1f} s, RSS growth {growth_mb:.0f} MB")
    # the whole file in memory would be 1074 MB; the transfer reads parts from disk as it sends them
    assert growth_mb < 100, f"RSS grew by {growth_mb:.0f} MB during the upload"
    head = boto3.client("s3", endpoint_url=config.endpoint_url, aws_access_key_id="test-key-id",
                        aws_secret_access_key="test-secret", region_name="us-east-1").head_object(
        Bucket=config.bucket, Key="job/big.mp4")
    assert head["ContentLength"] == size and head["ETag"].strip('"').endswith(f"-{size // s3.PART_BYTES}")
    first = requests.get(report["url"], headers={"Range": "bytes=0-15"}, timeout=30)
    assert first.content == b"head-of-the-file"


def test_a_large_output_stays_on_disk_and_is_delivered_from_there(s3_server, tmp_path):
    config = make_bucket(s3_server)
    dirs = InstanceDirs(tmp_path / "instance")
    (dirs.output / "job-1").mkdir(parents=True)
    video = OutputFile("videos", "9", "clip.mp4", "job-1", "output", job_folder="job-1")
    small = OutputFile("images", "8", "frame.png", "job-1", "output", job_folder="job-1")
    video.path_in(dirs).write_bytes(os.urandom(IN_MEMORY_MAX_BYTES + 1))
    small.path_in(dirs).write_bytes(b"\x89PNG small")

    files = [(video, read_output(video, dirs)), (small, read_output(small, dirs))]
    assert files[0][1] == video.path_in(dirs) and files[1][1] == b"\x89PNG small"
    delivery = deliver(files, [], job_id="job-1", requested_mode="s3", limit_bytes=10**6, bucket=config,
                       local_dir=tmp_path / "local")
    [stored] = delivery.outputs["videos"]
    assert requests.get(stored["data"], timeout=30).content == video.path_in(dirs).read_bytes()
    assert (tmp_path / "local" / "job-1" / "clip.mp4").read_bytes() == video.path_in(dirs).read_bytes()
