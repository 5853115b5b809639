"""One complete HTTP request (an ASGI scope and its body, already received) through a WSGI
app, on the calling thread; the answer comes back for the event loop to send.

The thread is free again as soon as the app returns: in-memory answers come back whole, a
file (Flask's send_file, through wsgi.file_wrapper) and an event stream (anything with
__aiter__) come back unread, for the event loop to send at the client's pace.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

BLOCK_SIZE = 64 * 1024


class FileWrapper:
    """wsgi.file_wrapper: hands the file back to the server; iterating it (the WSGI way)
    reads it in blocks."""

    def __init__(self, file, block_size: int = BLOCK_SIZE):
        self.file, self.block_size = file, block_size

    def __iter__(self):
        while block := self.file.read(self.block_size):
            yield block

    def close(self) -> None:
        self.file.close()


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes | FileWrapper | Any  # Any: an async-iterable stream


def environ(scope: dict, body: bytes) -> dict:
    """PEP 3333's environ for `scope`. Header names with an underscore are dropped (as
    gunicorn does): X_API_KEY must not pass for X-API-Key."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    env = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin-1"),
        "PATH_INFO": scope["path"].encode().decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": server[0], "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "REMOTE_ADDR": client[0], "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0), "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "wsgi.file_wrapper": FileWrapper,
    }
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper()
        if "_" in name:
            continue
        key = {"CONTENT-TYPE": "CONTENT_TYPE",
               "CONTENT-LENGTH": "CONTENT_LENGTH"}.get(name, "HTTP_" + name.replace("-", "_"))
        value = raw_value.decode("latin-1")
        env[key] = f"{env[key]},{value}" if key in env else value
    return env


def call(app: Callable, env: dict) -> Answer:
    """Run `app` for one request; the answer, its body unread only where it is a file or a
    stream."""
    started: list = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [int(status.split(" ", 1)[0]),
                      [(name.encode("latin-1"), value.encode("latin-1"))
                       for name, value in headers]]
        return written.append

    written: list[bytes] = []
    body: Iterable = app(env, start_response)
    if isinstance(body, FileWrapper) or hasattr(body, "__aiter__"):
        return Answer(*started, body)
    try:
        content = b"".join([*written, *body])
    finally:
        if hasattr(body, "close"):
            body.close()
    return Answer(*started, content)
