"""Decodes a job's input files: base64, data URIs, or http(s) URLs fetched with a size and time limit.

A URL's download ends at INPUT_URL_TIMEOUT_S or at the job's deadline, whichever comes first, however slowly the
server sends: each read returns what one socket read got (so the time is checked after every few bytes, not every
64 KiB), and a server silent for READ_TIMEOUT_S is dropped."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from comfy_worker.deadline import NO_DEADLINE, Deadline
from comfy_worker.errors import InvalidInput
from comfy_worker.jobs.job_input import InputFile
from comfy_worker.redaction import redact_url
from comfy_worker.url_guard import AddressRefused, UrlGuard, guarded_session

_DATA_URI = re.compile(r"^data:[^,]*?;base64,", re.IGNORECASE)


READ_TIMEOUT_S = 10.0
CHUNK = 1 << 16


def decode_input_file(item: InputFile, *, max_bytes: int, url_timeout_s: float, url_guard: UrlGuard,
                      deadline: Deadline = NO_DEADLINE) -> bytes:
    source = item.source.strip()
    where = f"input file {item.name!r}"
    if source.lower().startswith(("http://", "https://")):
        return _fetch(source, where, max_bytes, url_timeout_s, url_guard, deadline)
    if "://" in source[:16]:
        raise InvalidInput(f"{where}: only http(s) URLs are fetched, not {source.split('://', 1)[0]}://")
    payload = _DATA_URI.sub("", source, count=1)
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise InvalidInput(f"{where} is over the {max_bytes / 1e6:g} MB limit (MAX_INPUT_FILE_MB)")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: 'image' is not valid base64, a data URI or an http(s) URL") from None
    if not data:
        raise InvalidInput(f"{where} is empty")
    return data


MAX_REDIRECTS = 5


def _fetch(url: str, where: str, max_bytes: int, timeout_s: float, url_guard: UrlGuard,
           job_deadline: Deadline) -> bytes:
    """GETs `url` within `timeout_s` in all (and the job's deadline) and `max_bytes`; each redirect is followed
    only to another http(s) URL. Every hop connects only to an address `url_guard` allows."""
    own = Deadline.after(timeout_s)
    limit = own if own.at <= job_deadline.at else job_deadline
    why = (f"took over {timeout_s:g} s to download (INPUT_URL_TIMEOUT_S)" if limit is own
           else f"was still downloading when the job's timeout of {job_deadline.timeout_s:g} s ran out")
    with guarded_session(url_guard) as session:
        try:
            for _ in range(MAX_REDIRECTS + 1):
                if limit.expired():
                    raise InvalidInput(f"{where}: {redact_url(url)} {why}")
                wait = limit.bound(READ_TIMEOUT_S, floor=0.1)
                with session.get(url, stream=True, timeout=(wait, wait), allow_redirects=False) as response:
                    if response.is_redirect:
                        target = urljoin(url, response.headers.get("location", ""))
                        if urlsplit(target).scheme.lower() not in ("http", "https"):
                            raise InvalidInput(f"{where}: {redact_url(url)} redirects to {target.split(':', 1)[0]}:, "
                                               "which is not fetched: only http(s) URLs are")
                        url = target
                        continue
                    if response.status_code != 200:
                        raise InvalidInput(f"{where}: fetching {redact_url(url)} answered HTTP {response.status_code}")
                    return _read_body(response, redact_url(url), where, max_bytes, limit, why)
        except AddressRefused as error:
            raise InvalidInput(f"{where}: {redact_url(url)} was refused: {error}") from None
        except requests.RequestException as error:
            if limit.expired():
                raise InvalidInput(f"{where}: {redact_url(url)} {why}") from None
            raise InvalidInput(f"{where}: could not fetch {redact_url(url)}: {type(error).__name__}") from None
    raise InvalidInput(f"{where}: {redact_url(url)} redirects more than {MAX_REDIRECTS} times")


def _read_body(response: requests.Response, url: str, where: str, max_bytes: int, limit: Deadline,
               why: str) -> bytes:
    chunks, size = [], 0
    try:
        while chunk := response.raw.read1(CHUNK, decode_content=True):
            size += len(chunk)
            if size > max_bytes:
                raise InvalidInput(f"{where}: {url} is over the {max_bytes / 1e6:g} MB limit (MAX_INPUT_FILE_MB)")
            if limit.expired():
                raise InvalidInput(f"{where}: {url} {why}")
            chunks.append(chunk)
    except (OSError, urllib3.exceptions.HTTPError) as error:
        if limit.expired():
            raise InvalidInput(f"{where}: {url} {why}") from None
        raise InvalidInput(f"{where}: could not fetch {url}: {type(error).__name__}") from None
    if not size:
        raise InvalidInput(f"{where}: {url} returned no data")
    return b"".join(chunks)
