"""The URL guard and the redaction of URL credentials, without ComfyUI. Private and metadata addresses are checked
with the decision function only: no test here sends a packet anywhere but 127.0.0.1."""

from __future__ import annotations

import http.server
import ipaddress
import threading

import boto3
import pytest
import requests

from comfy_worker.errors import DeliveryFailed, InvalidInput
from comfy_worker.jobs.input_files import decode_input_file
from comfy_worker.jobs.job_input import InputFile
from comfy_worker.redaction import redact_text, redact_url
from comfy_worker.s3 import upload
from comfy_worker.settings import S3Config, SettingsError, load_settings
from comfy_worker.url_guard import AddressRefused, UrlGuard, address_refusal, guarded_session

REFUSED = {
    "10.0.0.1": "private", "172.16.5.4": "private", "192.168.1.1": "private", "100.64.0.1": "not on the public",
    "169.254.169.254": "link-local", "fe80::1": "link-local", "fd00::1": "unique-local", "fc00::5": "unique-local",
    "224.0.0.1": "multicast", "ff02::1": "multicast", "0.0.0.0": "unspecified", "::": "unspecified",
    "127.0.0.1": "loopback", "127.8.9.10": "loopback", "::1": "loopback",
    "::ffff:10.0.0.1": "private", "::ffff:169.254.169.254": "link-local", "::ffff:127.0.0.1": "loopback",
    "2002:a9fe:a9fe::": "link-local",  # 6to4 of 169.254.169.254
    "64:ff9b::a9fe:a9fe": "link-local",  # NAT64 of 169.254.169.254
    "::7f00:1": "loopback",  # the deprecated IPv4-compatible form of 127.0.0.1
    "240.0.0.1": "private", "255.255.255.255": "private", "198.18.0.1": "private",
}
PUBLIC = ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::")


@pytest.mark.parametrize("address", sorted(REFUSED))
def test_private_addresses_are_refused_by_default(address):
    reason = UrlGuard().refusal("example.com", ipaddress.ip_address(address))
    assert reason is not None and REFUSED[address] in reason, reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address):
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("host", ["2130706433", "0x0a000001", "012.0.0.1", "10.1", "0xa9.0xfe.0xa9.0xfe",
                                  "0251.0376.0251.0376", "2852039166", "[::ffff:a9fe:a9fe]", "[fd00::1]", "0"])
def test_every_numeric_form_is_read_as_the_connection_would_read_it(host):
    """getaddrinfo reads these without any lookup or packet; the check sees the address it yields."""
    with pytest.raises(AddressRefused):
        UrlGuard().resolve(host, 80)


def test_the_allowance_lets_listed_hosts_and_ranges_through():
    guard = UrlGuard.parse(" minio.internal. , 10.0.0.0/8,fd00::/8 ")
    assert guard.refusal("minio.internal", ipaddress.ip_address("192.168.3.4")) is None
    assert guard.refusal("MINIO.INTERNAL.", ipaddress.ip_address("192.168.3.4")) is None
    assert guard.refusal("other", ipaddress.ip_address("10.9.8.7")) is None
    assert guard.refusal("other", ipaddress.ip_address("::ffff:10.9.8.7")) is None  # the mapped form too
    assert guard.refusal("other", ipaddress.ip_address("fd12::1")) is None
    assert "link-local" in guard.refusal("other", ipaddress.ip_address("169.254.169.254"))
    assert "private" in guard.refusal("other", ipaddress.ip_address("192.168.3.4"))
    everything = UrlGuard.parse("TRUE")
    assert everything.refusal("x", ipaddress.ip_address("169.254.169.254")) is None
    assert UrlGuard.parse("") == UrlGuard.parse("0") == UrlGuard()


def test_the_setting_is_read_and_a_bad_entry_named():
    assert load_settings({}).url_guard == UrlGuard()
    assert load_settings({"ALLOW_PRIVATE_URLS": "1"}).url_guard.allow_all
    with pytest.raises(SettingsError, match="ALLOW_PRIVATE_URLS: 'not a host!' is neither"):
        load_settings({"ALLOW_PRIVATE_URLS": "10.0.0.0/8, not a host!"})


# --- end to end against 127.0.0.1 only --------------------------------------------------------------------------
@pytest.fixture
def loopback_server():
    """Serves `ok` at /ok, redirects /to?<url> to <url>; counts the requests that reached it."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            if self.path.startswith("/to?"):
                self.send_response(302)
                self.send_header("Location", self.path[4:])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], hits
    server.shutdown()


def fetch(url: str, guard: UrlGuard) -> bytes:
    return decode_input_file(InputFile("in.png", url), max_bytes=1000, url_timeout_s=5, url_guard=guard)


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1", "localhost",
                                  "localhost.", "127.0.0.1.", "[::ffff:127.0.0.1]", "0.0.0.0", "0", "[::1]"])
def test_a_loopback_url_in_any_form_is_refused_by_default_and_nothing_is_sent(loopback_server, host):
    port, hits = loopback_server
    with pytest.raises(InvalidInput) as refused:
        fetch(f"http://user:pw@{host}:{port}/ok?token=abc", UrlGuard())
    assert hits == []
    message = str(refused.value)
    assert "pw" not in message and "abc" not in message
    if "could not fetch" not in message:  # a trailing dot may not resolve at all here: then nothing is fetched
        assert "was refused" in message and "ALLOW_PRIVATE_URLS" in message, message


def test_a_loopback_url_is_fetched_when_allowed(loopback_server):
    port, hits = loopback_server
    assert fetch(f"http://127.0.0.1:{port}/ok", UrlGuard.parse("127.0.0.0/8")) == b"ok"
    assert fetch(f"http://localhost:{port}/ok", UrlGuard.parse("localhost")) == b"ok"
    assert fetch(f"http://0x7f.1:{port}/ok", UrlGuard.parse("1")) == b"ok"
    assert len(hits) == 3


def test_every_redirect_hop_is_checked(loopback_server):
    """The first hop's host is allowed by name; its redirect to 127.0.0.1 itself is not, and is never fetched."""
    port, hits = loopback_server
    guard = UrlGuard.parse("localhost")
    with pytest.raises(InvalidInput, match=r"http://127\.0\.0\.1:\d+/ok was refused: .* loopback"):
        fetch(f"http://localhost:{port}/to?http://127.0.0.1:{port}/ok", guard)
    assert hits == [f"/to?http://127.0.0.1:{port}/ok"]
    with guarded_session(guard) as session, pytest.raises(AddressRefused):  # requests' own redirects too
        session.get(f"http://localhost:{port}/to?http://127.0.0.1:{port}/ok", timeout=5)
    assert len(hits) == 2


def test_a_jobs_s3_endpoint_is_checked_on_connect(s3_server):
    """The connection check itself, under the early check in the job runner: botocore's pools go through the guard."""
    config = S3Config(s3_server, "key-id", "secret", "guarded", region="us-east-1", guard=UrlGuard())
    with pytest.raises(DeliveryFailed, match=r"at http://127\.0\.0\.1:\d+ was refused: .* loopback"):
        upload(config, "a.png", b"x", "image/png")
    allowed = S3Config(s3_server, "key-id", "secret", "guarded", region="us-east-1",
                       guard=UrlGuard.parse("127.0.0.1"))
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="key-id", aws_secret_access_key="secret",
                 region_name="us-east-1").create_bucket(Bucket="guarded")
    assert requests.get(upload(allowed, "a.png", b"x", "image/png"), timeout=10).content == b"x"


# --- redaction ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:pa@ss@host/a.png", "https://REDACTED@host/a.png"),
    ("https://b.s3.amazonaws.com/k.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F1&X-Amz-Date=1"
     "&X-Amz-Signature=deadbeef&X-Amz-Security-Token=tok",
     "https://b.s3.amazonaws.com/k.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Date=1"
     "&X-Amz-Signature=REDACTED&X-Amz-Security-Token=REDACTED"),
    ("https://a.blob.core.windows.net/c/m.safetensors?sv=2022&sig=abc%3D&se=2030",
     "https://a.blob.core.windows.net/c/m.safetensors?sv=2022&sig=REDACTED&se=2030"),
    ("https://h/m?download=true&token=t1&access_token=t2&key=k&api_key=k2#access_token=t3",
     "https://h/m?download=true&token=REDACTED&access_token=REDACTED&key=REDACTED&api_key=REDACTED"
     "#access_token=REDACTED"),
    ("https://h/plain/m.safetensors", "https://h/plain/m.safetensors"),
])
def test_credentials_in_urls_are_redacted(url, shown):
    assert redact_url(url) == shown
    assert redact_text(f"fetching {url} failed\n  at {url}") == f"fetching {shown} failed\n  at {shown}"
