"""Models by URL: a real HTTP server on loopback (and moto's S3 server) serving model files into the shared cache,
used by real ComfyUI CPU instances through a test loader node that returns the file's sha256."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

import boto3
import pytest
from conftest import make_job

from comfy_worker.errors import InvalidInput, ModelDownloadFailed
from comfy_worker.models.cache import ModelCache
from comfy_worker.models.sources import Credentials
from comfy_worker.models.urls import ModelRef, parse_models, rewrite_workflow_urls
from comfy_worker.settings import S3Config
from comfy_worker.url_guard import UrlGuard

MB = 1_000_000
TOKEN = "Bearer let-me-in"
job_log = logging.LoggerAdapter(logging.getLogger("test"), {})


class ModelServer:
    """Serves `files` at /files/<name> (slowly, when `delay_s`), /gated/<name> (with TOKEN only) and
    /truncated/<name> (half the bytes, then the connection closes); counts full GETs per path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.gets: Counter[str] = Counter()
        self.delay_s = 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                kind, _, name = self.path.strip("/").partition("/")
                data = server.files.get(name)
                if data is None or (kind == "gated" and self.headers.get("Authorization") != TOKEN):
                    self.send_response(404 if data is None else 403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("Range") == "bytes=0-0":
                    self.send_response(206)
                    self.send_header("Content-Length", "1")
                    self.end_headers()
                    self.wfile.write(data[:1])
                    return
                server.gets[self.path] += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                body = data[: len(data) // 2] if kind == "truncated" else data
                for start in range(0, len(body), 256 * 1024):
                    self.wfile.write(body[start:start + 256 * 1024])
                    time.sleep(server.delay_s)
                if kind == "truncated":
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, name: str, size: int) -> bytes:
        data = hashlib.sha256(name.encode()).digest() * (size // 32 + 1)
        self.files[name] = data[:size]
        return self.files[name]


@pytest.fixture
def server():
    served = ModelServer()
    yield served
    served.httpd.shutdown()


def cache_at(tmp_path: Path, max_mb: float = 100) -> ModelCache:
    return ModelCache(tmp_path / "cache", int(max_mb * MB), 50 * MB, timeout_s=60, url_guard=LOOPBACK)


NO_CREDENTIALS = Credentials(None, "")
LOOPBACK = UrlGuard.parse("127.0.0.1")  # the test servers' address, let through as ALLOW_PRIVATE_URLS would


def digest_workflow(lora_name: str) -> dict:
    return {"1": {"class_type": "WorkerTestLoraDigest", "inputs": {"lora_name": lora_name}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


# --- the input ------------------------------------------------------------------------------------------------------
def test_models_entries_are_checked():
    [ref] = parse_models([{"url": "https://h/x/my%20lora.safetensors?sig=abc", "folder": "loras"}])
    assert (ref.folder, ref.name) == ("loras", "my lora.safetensors")
    assert ref.shown_url == "https://h/x/my%20lora.safetensors?sig=REDACTED"  # a signature is never shown
    for bad, message in [
        ("x", "'models' must be a list"),
        ([{"url": "ftp://h/a.safetensors", "folder": "loras"}], "ftp:// is not fetched"),
        ([{"url": "https://h/a.safetensors", "folder": "nowhere"}], "'folder' must be one of"),
        ([{"url": "https://h/a.safetensors", "folder": "loras", "name": "../a"}], "plain file name"),
        ([{"url": "https://h/a.safetensors", "folder": "loras", "sha256": "abc"}], "64 hexadecimal"),
        ([{"url": "hf://owner/file.safetensors", "folder": "loras"}], "hf://<owner>/<repo>"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            parse_models(bad)


def test_urls_in_loader_inputs_become_cached_names():
    workflow = {"1": {"class_type": "LoraLoader",
                      "inputs": {"lora_name": "https://h/l.safetensors", "model": ["2", 0]}},
                "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "s3://b/k/c.safetensors"}},
                "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "https://not.a.model/", "clip": ["2", 1]}}}
    rewritten, refs = rewrite_workflow_urls(workflow)
    assert [(r.folder, r.url) for r in refs] == [("loras", "https://h/l.safetensors"),
                                                 ("checkpoints", "s3://b/k/c.safetensors")]
    assert rewritten["1"]["inputs"]["lora_name"] == refs[0].name and refs[0].name.endswith("-l.safetensors")
    assert rewritten["3"]["inputs"]["text"] == "https://not.a.model/"


# --- the cache --------------------------------------------------------------------------------------------------------
def test_concurrent_requests_for_one_url_download_it_once(server, tmp_path):
    data = server.add("shared.safetensors", 3 * MB)
    server.delay_s = 0.02
    cache = cache_at(tmp_path)
    ref = ModelRef(f"{server.url}/files/shared.safetensors", "loras", "shared.safetensors")
    results, progress = [], []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch((ref,), NO_CREDENTIALS, progress.append,
                                                                          job_log))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert server.gets["/files/shared.safetensors"] == 1 and cache.downloads == 1
    assert sum(len(r.downloaded) for r in results) == 1
    assert (cache.models / "loras" / "shared.safetensors").read_bytes() == data
    assert progress[-1] == {"download": ref.url, "bytes": 3 * MB, "total": 3 * MB} and len(progress) > 2


def test_least_recently_used_files_are_evicted_but_never_one_in_use(server, tmp_path):
    cache = cache_at(tmp_path, max_mb=2.5)
    refs = []
    for name in ("a", "b", "c"):
        server.add(f"{name}.safetensors", MB)
        refs.append(ModelRef(f"{server.url}/files/{name}.safetensors", "loras", f"{name}.safetensors"))
    held = cache.fetch((refs[0],), NO_CREDENTIALS, lambda u: None, job_log)  # a stays in use
    cache.release(cache.fetch((refs[1],), NO_CREDENTIALS, lambda u: None, job_log).keys)
    time.sleep(0.05)
    cache.release(cache.fetch((refs[2],), NO_CREDENTIALS, lambda u: None, job_log).keys)
    names = sorted(p.name for p in (cache.models / "loras").iterdir())
    assert names == ["a.safetensors", "c.safetensors"], names  # b was the least recently used not in use
    assert not (cache.blobs / refs[1].key).exists()
    cache.release(held.keys)


def test_a_truncated_or_wrong_download_never_lands(server, tmp_path):
    server.add("half.safetensors", 2 * MB)
    cache = cache_at(tmp_path)
    truncated = ModelRef(f"{server.url}/truncated/half.safetensors", "loras", "half.safetensors")
    with pytest.raises(ModelDownloadFailed, match=r"truncated/half\.safetensors failed|stopped at"):
        cache.fetch((truncated,), NO_CREDENTIALS, lambda u: None, job_log)
    wrong = ModelRef(f"{server.url}/files/half.safetensors", "loras", "half.safetensors", sha256="0" * 64)
    with pytest.raises(ModelDownloadFailed, match=r"has sha256 .* not the 0000"):
        cache.fetch((wrong,), NO_CREDENTIALS, lambda u: None, job_log)
    missing = ModelRef(f"{server.url}/files/none.safetensors", "loras", "none.safetensors")
    with pytest.raises(ModelDownloadFailed, match=r"downloading .*/files/none.safetensors failed: HTTP 404"):
        cache.fetch((missing,), NO_CREDENTIALS, lambda u: None, job_log)
    assert [p.name for p in cache.blobs.iterdir() if not p.name.endswith(".lock")] == []
    assert list((cache.models / "loras").iterdir()) == []


def test_a_file_fetched_with_credentials_is_refused_to_a_job_without_them(server, tmp_path):
    data = server.add("private.safetensors", MB)
    cache = cache_at(tmp_path)
    url = f"{server.url}/gated/private.safetensors"
    with_token = ModelRef(url, "loras", "private.safetensors", headers={"Authorization": TOKEN})
    cache.release(cache.fetch((with_token,), NO_CREDENTIALS, lambda u: None, job_log).keys)
    without = ModelRef(url, "loras", "private.safetensors")
    with pytest.raises(InvalidInput, match="needs credentials that this job does not have \\(HTTP 403\\)"):
        cache.fetch((without,), NO_CREDENTIALS, lambda u: None, job_log)
    again = cache.fetch((with_token,), NO_CREDENTIALS, lambda u: None, job_log)  # reused after the check
    assert again.downloaded == () and server.gets["/gated/private.safetensors"] == 1
    assert (cache.models / "loras" / "private.safetensors").read_bytes() == data


def test_s3_models_use_the_jobs_credentials(s3_server, tmp_path):
    config = S3Config(s3_server, "model-key", "model-secret", "models-bucket", region="us-east-1")
    client = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="model-key",
                          aws_secret_access_key="model-secret", region_name="us-east-1")
    client.create_bucket(Bucket="models-bucket")
    client.put_object(Bucket="models-bucket", Key="loras/x.safetensors", Body=b"s3-model" * 1000)
    cache = cache_at(tmp_path)
    ref = ModelRef("s3://models-bucket/loras/x.safetensors", "loras", "x.safetensors")
    cache.fetch((ref,), Credentials(config, ""), lambda u: None, job_log)
    assert (cache.models / "loras" / "x.safetensors").read_bytes() == b"s3-model" * 1000
    with pytest.raises(ModelDownloadFailed, match="needs S3 credentials"):
        cache.fetch((ModelRef("s3://models-bucket/none", "loras", "n.safetensors"),), NO_CREDENTIALS,
                    lambda u: None, job_log)


# --- jobs on real instances -------------------------------------------------------------------------------------------
@pytest.mark.comfyui
def test_two_jobs_on_two_instances_share_one_download(worker, run, server):
    data = server.add("together.safetensors", 4 * MB)
    server.delay_s = 0.05
    models = [{"url": f"{server.url}/files/together.safetensors", "folder": "loras"}]

    async def both():
        return await asyncio.gather(*(worker.handle(make_job(digest_workflow("together.safetensors"), gpu=gpu,
                                                             models=models)) for gpu in (0, 1)))

    results = run(both())
    assert all("error" not in r for r in results), results
    assert {r["instance"] for r in results} == {"cpu0", "cpu1"}
    assert server.gets["/files/together.safetensors"] == 1
    assert [r["text"][0]["data"] for r in results] == [hashlib.sha256(data).hexdigest()] * 2
    assert sorted(len(r["models_downloaded"]) for r in results) == [0, 1]
    assert all(r["timings"]["download_ms"] > 100 for r in results)  # the second waited for the first's download


@pytest.mark.comfyui
def test_a_url_in_a_loader_input_is_fetched_and_rewritten(worker, run, server):
    data = server.add("inline.safetensors", MB)
    result = run(worker.handle(make_job(digest_workflow(f"{server.url}/files/inline.safetensors"))))
    assert "error" not in result, result
    assert result["text"][0]["data"] == hashlib.sha256(data).hexdigest()


@pytest.mark.comfyui
def test_a_failed_download_is_a_clear_error_and_a_gated_file_stays_gated(worker, run, server):
    missing = run(worker.handle(make_job(digest_workflow("x.safetensors"),
                                         models=[{"url": f"{server.url}/files/nope.safetensors", "folder": "loras",
                                                  "name": "x.safetensors"}])))
    assert missing["error"] == f"downloading {server.url}/files/nope.safetensors failed: HTTP 404"
    server.add("members.safetensors", MB)
    entry = {"url": f"{server.url}/gated/members.safetensors", "folder": "loras"}
    allowed = run(worker.handle(make_job(digest_workflow("members.safetensors"),
                                         models=[{**entry, "headers": {"Authorization": TOKEN}}])))
    assert "error" not in allowed, allowed
    refused = run(worker.handle(make_job(digest_workflow("members.safetensors"), models=[entry])))
    assert "needs credentials that this job does not have" in refused["error"]
    assert TOKEN not in str(allowed) and TOKEN not in str(refused)


def test_a_cached_file_serves_a_pinned_job_only_if_its_digest_is_the_pin(server, tmp_path):
    """Cache poisoning: the URL served other bytes when an unpinned job cached it; a job pinning the sha256 of what
    the URL serves now must not get the cached bytes."""
    first = server.add("mutable.safetensors", MB)
    cache = cache_at(tmp_path)
    url = f"{server.url}/files/mutable.safetensors"
    cache.release(cache.fetch((ModelRef(url, "loras", "m.safetensors"),), NO_CREDENTIALS, lambda u: None,
                               job_log).keys)
    server.files["mutable.safetensors"] = second = first[::-1]
    pinned = ModelRef(url, "loras", "m.safetensors", sha256=hashlib.sha256(second).hexdigest())
    with pytest.raises(InvalidInput, match=f"has sha256 {hashlib.sha256(first).hexdigest()}, not the "
                                           f"{pinned.sha256} this job pins"):
        cache.fetch((pinned,), NO_CREDENTIALS, lambda u: None, job_log)
    same = ModelRef(url, "loras", "m.safetensors", sha256=hashlib.sha256(first).hexdigest())
    again = cache.fetch((same,), NO_CREDENTIALS, lambda u: None, job_log)  # the pin the file has: served
    assert again.downloaded == () and server.gets["/files/mutable.safetensors"] == 1
    cache.release(again.keys)
    (cache.blobs / f"{same.key}.json").unlink()  # no kept digest: the file itself is hashed
    (cache.blobs / same.key).write_bytes(second)
    with pytest.raises(InvalidInput, match="this job pins"):
        cache.fetch((same,), NO_CREDENTIALS, lambda u: None, job_log)


@pytest.mark.comfyui
def test_a_pinned_job_never_runs_on_a_cached_file_with_another_digest(worker, run, server):
    first = server.add("poisoned.safetensors", MB)
    entry = {"url": f"{server.url}/files/poisoned.safetensors", "folder": "loras"}
    unpinned = run(worker.handle(make_job(digest_workflow("poisoned.safetensors"), models=[entry])))
    assert unpinned["text"][0]["data"] == hashlib.sha256(first).hexdigest()
    server.files["poisoned.safetensors"] = second = first[::-1]
    pin = hashlib.sha256(second).hexdigest()
    pinned = run(worker.handle(make_job(digest_workflow("poisoned.safetensors"), models=[{**entry, "sha256": pin}])))
    assert "this job pins" in pinned.get("error", ""), pinned


def test_no_lock_file_stays_and_an_abandoned_partial_download_is_removed(server, tmp_path):
    cache = cache_at(tmp_path)  # a download may take 60 s here
    abandoned, live = cache.blobs / "a.part-dead0000", cache.blobs / "b.part-live0000"
    abandoned.write_bytes(b"x")
    live.write_bytes(b"x")
    os.utime(abandoned, (time.time() - 61, time.time() - 61))
    server.add("locked.safetensors", MB)
    ref = ModelRef(f"{server.url}/files/locked.safetensors", "loras", "locked.safetensors")
    cache.release(cache.fetch((ref,), NO_CREDENTIALS, lambda u: None, job_log).keys)
    assert sorted(p.name for p in cache.blobs.iterdir()) == sorted([ref.key, f"{ref.key}.json", live.name])
