"""Keeps the URLs a job names (input files, model files, its own S3 endpoint) out of the worker's own network.

The check is made on the address a connection actually goes to, not on the URL's text: the connection classes
below resolve the host once (with the same `getaddrinfo` the connection would use, so decimal, octal and hex IPv4,
IPv6, IPv4-mapped IPv6, `0.0.0.0` and trailing dots all reach it already interpreted), refuse the connection if any
resolved address is loopback, private, link-local, unique-local, multicast, unspecified or otherwise not public, and
then connect to that very address. No second lookup happens, so a DNS answer that changes between the check and the
connection (DNS rebinding) cannot slip through; TLS still verifies the URL's own host name. Every redirect hop opens
its connection through the same classes, so each hop is checked too.

`requests` gets them through an HTTPAdapter (`guarded_session`), botocore through its connection pools
(`guard_boto_client`). ALLOW_PRIVATE_URLS lets chosen hosts and ranges through (`UrlGuard.parse`).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError

from comfy_worker.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NAT64 = ipaddress.ip_network("64:ff9b::/96")
UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$")


class AddressRefused(InvalidInput):
    """A connection to a host that resolves into the worker's own network, refused before it was made."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"its host {host} resolves to {address}, {reason}; the worker connects only to public "
                         f"addresses unless ALLOW_PRIVATE_URLS lets this host or range through (e.g. "
                         f"ALLOW_PRIVATE_URLS={address})")
        self.host, self.address, self.reason = host, address, reason


def address_refusal(ip: IPAddress) -> str | None:
    """Why an address is not one a job's URL may reach, or None for a public address."""
    if ip.is_unspecified:
        return "the unspecified address, which reaches this machine"
    if ip.is_loopback:
        return "a loopback address (this machine)"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            reason = address_refusal(inner)
            if reason or ip.ipv4_mapped:
                return f"{reason} inside an IPv6 address" if reason else None
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services such as 169.254.169.254 answer)"
    if ip.is_multicast:
        return "a multicast address"
    if ip in UNIQUE_LOCAL:
        return "a unique-local address (a private network)"
    if ip.is_private:
        return "a private-network address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "an address that is not on the public internet"
    return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and may be routed to: mapped, 6to4, Teredo, NAT64, compatible."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in NAT64 or int(ip) >> 32 == 0:  # 64:ff9b::a.b.c.d, or the deprecated ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class UrlGuard:
    """Which private addresses a job's URLs may reach: none by default; all, or the listed hosts and ranges."""

    allow_all: bool = False
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> UrlGuard:
        """ALLOW_PRIVATE_URLS: `1`/`true` (every address), or hosts and CIDR ranges separated by commas.
        Raises ValueError naming a bad entry."""
        text = text.strip()
        if text.lower() in ("1", "true"):
            return cls(allow_all=True)
        if text.lower() in ("", "0", "false"):
            return cls()
        hosts, networks = set(), []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = normal_host(entry)
            if not _HOST_NAME.match(name):
                raise ValueError(f"{entry!r} is neither a host name nor an address or CIDR range")
            hosts.add(name)
        return cls(hosts=frozenset(hosts), networks=tuple(networks))

    def refusal(self, host: str, ip: IPAddress) -> str | None:
        """Why a connection to `ip`, which `host` resolved to, is refused; None when it may be made."""
        reason = address_refusal(ip)
        if reason is None or self.allow_all or normal_host(host) in self.hosts:
            return None
        inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        if any(a in net for net in self.networks for a in (ip, inner) if a is not None and a.version == net.version):
            return None
        return reason

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses `host` resolves to, every one allowed (else AddressRefused); raises socket.gaierror."""
        name = host.strip("[]")
        found = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        for address in addresses:
            reason = self.refusal(name, ipaddress.ip_address(address))
            if reason:
                raise AddressRefused(host, address, reason)
        return addresses

    def check_url(self, url: str) -> None:
        """Resolves the URL's host now and raises AddressRefused if it may not be reached: an early, clear error.
        The connection itself is checked again (guarded_session, guard_boto_client)."""
        parts = urlsplit(url)
        with contextlib.suppress(socket.gaierror, UnicodeError, ValueError):  # the connection reports a bad name
            self.resolve(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))


def normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


class _GuardedConnection:
    """Mixed in before a urllib3 connection class: resolves, checks, then connects to the checked address."""

    guard: UrlGuard
    _dns_host: str
    host: str
    port: int

    def _new_conn(self) -> socket.socket:
        try:
            addresses = self.guard.resolve(self._dns_host, self.port)
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error  # type: ignore[arg-type]
        asked, last_error = self._dns_host, None
        for address in addresses:
            self._dns_host = address  # only the TCP connection uses it; TLS checks the URL's host name
            try:
                return super()._new_conn()  # type: ignore[misc]
            except NewConnectionError as error:
                last_error = error
            finally:
                self._dns_host = asked
        assert last_error is not None
        raise last_error


@functools.lru_cache(maxsize=32)
def pool_classes(guard: UrlGuard, http_pool: type = HTTPConnectionPool,
                 https_pool: type = HTTPSConnectionPool) -> dict[str, type]:
    """Subclasses of the two pool classes whose connections go through `guard`."""
    classes = {}
    for scheme, pool in (("http", http_pool), ("https", https_pool)):
        connection = type(f"Guarded{pool.ConnectionCls.__name__}", (_GuardedConnection, pool.ConnectionCls),
                          {"guard": guard})
        classes[scheme] = type(f"Guarded{pool.__name__}", (pool,), {"ConnectionCls": connection})
    return classes


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, guard: UrlGuard) -> None:
        self.guard = guard
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = pool_classes(self.guard)


def guarded_session(guard: UrlGuard) -> requests.Session:
    """A requests session whose every connection, redirects included, is checked by `guard`. Proxies from the
    environment are not used: the address checked must be the address connected to."""
    session = requests.Session()
    session.trust_env = False
    adapter = _GuardedAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def guard_boto_client(client: Any, guard: UrlGuard) -> Any:
    """Makes every connection of a boto3 client go through `guard` (a job-supplied S3 endpoint)."""
    from botocore.awsrequest import AWSHTTPConnectionPool, AWSHTTPSConnectionPool

    classes = pool_classes(guard, AWSHTTPConnectionPool, AWSHTTPSConnectionPool)
    http = client._endpoint.http_session  # botocore's URLLib3Session: its pool classes are not configurable
    http._pool_classes_by_scheme = classes
    http._manager.pool_classes_by_scheme = classes
    return client


def refused_cause(error: BaseException) -> AddressRefused | None:
    """The AddressRefused inside an exception botocore wrapped it in (HTTPClientError), if any."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, AddressRefused):
            return error
        error = getattr(error, "kwargs", {}).get("error") or error.__cause__ or error.__context__
        seen += 1
    return None
