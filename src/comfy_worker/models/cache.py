"""The shared cache of model files fetched by URL, used by every instance of the worker.

    <MODEL_CACHE_DIR>/blobs/<hash of the URL>          the file, complete and checked (downloads land as .part)
    <MODEL_CACHE_DIR>/blobs/<hash>.json                where it came from; whether credentials were needed
    <MODEL_CACHE_DIR>/models/<folder>/<name>           a link to the blob, where ComfyUI looks (extra_model_paths)

One download per URL: jobs asking for a URL that is being fetched wait for that download (in this process) or for
its file lock (another worker on the same network volume). Least recently used blobs are evicted past
MODEL_CACHE_MAX_GB, never one a running job of this worker uses. A file fetched with credentials is served to a
later job only after that job's own credentials are checked against the source."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3
import yaml

from comfy_worker.deadline import NO_DEADLINE, Deadline
from comfy_worker.errors import InvalidInput, ModelDownloadFailed, WorkerError
from comfy_worker.models.sources import Credentials, chunks, file_sha256, http_request, read1_chunks, s3_object
from comfy_worker.models.urls import MODEL_FOLDERS, ModelRef
from comfy_worker.url_guard import AddressRefused, UrlGuard, guarded_session

log = logging.getLogger("comfy_worker.models")

READ_TIMEOUT_S = 120.0
LOCK_POLL_S = 0.2
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Fetched:
    """What a job holds while it runs: the blobs it uses, and what fetching them cost."""

    keys: tuple[str, ...]
    download_ms: float
    downloaded: tuple[str, ...]  # URLs (without query) this job downloaded itself; the rest came from the cache


@dataclass(frozen=True)
class Limits:
    """When a job's fetch must end: its deadline, and `stop`, set when the job is cancelled or gave up."""

    deadline: Deadline = NO_DEADLINE
    stop: threading.Event | None = None

    def check(self, phase: str) -> None:
        if self.stop is not None and self.stop.is_set():
            raise ModelDownloadFailed(f"{phase} was abandoned: the job was cancelled or ran out of time")
        self.deadline.check(phase)


class ModelCache:
    def __init__(self, root: Path, max_bytes: int, max_file_bytes: int, timeout_s: float,
                 url_guard: UrlGuard) -> None:
        self.root = root
        self.url_guard = url_guard  # http(s) model URLs and their redirects reach only the addresses it allows
        self.blobs = root / "blobs"
        self.models = root / "models"
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self.timeout_s = timeout_s
        self.downloads = 0  # files actually downloaded by this process
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[None]] = {}
        self._in_use: Counter[str] = Counter()
        self.blobs.mkdir(parents=True, exist_ok=True)
        for folder in MODEL_FOLDERS:
            (self.models / folder).mkdir(parents=True, exist_ok=True)
        self._remove_stale_parts()

    def write_extra_model_paths(self, path: Path) -> Path:
        """An extra_model_paths.yaml that shows the cached files to ComfyUI."""
        section = {"base_path": str(self.models.resolve()), **{folder: folder for folder in MODEL_FOLDERS}}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"comfy_worker_model_cache": section}, sort_keys=False))
        return path

    # --- a job's models --------------------------------------------------------------------------------------------
    def fetch(self, refs: tuple[ModelRef, ...], credentials: Credentials, progress: Progress,
              job_log: logging.LoggerAdapter, limits: Limits = Limits()) -> Fetched:
        """Makes every model of a job available under its folder and name; blocking. The caller must `release` the
        keys of what it returns; on any failure nothing stays held."""
        started = time.monotonic()
        held: list[str] = []
        downloaded = []
        try:
            for ref in refs:
                with self._lock:
                    self._in_use[ref.key] += 1
                held.append(ref.key)
                if self._obtain(ref, credentials, progress, job_log, limits):
                    downloaded.append(ref.shown_url)
                self._link(ref)
        except BaseException:
            self.release(tuple(held))
            raise
        self._evict()
        self._remove_stale_parts()
        return Fetched(tuple(held), round((time.monotonic() - started) * 1000, 1), tuple(downloaded))

    def release(self, keys: tuple[str, ...]) -> None:
        with self._lock:
            for key in keys:
                self._in_use[key] -= 1
                if self._in_use[key] <= 0:
                    del self._in_use[key]

    # --- one file --------------------------------------------------------------------------------------------------
    def _obtain(self, ref: ModelRef, credentials: Credentials, progress: Progress,
                job_log: logging.LoggerAdapter, limits: Limits) -> bool:
        """The blob of `ref`, downloaded by this call (True) or found or awaited (False)."""
        blob = self.blobs / ref.key
        with self._lock:
            pending = self._inflight.get(ref.key)
            owner = pending is None and not blob.exists()
            if owner:
                pending = self._inflight[ref.key] = Future()
        if owner:
            assert pending is not None
            try:
                downloaded = self._download_locked(ref, credentials, progress, job_log, limits)
                pending.set_result(None)
            except BaseException as error:
                pending.set_exception(error)
                raise
            finally:
                with self._lock:
                    self._inflight.pop(ref.key, None)
            if downloaded:
                return True
        elif pending is not None:
            job_log.info("waiting for %s, which another job is downloading", ref.shown_url)
            self._await_other_download(pending, ref, limits)
            if not blob.exists():
                return self._obtain(ref, credentials, progress, job_log, limits)
        self._check_access(ref, credentials, job_log)
        self._check_pin(ref, blob)
        os.utime(blob)  # least recently used is by modification time, shared with other workers on the volume
        return False

    @staticmethod
    def _await_other_download(pending: Future[None], ref: ModelRef, limits: Limits) -> None:
        """Waits for this process's download of `ref` by another job, within this job's limits."""
        phase = f"waiting for another job's download of {ref.shown_url}"
        while True:
            limits.check(phase)
            try:
                pending.result(timeout=limits.deadline.bound(1.0, floor=0.01))
                return
            except TimeoutError:
                continue
            except WorkerError:  # that job's download failed or was abandoned: try it with our own credentials
                return

    def _download_locked(self, ref: ModelRef, credentials: Credentials, progress: Progress,
                         job_log: logging.LoggerAdapter, limits: Limits) -> bool:
        """Downloads under a file lock, so that workers sharing the volume fetch a URL once. False when another
        process finished it while this one waited for the lock."""
        blob = self.blobs / ref.key
        with self._file_lock(ref.key, ref, limits):
            if blob.exists():
                return False
            job_log.info("downloading %s into the model cache", ref.shown_url)
            started = time.monotonic()
            size = self._download(ref, credentials, blob, progress, limits)
            seconds = time.monotonic() - started
            job_log.info("downloaded %s: %.1f MB in %.1f s", ref.shown_url, size / 1e6, seconds)
            with self._lock:
                self.downloads += 1
            return True

    @contextlib.contextmanager
    def _file_lock(self, key: str, ref: ModelRef, limits: Limits) -> Iterator[None]:
        """An exclusive flock on blobs/<key>.lock, whose holder removes the file before it lets go, so lock files
        never pile up. A waiter that got the lock of a file already removed locks the new one instead. Polled, not
        blocking: the job's deadline and its cancel hold while another worker downloads."""
        path = self.blobs / f"{key}.lock"
        while True:
            lock = open(path, "a")  # noqa: SIM115 - held across the yield
            try:
                while True:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        limits.check(f"waiting for the model cache lock of {ref.shown_url} (another worker on the "
                                     "volume is downloading it)")
                        time.sleep(LOCK_POLL_S)
            except BaseException:
                lock.close()
                raise
            try:
                if os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            lock.close()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            lock.close()  # releases the flock

    def _download(self, ref: ModelRef, credentials: Credentials, blob: Path, progress: Progress,
                  limits: Limits) -> int:
        part = blob.with_name(f"{blob.name}.part-{uuid.uuid4().hex[:8]}")
        digest = hashlib.sha256()
        written = 0
        deadline = time.monotonic() + self.timeout_s
        read_timeout = limits.deadline.bound(READ_TIMEOUT_S)
        try:
            with self._open_source(ref, credentials, read_timeout) as (stream, total, gated), open(part, "wb") as out:
                if total is not None and total > self.max_file_bytes:
                    raise self._too_large(ref, total)
                for chunk in stream:
                    written += len(chunk)
                    if written > self.max_file_bytes:
                        raise self._too_large(ref, written)
                    if time.monotonic() > deadline:
                        raise ModelDownloadFailed(f"downloading {ref.shown_url} took over {self.timeout_s:g} s "
                                                  "(MODEL_DOWNLOAD_TIMEOUT_S)")
                    limits.check(f"downloading {ref.shown_url} ({written} bytes so far)")
                    digest.update(chunk)
                    out.write(chunk)
                    progress({"download": ref.shown_url, "bytes": written, "total": total})
            if total is not None and written != total:
                raise ModelDownloadFailed(f"downloading {ref.shown_url} stopped at {written} of {total} bytes")
            if not written:
                raise ModelDownloadFailed(f"downloading {ref.shown_url} gave an empty file")
            if ref.sha256 and digest.hexdigest() != ref.sha256:
                raise ModelDownloadFailed(f"{ref.shown_url} has sha256 {digest.hexdigest()}, not the {ref.sha256} "
                                          "the job asked for; the file was not kept")
            meta = {"url": ref.shown_url, "bytes": written, "sha256": digest.hexdigest(), "gated": gated,
                    "fetched": time.time()}
            blob.with_name(f"{blob.name}.json").write_text(json.dumps(meta))
            os.replace(part, blob)  # complete and checked: only now under its final name
            return written
        except AddressRefused as error:
            raise InvalidInput(f"downloading {ref.shown_url} was refused: {error}") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            limits.check(f"downloading {ref.shown_url} ({written} bytes so far)")
            raise ModelDownloadFailed(f"downloading {ref.shown_url} failed: {type(error).__name__}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    def _too_large(self, ref: ModelRef, size: int) -> ModelDownloadFailed:
        return ModelDownloadFailed(f"{ref.shown_url} is {size / 1e9:.2f} GB or more, over the "
                                   f"{self.max_file_bytes / 1e9:g} GB limit (MODEL_MAX_FILE_GB)")

    @contextlib.contextmanager
    def _open_source(self, ref: ModelRef, credentials: Credentials, read_timeout: float
                     ) -> Iterator[tuple[Any, int | None, bool]]:
        """(chunks, size if known, whether credentials were needed) of the URL."""
        scheme = ref.url.split("://", 1)[0].lower()
        if scheme == "s3":
            body, size = s3_object(ref, credentials.s3)
            with contextlib.closing(body):
                yield chunks(body), size, True
            return
        url, headers = http_request(ref, credentials)
        with guarded_session(self.url_guard) as session, \
                session.get(url, headers=headers, stream=True,
                            timeout=(min(15, read_timeout), read_timeout)) as response:
            if response.status_code != 200:
                raise ModelDownloadFailed(f"downloading {ref.shown_url} failed: HTTP {response.status_code}")
            length = response.headers.get("content-length")
            yield read1_chunks(response), int(length) if length and length.isdigit() else None, bool(headers)

    def _check_access(self, ref: ModelRef, credentials: Credentials, job_log: logging.LoggerAdapter) -> None:
        """A cached file that needed credentials goes only to a job whose own credentials reach its source."""
        meta_path = self.blobs / f"{ref.key}.json"
        try:
            gated = json.loads(meta_path.read_text()).get("gated", True)
        except (OSError, ValueError):
            gated = True
        if not gated:
            return
        try:
            if ref.url.split("://", 1)[0].lower() == "s3":
                s3_object(ref, credentials.s3, head_only=True)
                return
            url, headers = http_request(ref, credentials)
            with guarded_session(self.url_guard) as session:
                answer = session.get(url, headers={**headers, "Range": "bytes=0-0"}, stream=True, timeout=30)
                answer.close()
            if answer.status_code in (200, 206):
                return
            status = f"HTTP {answer.status_code}"
        except AddressRefused as error:
            raise InvalidInput(f"{ref.shown_url} was refused: {error}") from None
        except ModelDownloadFailed as error:
            status = str(error)
        except requests.RequestException as error:
            status = type(error).__name__
        job_log.warning("refused the cached %s: this job's credentials do not reach it (%s)", ref.shown_url, status)
        raise InvalidInput(f"{ref.shown_url} needs credentials that this job does not have ({status}): give them in "
                           "its 'models' entry ('headers') or in 's3'")

    def _check_pin(self, ref: ModelRef, blob: Path) -> None:
        """A cached file serves a job that pins its sha256 only if its digest, kept when it was downloaded and
        checked, is that one. The file is never replaced under jobs that may use it: the job is refused."""
        if not ref.sha256:
            return
        try:
            meta = json.loads((self.blobs / f"{ref.key}.json").read_text())
        except (OSError, ValueError):
            meta = {}
        digest = meta.get("sha256") if meta.get("bytes") == blob.stat().st_size else None
        if digest is None:  # no kept digest, or one for another size: hash the file itself
            digest = file_sha256(blob)
        if digest != ref.sha256:
            raise InvalidInput(
                f"the cached copy of {ref.shown_url} has sha256 {digest}, not the {ref.sha256} this job pins: the URL "
                "served other content when it was cached. It was not used; to fetch the URL again as a new file, "
                "make the URL differ (e.g. add '?sha256=<the pin>')")

    # --- where ComfyUI finds it ------------------------------------------------------------------------------------
    def _link(self, ref: ModelRef) -> None:
        link = self.models / ref.folder / ref.name
        target = (self.blobs / ref.key).resolve()
        with self._lock:
            current = Path(os.readlink(link)) if link.is_symlink() else None
            if current == target:
                return
            if current is not None and self._in_use.get(current.name):
                raise InvalidInput(f"'{ref.folder}/{ref.name}' is in use by a running job with another URL: "
                                   "give this model another 'name'")
            temporary = link.with_name(f".{ref.name}.{uuid.uuid4().hex[:8]}")
            temporary.symlink_to(target)
            os.replace(temporary, link)

    # --- size ------------------------------------------------------------------------------------------------------
    def _remove_stale_parts(self) -> None:
        """Partial downloads of a process that died: a part unwritten for longer than a whole download may take."""
        now = time.time()
        for part in self.blobs.glob("*.part-*"):
            with contextlib.suppress(FileNotFoundError):
                if now - part.stat().st_mtime > self.timeout_s:
                    part.unlink()
                    log.info("model cache: removed %s, a partial download abandoned", part.name)

    def _evict(self) -> None:
        """Removes the least recently used blobs (and their links) not in use, until the cache fits its limit."""
        with self._lock:
            blobs = [p for p in self.blobs.iterdir() if p.is_file() and "." not in p.name]
            total = sum(p.stat().st_size for p in blobs)
            if total <= self.max_bytes:
                return
            links = [p for p in self.models.rglob("*") if p.is_symlink()]
            for blob in sorted(blobs, key=lambda p: p.stat().st_mtime):
                if total <= self.max_bytes:
                    break
                if self._in_use.get(blob.name) or blob.name in self._inflight:
                    continue
                size = blob.stat().st_size
                for link in links:
                    if Path(os.readlink(link)).name == blob.name:
                        link.unlink(missing_ok=True)
                blob.unlink(missing_ok=True)
                blob.with_name(f"{blob.name}.json").unlink(missing_ok=True)
                total -= size
                log.info("model cache: evicted %s (%.1f MB) to stay under %.1f GB", blob.name, size / 1e6,
                         self.max_bytes / 1e9)
            if total > self.max_bytes:
                log.warning("model cache holds %.1f GB, over its %.1f GB limit: the rest is in use",
                            total / 1e9, self.max_bytes / 1e9)
