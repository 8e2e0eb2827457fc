"""Unit tests: job input validation and input-file decoding."""

from __future__ import annotations

import base64

import pytest
from conftest import trickling_server as trickle_at

from comfy_worker.errors import InvalidInput
from comfy_worker.jobs.input_files import decode_input_file
from comfy_worker.jobs.job_input import InputFile, parse_job_input
from comfy_worker.url_guard import UrlGuard

NODE = {"1": {"class_type": "EmptyImage", "inputs": {}}}


def error_of(raw) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_job_input(raw)
    return str(caught.value)


def test_a_worker_comfyui_request_parses():
    request = parse_job_input({"workflow": NODE, "images": [{"name": "a.png", "image": "aGk="}],
                               "comfy_org_api_key": "k"})
    assert request.files == (InputFile("a.png", "aGk="),)
    assert request.comfy_org_api_key == "k" and request.gpu is None and not request.ignored_fields


@pytest.mark.parametrize(("raw", "expected"), [
    ("text", "must be a JSON object"),
    ({}, "no 'workflow'"),
    ({"workflow": []}, "'workflow' must be a JSON object"),
    ({"workflow": {}}, "'workflow' is empty"),
    ({"workflow": {"nodes": [], "links": []}}, "Export (API)"),
    ({"workflow": {"1": {"inputs": {}}}}, "has no 'class_type'"),
    ({"workflow": {"1": 5}}, "must be an object"),
    ({"workflow": {"1": {"class_type": "X", "inputs": []}}}, "'inputs' must be an object"),
    ({"workflow": NODE, "images": {}}, "'images' must be a list"),
    ({"workflow": NODE, "images": [{"name": "../x.png", "image": "aGk="}]}, "plain file name"),
    ({"workflow": NODE, "images": [{"name": "/etc/passwd", "image": "aGk="}]}, "plain file name"),
    ({"workflow": NODE, "images": [{"name": "a.png"}]}, "'image' must be base64"),
    ({"workflow": NODE, "images": [{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]}, "used twice"),
    ({"workflow": NODE, "gpu": -1}, "'gpu' must be a whole number"),
    ({"workflow": NODE, "gpu": True}, "'gpu' must be a whole number"),
    ({"workflow": NODE, "timeout_s": 0}, "'timeout_s' must be a positive number"),
    ({"workflow": NODE, "output_mode": "ftp"}, "'output_mode' must be one of"),
    ({"workflow": NODE, "s3": {"endpoint_url": "http://x"}}, "'s3' lacks access_key_id, secret_access_key"),
    ({"workflow": NODE, "include_previews": "yes"}, "'include_previews' must be true or false"),
])
def test_bad_input_gets_an_error_saying_what_to_fix(raw, expected):
    assert expected in error_of(raw)


def test_unknown_fields_are_reported_not_fatal():
    assert parse_job_input({"workflow": NODE, "colour": 1}).ignored_fields == ("colour",)


def test_per_request_s3_takes_the_bucket_from_a_virtual_host_endpoint():
    request = parse_job_input({"workflow": NODE, "s3": {
        "endpoint_url": "https://my-bucket.s3.eu-west-1.amazonaws.com", "access_key_id": "a",
        "secret_access_key": "b"}})
    assert request.s3.bucket == "my-bucket" and request.s3.endpoint_url == "https://s3.eu-west-1.amazonaws.com"


LOOPBACK = UrlGuard.parse("127.0.0.1")  # the test servers' address, let through as ALLOW_PRIVATE_URLS would


def decode(source: str, max_bytes: int = 1000) -> bytes:
    return decode_input_file(InputFile("f.png", source), max_bytes=max_bytes, url_timeout_s=5, url_guard=LOOPBACK)


def test_base64_and_data_uris_decode():
    payload = base64.b64encode(b"\x89PNG data").decode()
    assert decode(payload) == b"\x89PNG data"
    assert decode("data:image/png;base64," + payload) == b"\x89PNG data"


@pytest.mark.parametrize(("source", "expected"), [
    ("not base64!!", "not valid base64"),
    ("ftp://host/file.png", "only http(s) URLs"),
    ("file:///etc/passwd", "only http(s) URLs"),
    (base64.b64encode(b"x" * 2000).decode(), "over the 0.001 MB limit"),
])
def test_undecodable_inputs_are_refused(source, expected):
    with pytest.raises(InvalidInput, match=r"f\.png") as caught:
        decode(source)
    assert expected in str(caught.value)


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path."""
    import functools
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # /redirect?to=URL answers 302 to URL; the rest is served from tmp_path
            if self.path.startswith("/redirect?to="):
                self.send_response(302)
                self.send_header("Location", self.path.split("=", 1)[1])
                self.end_headers()
                return
            super().do_GET()

    handler = functools.partial(Handler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_http_input_is_fetched_within_its_size_limit(http_server):
    folder, url = http_server
    (folder / "small.png").write_bytes(b"\x89PNG" + b"x" * 100)
    (folder / "big.png").write_bytes(b"x" * 5000)
    assert decode(f"{url}/small.png") == b"\x89PNG" + b"x" * 100
    with pytest.raises(InvalidInput, match=r"over the 0\.001 MB limit"):
        decode(f"{url}/big.png")
    with pytest.raises(InvalidInput, match="answered HTTP 404"):
        decode(f"{url}/missing.png")


def test_a_redirect_is_followed_only_to_another_http_url(http_server):
    folder, url = http_server
    (folder / "small.png").write_bytes(b"\x89PNG" + b"x" * 100)
    assert decode(f"{url}/redirect?to=/small.png") == b"\x89PNG" + b"x" * 100
    for target in ("file:///etc/passwd", "ftp://127.0.0.1/x.png", "gopher://127.0.0.1/x"):
        with pytest.raises(InvalidInput, match="which is not fetched: only http"):
            decode(f"{url}/redirect?to={target}")
    with pytest.raises(InvalidInput, match="redirects more than 5 times"):
        decode(f"{url}/redirect?to=/redirect?to=/redirect?to=/redirect?to=/redirect?to=/redirect?to=/small.png")


def test_image_format_and_quality_are_checked():
    from comfy_worker.jobs.job_input import parse_job_input

    workflow = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    default = parse_job_input({"workflow": workflow})
    assert (default.image_format, default.image_quality) == ("png", 90)
    chosen = parse_job_input({"workflow": workflow, "image_format": "JPG", "image_quality": 55})
    assert (chosen.image_format, chosen.image_quality) == ("jpeg", 55)
    with pytest.raises(InvalidInput, match="'image_format' must be one of png, webp, jpeg, not 'gif'"):
        parse_job_input({"workflow": workflow, "image_format": "gif"})
    with pytest.raises(InvalidInput, match="'image_quality' must be a whole number from 1 to 100, not 0"):
        parse_job_input({"workflow": workflow, "image_format": "webp", "image_quality": 0})


@pytest.fixture
def trickling_server():
    """400 bytes announced, one sent every 0.1 s (conftest.trickling_server)."""
    with trickle_at(400, "/slow.png") as url:
        yield url


def test_a_trickling_url_is_cut_at_its_time_limit(trickling_server):
    import time

    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"took over 1 s to download \(INPUT_URL_TIMEOUT_S\)"):
        decode_input_file(InputFile("f.png", trickling_server), max_bytes=10_000, url_timeout_s=1, url_guard=LOOPBACK)
    assert time.monotonic() - started < 10  # uncut, the server trickles for 40 s; generous for a loaded machine


def test_a_trickling_url_is_cut_at_the_jobs_deadline(trickling_server):
    import time

    from comfy_worker.deadline import Deadline

    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"still downloading when the job's timeout of 1\.5 s ran out"):
        decode_input_file(InputFile("f.png", trickling_server), max_bytes=10_000, url_timeout_s=30, url_guard=LOOPBACK,
                          deadline=Deadline.after(1.5))
    assert time.monotonic() - started < 10  # uncut, the server trickles for 40 s; generous for a loaded machine
