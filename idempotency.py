"""`Idempotency-Key` on job submissions: a client that retries (a timeout, a dropped
connection) gets the job it already made instead of a second one.

The same key with the same request (endpoint and body) within the result TTL answers the
first job; with a different request it is refused (422). Keys live in memory: a restart
forgets them (the jobs themselves survive, journal.py).
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Callable, TypeVar

View = TypeVar("View")
MAX_KEY_LENGTH = 255


class KeyReused(Exception):
    """The key was used for a different request."""


class IdempotencyKeys:
    def __init__(self, ttl_seconds: float):
        self.ttl_seconds = ttl_seconds
        self._keys: dict[str, tuple[str, str, float]] = {}  # key -> (fingerprint, job id, until)
        self._lock = threading.Lock()

    @staticmethod
    def fingerprint(endpoint: str, body: bytes) -> str:
        return hashlib.sha256(endpoint.encode() + b"\0" + body).hexdigest()

    def submit(self, key: str, fingerprint: str, submit: Callable[[], View],
               find: Callable[[str], View]) -> tuple[View, bool]:
        """The job for `key`: made by `submit()` the first time, found by id after; and
        whether it was found. Submissions with keys are made one at a time, so two retries
        racing each other still make one job."""
        with self._lock:
            now = time.monotonic()
            self._keys = {k: entry for k, entry in self._keys.items() if entry[2] > now}
            if key in self._keys:
                known, job_id, _ = self._keys[key]
                if known != fingerprint:
                    raise KeyReused("this Idempotency-Key was used for a different request")
                return find(job_id), True
            view = submit()
            self._keys[key] = (fingerprint, view.id, now + self.ttl_seconds)
            return view, False
