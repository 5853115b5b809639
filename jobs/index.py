"""The queue's jobs by id, the ids of the jobs that expired, and the order the finished ones
expire in. The queue (queue_manager.py) holds one and reads and changes it under its lock;
this module never changes a job, only which jobs there are.

An id is answered one of three ways: its job; expired (410) while the last
EXPIRED_IDS_KEPT expired ids are remembered, or once its job finished more than
RESULT_TTL_SECONDS ago and waits for the janitor's sweep; unknown (404) otherwise.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from typing import Iterator, Sequence

from .state import JOB_ID_PATTERN, Job, JobExpired, JobNotFound

EXPIRED_IDS_KEPT = 100_000  # ids still answered 410 rather than 404


class JobIndex:
    def __init__(self, result_ttl_seconds: float):
        self.result_ttl_seconds = result_ttl_seconds
        self._jobs: dict[str, Job] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._finished: list[tuple[float, str]] = []  # heap of (finished_at, id): expiry order

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job

    def finished(self, job: Job) -> None:
        """`job` ended (or came back ended): it expires RESULT_TTL_SECONDS after its end."""
        heapq.heappush(self._finished, (job.finished_at or 0.0, job.id))

    def find(self, job_id: str) -> Job:
        """The job, or JobNotFound (never accepted, or a malformed id) or JobExpired."""
        if not isinstance(job_id, str) or not JOB_ID_PATTERN.match(job_id):
            raise JobNotFound(job_id)
        job = self._jobs.get(job_id)
        if job is not None and self.is_stale(job):
            raise JobExpired(job_id)  # its files go with the janitor's next sweep
        if job is None:
            raise JobExpired(job_id) if job_id in self._expired else JobNotFound(job_id)
        return job

    def is_stale(self, job: Job) -> bool:
        return (job.state.finished and job.finished_at is not None
                and time.time() - job.finished_at > self.result_ttl_seconds)

    def forget(self, job_ids: Sequence[str]) -> None:
        """Ids of expired jobs: answered 410, not 404, while EXPIRED_IDS_KEPT allow."""
        self._expired.update(dict.fromkeys(job_ids))
        while len(self._expired) > EXPIRED_IDS_KEPT:
            self._expired.popitem(last=False)

    def knows(self, job_id: str) -> bool:
        """A job of this queue, or one that expired."""
        return job_id in self._jobs or job_id in self._expired

    def unfinished(self, job_id: str) -> bool:
        """A job of this queue that has not ended (its kept request is still needed)."""
        job = self._jobs.get(job_id)
        return job is not None and not job.state.finished

    def take_due(self, limit: int) -> list[Job]:
        """Up to `limit` jobs finished more than RESULT_TTL_SECONDS ago, oldest first, out
        of the index; their ids are answered 410 from now on."""
        due: list[Job] = []
        now = time.time()
        while self._finished and len(due) < limit:
            finished_at, job_id = self._finished[0]
            if now - finished_at <= self.result_ttl_seconds:
                break
            heapq.heappop(self._finished)
            job = self._jobs.get(job_id)
            if job is None or job.finished_at != finished_at:
                continue
            del self._jobs[job_id]
            due.append(job)
        self.forget([job.id for job in due])
        return due

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))
