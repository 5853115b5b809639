"""A lane: one pipeline's line of waiting jobs, the jobs its workers are running, and which
waiting jobs may run together.

Lanes are apart so a depth map never waits behind a 3D object. Jobs start in the order they
were queued within their lane; a worker that batches (Lotus-D, up to DEPTH_BATCH) takes the
job at the head and the waiting jobs that share its batch key (same image size and model
options), which then start early rather than late. A position counts the jobs ahead in the
same lane, running ones included, as the guide's positions count them in its one line.
A lane also remembers how long its last RECENT_JOBS completed jobs ran: the mean is what
the web page's waiting time is estimated from.
"""

from __future__ import annotations

from collections import deque
from typing import Hashable, Protocol, Sequence

from .worker import ModelWorker, WorkerState

RECENT_JOBS = 20


class LaneJob(Protocol):
    id: str
    batch_key: Hashable | None


class Lane:
    def __init__(self, name: str, workers: Sequence[ModelWorker]):
        self.name, self.workers = name, list(workers)
        self.waiting: deque = deque()
        self.running: list = []
        self.recent_seconds: deque[float] = deque(maxlen=RECENT_JOBS)

    def position(self, job: LaneJob) -> int:
        return len(self.running) + self.waiting.index(job)

    @property
    def length(self) -> int:
        return len(self.running) + len(self.waiting)

    def take(self, limit: int) -> list:
        """The head job and up to `limit - 1` waiting jobs that may share its forward pass,
        out of the line and into `running`."""
        batch = [self.waiting.popleft()]
        key = batch[0].batch_key
        if limit > 1 and key is not None:
            for job in [job for job in self.waiting if job.batch_key == key][:limit - 1]:
                self.waiting.remove(job)
                batch.append(job)
        self.running.extend(batch)
        return batch

    def put_back(self, jobs: Sequence[LaneJob]) -> None:
        """Jobs whose worker was gone before they ran go back to the head, in order."""
        for job in reversed(jobs):
            self.running.remove(job)
            self.waiting.appendleft(job)

    def finished(self, job: LaneJob) -> None:
        if job in self.running:
            self.running.remove(job)

    def completed(self, seconds: float) -> None:
        """A job of this lane completed after running `seconds` (failed and cancelled ones
        say nothing of how long a job takes)."""
        self.recent_seconds.append(seconds)

    def all_failed(self) -> bool:
        """No worker of this lane will ever run a job (each failed to load)."""
        return bool(self.workers) and all(w.state is WorkerState.FAILED for w in self.workers)

    def stats(self) -> dict:
        return {"queued": len(self.waiting), "processing": len(self.running),
                "workers": len(self.workers),
                "ready_workers": sum(w.state.up for w in self.workers),
                "mean_seconds": round(sum(self.recent_seconds) / len(self.recent_seconds), 3)
                if self.recent_seconds else None}
