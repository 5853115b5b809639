"""Fetch `image_url` without letting it be turned against the host (SSRF).

Each hop's host is resolved once; every address it resolves to must be public, and the
connection then goes to that checked address (TLS still verifies the name), so a DNS
answer cannot change between check and use. Redirects are followed by hand, each hop
checked again; the body is streamed under a byte cap, as sent: an encoded body
(`Content-Encoding`) is refused, never inflated, so a few hundred bytes of gzip or brotli
cannot become gigabytes in this process (nothing fetched here needs one: images, videos
and masks are compressed already). One deadline covers every byte of
a fetch (connecting, TLS, headers, redirects, body: pipelines/deadline.py), so a server
that drips its answer cannot hold a request past it.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Callable
from urllib.parse import urljoin, urlsplit

import urllib3

from . import deadline as deadline_pools
from .errors import InvalidInput

MAX_REDIRECTS = 3
_REDIRECTS = (301, 302, 303, 307, 308)
# IPv6 ranges that carry or reach IPv4 (or are obsolete site-local space) which Python's
# is_global does not all refuse: NAT64 (RFC 6052), 6to4 (RFC 3056), IPv4-compatible (RFC
# 4291 2.5.5.1, deprecated) and site-local (RFC 3879). A gateway may route them inward.
_TRANSITION_NETWORKS = [ipaddress.ip_network(net) for net in (
    "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96", "fec0::/10")]
Resolver = Callable[[str, int], list[str]]


class UnsafeURL(InvalidInput):
    """The URL is refused before any connection is made."""


class FetchFailed(InvalidInput):
    """The URL was allowed but did not give an image within the limits."""


def resolve_host(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise FetchFailed(f"image_url host {host!r} could not be resolved") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def is_public_address(address: str) -> bool:
    """False for private, loopback, link-local (cloud metadata), reserved, multicast and
    unspecified addresses, looking through IPv4-mapped IPv6."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif any(ip in network for network in _TRANSITION_NETWORKS):
            return False
    return ip.is_global and not ip.is_multicast


def fetch_url(url: str, *, max_bytes: int, timeout: float, allow_private: bool = False,
              resolve: Resolver = resolve_host,
              is_allowed: Callable[[str], bool] = is_public_address,
              what: str = "image_url") -> bytes:
    """GET `url` and return its body, or raise UnsafeURL / FetchFailed naming the field
    `what`. `timeout` is one deadline over every hop: connecting, headers, redirects and the
    body."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        response = _open_checked(url, deadline, allow_private, resolve, is_allowed, what=what)
        try:
            if response.status in _REDIRECTS and response.headers.get("Location"):
                try:
                    url = urljoin(url, response.headers["Location"])
                except ValueError:
                    raise UnsafeURL(f"{what} redirected to a malformed URL") from None
                continue
            if response.status != 200:
                raise FetchFailed(f"{what} answered HTTP {response.status}")
            return _read_capped(response, max_bytes, what)
        finally:
            response.release_conn()
    raise FetchFailed(f"{what} redirected more than {MAX_REDIRECTS} times")


def check_url(url: str, what: str, allow_private: bool = False,
              resolve: Resolver = resolve_host,
              is_allowed: Callable[[str], bool] = is_public_address):
    """Refuse, before any connection, a URL that is not http(s) or whose host resolves to a
    private or reserved address. Returns its parts, port and checked addresses."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1" and the like
        raise UnsafeURL(f"{what} is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"{what} must be an http or https URL")
    host = parts.hostname
    if not host:
        raise UnsafeURL(f"{what} has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL(f"{what} has an invalid port") from None
    try:
        addresses = resolve(host, port)
    except FetchFailed:
        raise FetchFailed(f"{what} host {host!r} could not be resolved") from None
    if not addresses:
        raise FetchFailed(f"{what} host {host!r} could not be resolved")
    if not allow_private and not all(is_allowed(address) for address in addresses):
        raise UnsafeURL(f"{what} points to a private or reserved address; the server fetches "
                        "only public ones unless its ALLOW_PRIVATE_URLS setting is true "
                        "(for a trusted network only)")
    return parts, port, addresses


def _open_checked(url, deadline, allow_private, resolve, is_allowed, *, what="image_url",
                  method="GET", body=None, headers=None):
    """The response to one request, its headers read by `deadline` (time.monotonic)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchFailed(f"{what} took too long to answer")
    parts, port, addresses = check_url(url, what, allow_private, resolve, is_allowed)
    host = parts.hostname
    tls = dict(server_hostname=host, assert_hostname=host) if parts.scheme == "https" else {}
    pool = deadline_pools.pool(parts.scheme, addresses[0], deadline, port=port, retries=False,
                               maxsize=1, timeout=urllib3.Timeout(connect=min(remaining, 5.0)),
                               **tls)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        # decode_content=False: urllib3 would otherwise inflate each read whole (br, gzip,
        # deflate, zstd, stacked as "gzip, gzip") before _read_capped could count it
        # (urllib3/response.py, HTTPResponse._decode); identity is asked for, and anything
        # else refused from the headers.
        return pool.urlopen(method, path, body=body, redirect=False, preload_content=False,
                            decode_content=False,
                            headers={"Host": parts.netloc.rsplit("@", 1)[-1],
                                     "User-Agent": "sam3d-objects-server",
                                     "Accept-Encoding": "identity",
                                     **(headers or {"Accept": "image/*"})})
    except urllib3.exceptions.TimeoutError:
        raise FetchFailed(f"{what} took too long to answer") from None
    except urllib3.exceptions.HTTPError as exc:
        raise FetchFailed(f"{what} could not be reached: {type(exc).__name__}") from None


def post_checked(url: str, body: bytes, headers: dict[str, str], *, what: str,
                 timeout: float, allow_private: bool = False,
                 resolve: Resolver = resolve_host) -> int:
    """POST `body` to `url` under the same address rules as `fetch_url` (checked again at
    each call: DNS may have changed), no redirect followed; the HTTP status."""
    response = _open_checked(url, time.monotonic() + timeout, allow_private, resolve,
                             is_public_address, what=what, method="POST", body=body,
                             headers=headers)
    response.drain_conn()  # within the same deadline; a receiver still dripping is cut off
    response.release_conn()
    return response.status


def _read_capped(response, max_bytes: int, what: str) -> bytes:
    encodings = [name.strip().lower() for name
                 in response.headers.get("Content-Encoding", "").split(",")]
    if any(name not in ("", "identity") for name in encodings):
        raise FetchFailed(f"{what} answered with Content-Encoding "
                          f"{response.headers['Content-Encoding'][:40]!r}; only an unencoded "
                          "body is accepted")
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FetchFailed(f"{what} body is larger than {max_bytes} bytes")
    chunks, size = [], 0
    try:
        while chunk := response.read1(64 * 1024, decode_content=False):
            size += len(chunk)
            if size > max_bytes:
                raise FetchFailed(f"{what} body is larger than {max_bytes} bytes")
            chunks.append(chunk)
    except urllib3.exceptions.TimeoutError:
        raise FetchFailed(f"{what} took too long to download") from None
    except urllib3.exceptions.HTTPError as exc:
        raise FetchFailed(f"{what} download failed: {type(exc).__name__}") from None
    return b"".join(chunks)
