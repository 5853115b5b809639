"""gunicorn's worker for this server: uvicorn's asyncio HTTP server (httptools' parser)
running front.asgi.Front around the WSGI app gunicorn loads (`wsgi_app`, app:app).

Connections cost a coroutine, not a thread, until their request is complete. Here, below
the app: each connection and each request still sending its headers counts against
front.budgets; headers must arrive within Limits.header_seconds and Limits.header_bytes,
at most 100 fields of at most 8190 bytes each (gunicorn's limits, answered 431 as gunicorn
does);
a request the parser rejects (bare-LF line endings, a header line without a colon, both
Content-Length and Transfer-Encoding) is answered 400 in the app's JSON shape and its
connection closed. Pipelined requests are answered in order (uvicorn holds the next one
until the answer before it is sent).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import warnings
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .asgi import Front, error_answer
from .budgets import Budgets, Limits, Refused

with warnings.catch_warnings():  # uvicorn points to the uvicorn-worker package, same class
    warnings.simplefilter("ignore", DeprecationWarning)
    from uvicorn.workers import UvicornWorker


# gunicorn's own defaults, which this front replaced: limit_request_fields 100 and
# limit_request_field_size 8190 (gunicorn/config.py LimitRequestFields and
# LimitRequestFieldSize), a field counted as its line and CRLF (gunicorn/http/message.py
# parse_headers); both answered 431 (gunicorn/workers/base.py handle_error).
MAX_HEADER_FIELDS = 100
MAX_HEADER_FIELD_BYTES = 8190


class HeadersTooLarge(Exception):
    pass


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the connection and header budgets, the header
    deadline and size cap, and JSON 400s."""

    budgets: Budgets  # set by FrontWorker: one worker per process

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self.ip = self.client[0] if self.client else "unix"
        self.holds: list = []
        self.header_deadline: asyncio.TimerHandle | None = None
        self.header_fields, self.too_large = 0, None
        try:
            for budget in (self.budgets.connections, self.budgets.headers):
                budget.take(self.ip)
                self.holds.append(budget)
        except Refused as exc:
            self._answer_and_close(error_answer(exc.status, str(exc), retry_after=True))
            return
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        for budget in self.holds:
            budget.give_back(self.ip)
        self.holds = []
        super().connection_lost(exc)

    def _expect_headers(self) -> None:
        self.header_bytes = 0
        self.header_deadline = self.loop.call_later(self.budgets.limits.header_seconds,
                                                    self._headers_too_slow)

    def _headers_done(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None
        if self.budgets.headers in self.holds:  # only a connection's first request counts
            self.holds.remove(self.budgets.headers)
            self.budgets.headers.give_back(self.ip)

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an answer is being sent: no room for a 408 before it
        else:
            self._answer_and_close(error_answer(408, "request headers arrived too slowly"))

    def _answer_and_close(self, answer) -> None:
        lines = [b"HTTP/1.1 %d %s" % (answer.status, HTTPStatus(answer.status).phrase.encode())]
        lines += [name + b": " + value for name, value in answer.headers]
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + answer.body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self.too_large is not None:  # raised from a callback below: the parser stopped
            self._answer_and_close(error_answer(431, self.too_large))
        else:
            self._answer_and_close(error_answer(400, "malformed HTTP request"))

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_fields = 0
        if self.header_deadline is None:  # a kept-alive or pipelined connection's next request
            self._expect_headers()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_fields += 1
        if self.header_fields > MAX_HEADER_FIELDS:
            self._refuse(f"request has more than {MAX_HEADER_FIELDS} header fields")
        if len(name) + 1 + len(value) + 2 > MAX_HEADER_FIELD_BYTES:  # "name:value" CRLF
            self._refuse(f"a request header field is larger than {MAX_HEADER_FIELD_BYTES} "
                         "bytes")
        self._count_header_bytes(name + value)
        super().on_header(name, value)

    def _count_header_bytes(self, data: bytes) -> None:
        self.header_bytes += len(data)
        if self.header_bytes > self.budgets.limits.header_bytes:
            self._refuse(f"request headers are larger than {self.budgets.limits.header_bytes} "
                         "bytes")

    def _refuse(self, reason: str) -> None:
        """The parser stops (httptools turns a callback's exception into a parse error,
        which uvicorn answers with send_400_response): 431 with `reason`, connection closed."""
        self.too_large = reason
        raise HeadersTooLarge

    def on_headers_complete(self) -> None:
        self._headers_done()
        super().on_headers_complete()


class FrontWorker(UvicornWorker):
    """One gunicorn worker process (gunicorn's word, and its `worker_class` setting names
    this class); `threads` (gunicorn's setting) sizes the WSGI app's pool."""

    CONFIG_KWARGS = {"loop": "auto", "http": GuardedProtocol, "ws": "none", "lifespan": "off",
                     "access_log": False, "server_header": False,
                     "date_header": False,  # the app's own, or front.asgi's
                     # then SIGTERM's open requests are dropped: worker_exit gives the
                     # running job what is left of gunicorn's graceful_timeout
                     "timeout_graceful_shutdown": 3,
                     # callback_notify (gunicorn's heartbeat, and the parent check below)
                     # every second rather than every `timeout / 2` (uvicorn 0.54
                     # uvicorn/server.py:264-268 on_tick; uvicorn/workers.py:49); a heartbeat more often costs an fchmod
                     "timeout_notify": 1}
    limits = Limits()
    parent_gone = False

    async def callback_notify(self) -> None:
        """gunicorn's heartbeat, and the check gunicorn's own workers make on each loop
        (gunicorn 23.0.0 gunicorn/workers/sync.py:52-57 and gthread.py:186-191, is_parent_alive: "If our
        parent changed then we shut down"), which uvicorn's worker lacks: after a kill -9
        of the master, this process would serve on, holding the port and OUTPUT_DIR's
        lock, so a supervisor's restart could not start. It stops as on SIGTERM: the
        running job gets the graceful period (worker_exit), the model processes stop."""
        self.notify()
        if self.ppid != os.getppid() and not self.parent_gone:
            self.parent_gone = True
            self.log.info("Parent changed, shutting down: %s", self)
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful stop, then init_signals'

    def init_signals(self) -> None:
        """uvicorn re-raises the SIGTERM it caught once it has stopped serving: exit then,
        through gunicorn's own path, which runs the worker_exit hook (the running job's
        graceful period), instead of dying of the signal."""
        super().init_signals()
        for stop in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop, lambda *_: sys.exit(0))

    def load_wsgi(self) -> None:
        super().load_wsgi()
        budgets = Budgets(self.limits)
        GuardedProtocol.budgets = budgets
        metrics = getattr(self.wsgi, "extensions", {}).get("metrics")
        if metrics is not None:
            for name, budget in (("connections_open", budgets.connections),
                                 ("connections_awaiting_headers", budgets.headers),
                                 ("bodies_arriving", budgets.bodies),
                                 ("event_streams_open", budgets.streams)):
                metrics.gauge(f"sam3d_http_{name}", f"HTTP {budget.what} now",
                              lambda budget=budget: budget.open)
        self.wsgi = Front(self.wsgi, budgets, threads=self.cfg.threads)
