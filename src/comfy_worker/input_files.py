"""Decodes a job's input files: base64, data URIs, or http(s) URLs fetched with a size and time limit."""

from __future__ import annotations

import base64
import binascii
import re
import time
from urllib.parse import urljoin, urlsplit

import requests

from .errors import InvalidInput
from .job_input import InputFile
from .redaction import redact_url
from .url_guard import AddressRefused, UrlGuard, guarded_session

_DATA_URI = re.compile(r"^data:[^,]*?;base64,", re.IGNORECASE)


def decode_input_file(item: InputFile, *, max_bytes: int, url_timeout_s: float, url_guard: UrlGuard) -> bytes:
    source = item.source.strip()
    where = f"input file {item.name!r}"
    if source.lower().startswith(("http://", "https://")):
        return _fetch(source, where, max_bytes, url_timeout_s, url_guard)
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


def _fetch(url: str, where: str, max_bytes: int, timeout_s: float, url_guard: UrlGuard) -> bytes:
    """GETs `url` within `timeout_s` in all and `max_bytes`; each redirect is followed only to another http(s) URL.
    Every hop connects only to an address `url_guard` allows."""
    deadline = time.monotonic() + timeout_s
    with guarded_session(url_guard) as session:
        try:
            for _ in range(MAX_REDIRECTS + 1):
                with session.get(url, stream=True, timeout=timeout_s, allow_redirects=False) as response:
                    if response.is_redirect:
                        target = urljoin(url, response.headers.get("location", ""))
                        if urlsplit(target).scheme.lower() not in ("http", "https"):
                            raise InvalidInput(f"{where}: {redact_url(url)} redirects to {target.split(':', 1)[0]}:, "
                                               "which is not fetched: only http(s) URLs are")
                        url = target
                        continue
                    if response.status_code != 200:
                        raise InvalidInput(f"{where}: fetching {redact_url(url)} answered HTTP {response.status_code}")
                    return _read_body(response, redact_url(url), where, max_bytes, deadline, timeout_s)
        except AddressRefused as error:
            raise InvalidInput(f"{where}: {redact_url(url)} was refused: {error}") from None
        except requests.RequestException as error:
            raise InvalidInput(f"{where}: could not fetch {redact_url(url)}: {type(error).__name__}") from None
    raise InvalidInput(f"{where}: {redact_url(url)} redirects more than {MAX_REDIRECTS} times")


def _read_body(response: requests.Response, url: str, where: str, max_bytes: int, deadline: float,
               timeout_s: float) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=1 << 16):
        size += len(chunk)
        if size > max_bytes:
            raise InvalidInput(f"{where}: {url} is over the {max_bytes / 1e6:g} MB limit (MAX_INPUT_FILE_MB)")
        if time.monotonic() > deadline:
            raise InvalidInput(f"{where}: {url} took over {timeout_s:g} s to download (INPUT_URL_TIMEOUT_S)")
        chunks.append(chunk)
    if not size:
        raise InvalidInput(f"{where}: {url} returned no data")
    return b"".join(chunks)
