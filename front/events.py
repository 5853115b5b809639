"""A job's server-sent events, readable by a thread (Flask's development server) and by
the asyncio front (front/asgi.py), which holds no thread per open stream."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Iterator

from api.views import describe
from queue_manager import JobExpired, JobNotFound, JobQueue

POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 15.0


class JobEvents:
    """The job's status (as GET /job/<id> gives it, api/views.py) each time its state, position, stage or
    progress changes, until it finishes; a comment line every KEEPALIVE_SECONDS keeps
    proxies from closing a quiet stream."""

    def __init__(self, queue: JobQueue, job_id: str):
        self.queue, self.job_id = queue, job_id

    def _steps(self) -> Iterator[bytes | None]:
        """Event lines, and None where the reader waits POLL_SECONDS."""
        last, quiet = None, 0.0
        while True:
            try:
                view = self.queue.get(self.job_id)
            except (JobNotFound, JobExpired):
                return
            status = describe(view)  # api/views.py: GET /job/<id>'s JSON
            changed = {key: value for key, value in status.items() if key != "processing_time"}
            if changed != last:
                yield f"data: {json.dumps(status)}\n\n".encode()
                last, quiet = changed, 0.0
            elif quiet >= KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"
                quiet = 0.0
            if view.state.finished:
                return
            yield None
            quiet += POLL_SECONDS

    def __iter__(self) -> Iterator[bytes]:
        for event in self._steps():
            if event is None:
                time.sleep(POLL_SECONDS)
            else:
                yield event

    async def __aiter__(self):
        for event in self._steps():
            if event is None:
                await asyncio.sleep(POLL_SECONDS)
            else:
                yield event
