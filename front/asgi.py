"""The ASGI side of the HTTP front: a request's body is received here, without a thread,
under its budget and deadline; only the complete request goes to the WSGI (Flask) app, on
a bounded thread pool; files and event streams are sent from here at the client's pace.

A slow client thus costs a coroutine and the bytes it has sent, never one of the threads
that answer /health, status polls and submissions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

from api import errors

from .budgets import Budgets, Refused
from .security_headers import SECURITY_HEADERS
from .wsgi_bridge import Answer, FileWrapper, call, environ

access_log = logging.getLogger("gunicorn.access")
# Added to every answer here, encoded once, rather than by the app per request (werkzeug's
# header checks cost more than the status poll itself).
ENCODED_SECURITY_HEADERS = [(name.lower().encode(), value.encode())
                            for name, value in SECURITY_HEADERS.items()]
# A stream's request (key check, 404 or 410) runs in the app on threads of its own: hundreds
# arriving at once wait for those, not ahead of /health in the pool everyone else shares.
STREAM_SUFFIX = "/events"
STREAM_THREADS = 4


def error_answer(status: int, message: str, retry_after: bool = False) -> Answer:
    """The app's error body and Retry-After (api/errors.py), for answers the front gives
    itself; the connection closes after it."""
    body = json.dumps(errors.error_body(message)).encode()
    headers = {"Date": formatdate(usegmt=True), "Content-Type": "application/json",
               "Content-Length": str(len(body)), "Connection": "close",
               **(errors.retry_after() if retry_after else {})}
    return Answer(status, [(k.lower().encode(), v.encode()) for k, v in headers.items()]
                  + ENCODED_SECURITY_HEADERS, body)


class BodyTooSlow(Exception):
    pass


class ClientGone(Exception):
    pass


class Body:
    """One request's body, received under its budgets: `bodies` while it arrives (its
    per-IP and total count), `body_bytes` until the request is answered."""

    def __init__(self, budgets: Budgets, ip: str, max_size: int | None):
        self.budgets, self.ip, self.max_size = budgets, ip, max_size
        self.held = 0
        self.complete = True  # False: the rest was never read, the connection must close

    async def read(self, scope: dict, receive) -> bytes:
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is None and b"transfer-encoding" not in headers or declared == b"0":
            return b""
        if declared is not None and self.max_size is not None and int(declared) > self.max_size:
            self.complete = False  # the app answers 413 from Content-Length alone
            return b""
        self.budgets.bodies.take(self.ip)
        try:
            return await self._receive(receive)
        finally:
            self.budgets.bodies.give_back(self.ip)

    async def _receive(self, receive) -> bytes:
        limits = self.budgets.limits
        chunks, started = [], time.monotonic()
        while True:
            allowed = (limits.body_grace_seconds + self.held / limits.body_min_rate
                       - (time.monotonic() - started))
            try:
                message = await asyncio.wait_for(receive(), max(allowed, 0))
            except asyncio.TimeoutError:
                raise BodyTooSlow from None
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            if self.budgets.body_bytes + len(chunk) > limits.body_bytes:
                raise Refused("request bytes in memory", per_ip=False)
            self.budgets.body_bytes += len(chunk)
            self.held += len(chunk)
            chunks.append(chunk)
            if self.max_size is not None and self.held > self.max_size:
                self.complete = False  # one byte past the limit: the app answers 413
                return b"".join(chunks)[:self.max_size + 1]
            if not message.get("more_body"):
                return b"".join(chunks)

    def release(self) -> None:
        self.budgets.body_bytes -= self.held
        self.held = 0


class Front:
    """ASGI app in front of a WSGI app; see the module's docstring."""

    def __init__(self, wsgi_app, budgets: Budgets, threads: int):
        self.wsgi_app, self.budgets = wsgi_app, budgets
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="wsgi")
        self.stream_pool = ThreadPoolExecutor(STREAM_THREADS, thread_name_prefix="wsgi-streams")
        self.max_body = getattr(wsgi_app, "config", {}).get("MAX_CONTENT_LENGTH")

    async def __call__(self, scope, receive, send) -> None:
        started = time.monotonic()
        ip = (scope.get("client") or ("unix",))[0]
        body = Body(self.budgets, ip, self.max_body)
        try:
            try:
                raw = await body.read(scope, receive)
            except ClientGone:
                return
            except BodyTooSlow:
                answer = error_answer(408, "request body arrived too slowly")
            except Refused as exc:
                answer = error_answer(exc.status, str(exc), retry_after=True)
            else:
                pool = self.stream_pool if scope["path"].endswith(STREAM_SUFFIX) else self.pool
                answer = await asyncio.get_running_loop().run_in_executor(
                    pool, call, self.wsgi_app, environ(scope, raw))
                answer.headers.extend(ENCODED_SECURITY_HEADERS)
        finally:
            body.release()
        if not body.complete:
            answer.headers.append((b"connection", b"close"))
        if not any(name.lower() == b"date" for name, _ in answer.headers):
            answer.headers.append((b"date", formatdate(usegmt=True).encode()))
        sent = await self._send(answer, ip, receive, send)
        # gunicorn's old format; the path without its query string, which stays out of logs
        access_log.info('%s "%s %s HTTP/%s" %d %d %.6fs', ip, scope["method"], scope["path"],
                        scope["http_version"], answer.status, sent,
                        time.monotonic() - started)

    async def _send(self, answer: Answer, ip: str, receive, send) -> int:
        """Send `answer`; the number of body bytes sent."""
        if hasattr(answer.body, "__aiter__"):
            try:
                self.budgets.streams.take(ip)
            except Refused as exc:
                refusal = error_answer(exc.status, str(exc), retry_after=True)
                answer.status, answer.headers, answer.body = (refusal.status, refusal.headers,
                                                              refusal.body)
            else:
                try:
                    await send({"type": "http.response.start", "status": answer.status,
                                "headers": answer.headers})
                    return await self._stream(answer.body, receive, send)
                finally:
                    self.budgets.streams.give_back(ip)
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": answer.headers})
        if isinstance(answer.body, FileWrapper):
            return await self._send_file(answer.body, send)
        await send({"type": "http.response.body", "body": answer.body})
        return len(answer.body)

    async def _send_file(self, file: FileWrapper, send) -> int:
        loop, sent = asyncio.get_running_loop(), 0
        try:
            while block := await loop.run_in_executor(None, file.file.read, file.block_size):
                await send({"type": "http.response.body", "body": block, "more_body": True})
                sent += len(block)
        finally:
            file.close()
        await send({"type": "http.response.body", "body": b""})
        return sent

    @staticmethod
    async def _stream(stream, receive, send) -> int:
        """Send the stream's events until it ends or the client goes."""
        events, gone, sent = stream.__aiter__(), asyncio.ensure_future(_gone(receive)), 0
        try:
            while True:
                event = asyncio.ensure_future(events.__anext__())
                await asyncio.wait({event, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    event.cancel()
                    return sent
                try:
                    chunk = event.result()
                except StopAsyncIteration:
                    await send({"type": "http.response.body", "body": b""})
                    return sent
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
        finally:
            gone.cancel()


async def _gone(receive) -> None:
    """Returns when the client has gone (past the request's own body messages)."""
    while (await receive())["type"] != "http.disconnect":
        pass
