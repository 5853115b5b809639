"""`Idempotency-Key` on job submissions: a client that retries (a timeout, a dropped
connection) gets the job it already made instead of a second one.

The same key with the same request (endpoint and body) within the result TTL answers the
first job; with a different request it is refused (422). Keys live in memory: a restart
forgets them (the jobs themselves survive, jobs/journal.py).
"""

from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

View = TypeVar("View")
MAX_KEY_LENGTH = 255


class KeyReused(Exception):
    """The key was used for a different request."""


class IdempotencyKeys:
    def __init__(self, ttl_seconds: float):
        self.ttl_seconds = ttl_seconds
        self._keys: dict[str, tuple[str, str, float]] = {}  # key -> (fingerprint, job id, until)
        # key -> (its lock, how many requests hold or wait for it); gone when none do
        self._key_locks: dict[str, tuple[threading.Lock, int]] = {}
        self._lock = threading.Lock()  # guards both dicts, held only briefly

    @staticmethod
    def fingerprint(endpoint: str, body: bytes) -> str:
        return hashlib.sha256(endpoint.encode() + b"\0" + body).hexdigest()

    def submit(self, key: str, fingerprint: str, submit: Callable[[], View],
               find: Callable[[str], View]) -> tuple[View, bool]:
        """The job for `key`: made by `submit()` the first time, found by id after; and
        whether it was found. Requests with the same key run one at a time, so two retries
        racing each other still make one job; other keys do not wait for a slow `submit()`
        (it downloads the image)."""
        with self._holding(key):
            with self._lock:
                now = time.monotonic()
                self._keys = {k: entry for k, entry in self._keys.items() if entry[2] > now}
                known = self._keys.get(key)
            if known is not None:
                if known[0] != fingerprint:
                    raise KeyReused("this Idempotency-Key was used for a different request")
                return find(known[1]), True
            view = submit()
            with self._lock:
                self._keys[key] = (fingerprint, view.id, time.monotonic() + self.ttl_seconds)
            return view, False

    @contextmanager
    def _holding(self, key: str) -> Iterator[None]:
        """Hold `key`'s own lock, made on first use and dropped by the last user."""
        with self._lock:
            lock, users = self._key_locks.get(key, (threading.Lock(), 0))
            self._key_locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                users = self._key_locks[key][1] - 1
                if users:
                    self._key_locks[key] = (lock, users)
                else:
                    del self._key_locks[key]
