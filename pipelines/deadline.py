"""urllib3 connection pools whose every read ends by one wall-clock deadline.

urllib3's timeouts are per socket operation: a server that sends one byte a second never
trips them, through the headers or the body. Here each read of the response (status line,
headers, body) first sets the socket's timeout to what is left of the deadline, so the
whole answer takes at most that long. Connecting and the TLS handshake are bounded by the
connect timeout the caller derives from the same deadline (CPython bounds a handshake's
total time by the socket timeout: Modules/_ssl.c, `_ssl__SSLSocket_do_handshake_impl`).
"""

from __future__ import annotations

import functools
import http.client
import io
import socket
import time

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection


class DeadlineReader(io.RawIOBase):
    """A socket's receiving side, each recv given only the time left before `deadline`.

    It reads through the socket's own unbuffered file, which keeps the socket open while
    the answer is read even after http.client closes the connection (`Connection: close`).
    """

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__()
        self._sock, self._deadline = sock, deadline
        self._file = sock.makefile("rb", buffering=0)

    def makefile(self, mode: str) -> io.BufferedReader:
        """What http.client.HTTPResponse reads the answer through (it asks for "rb")."""
        return io.BufferedReader(self)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the deadline passed")
        self._sock.settimeout(remaining)
        return self._file.readinto(buffer)

    def close(self) -> None:
        self._file.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, deadline: float, **kwargs):
        super().__init__(DeadlineReader(sock, deadline), *args, **kwargs)


class _Deadline:
    """Mixed into urllib3's connections: their responses read through a DeadlineReader."""

    def __init__(self, *args, deadline: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.response_class = functools.partial(_DeadlineResponse, deadline=deadline)


class _DeadlineHTTPConnection(_Deadline, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_Deadline, HTTPSConnection):
    pass


def pool(scheme: str, address: str, deadline: float, **kwargs) -> urllib3.HTTPConnectionPool:
    """A one-connection pool to `address` whose answers end by `deadline` (time.monotonic)."""
    if scheme == "https":
        made = urllib3.HTTPSConnectionPool(address, deadline=deadline, **kwargs)
        made.ConnectionCls = _DeadlineHTTPSConnection
    else:
        made = urllib3.HTTPConnectionPool(address, deadline=deadline, **kwargs)
        made.ConnectionCls = _DeadlineHTTPConnection
    return made
