"""A job's life: its states, the moves allowed between them, the job itself and the
consistent copy readers get (`JobView`). One module owns the state machine:

    queued -> processing -> completed | failed | cancelled
    queued -> cancelled
    queued -> failed         (a waiting job that can never run: its input lost at a restart)
    processing -> queued     (only when its worker was gone before it ran: retried once)

`Job.move_to` is the only code that changes a job's state; the queue (queue_manager.py)
calls it, under its lock, for every change, and writes each to the journal. Readers get a
`JobView` (`JobView.of`), never the job. A job read back
from the journal after a restart is built in the state the journal recorded
(`Job.restored`): that is not a move.
"""

from __future__ import annotations

import enum
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Hashable

from pipelines.errors import FailureKind

JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")  # 128 random bits


class JobState(str, enum.Enum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


ALLOWED_MOVES = {
    JobState.QUEUED: {JobState.PROCESSING, JobState.CANCELLED, JobState.FAILED},
    JobState.PROCESSING: {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED,
                          JobState.QUEUED},
}


class QueueFull(Exception):
    """More than MAX_QUEUE_SIZE jobs would be waiting."""


class StorageUnavailable(Exception):
    """OUTPUT_DIR is full or read-only: nothing could be kept or written (507)."""


class JobNotFound(KeyError):
    """No job has this id (or the id is malformed)."""


class JobExpired(Exception):
    """The job finished more than RESULT_TTL_SECONDS ago; its files are gone."""


class NotCancellable(Exception):
    """The job has already finished."""


@dataclass(eq=False)
class Job:
    pipeline: str
    options: Any
    image: Any
    source: bytes | None = None  # the image's file as it came, kept until the job ends
    id: str = field(default_factory=lambda: secrets.token_hex(16))
    created_at: float = field(default_factory=time.time)
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    stage: str = "queued"
    progress: float = 0.0
    result: Any = None  # pipelines.base.Result once completed
    error: str | None = None
    error_kind: FailureKind | None = None  # why it failed; the answer's status follows
    cancel_requested: bool = False
    batch_key: Hashable | None = None  # jobs with equal keys may share a forward pass
    time_limit: float | None = None  # the pipeline's estimate of the most it may take
    sized: bool = False  # batch_key and time_limit asked of the pipeline
    retried: bool = False
    worker: Any = None  # the worker running it
    batch_size: int = 1  # jobs in the forward pass it ran in
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def restored(cls, record: Any, state: JobState | None = None, **fields) -> "Job":
        """A job as the journal recorded it (`jobs.journal.JobRecord`), in its recorded
        state: built so, not moved there. A finished one is done already."""
        job = cls(pipeline=record.pipeline, options=record.options, image=None,
                  id=record.id, created_at=record.created_at,
                  state=state or JobState(record.state), started_at=record.started_at,
                  finished_at=record.finished_at, result=record.result,
                  error=record.error, error_kind=record.error_kind, **fields)
        if job.state.finished:
            job.stage, job.progress = job.state.value, float(job.result is not None)
            job.done.set()
        return job

    def move_to(self, state: JobState, at: float | None = None) -> None:
        """The one way a job changes state (the queue calls it under its lock); `at`: when
        it happened, if not now (a result file found at a restart: when it was written)."""
        if state not in ALLOWED_MOVES.get(self.state, ()):
            raise RuntimeError(f"job {self.id}: {self.state.value} -> {state.value} is not allowed")
        self.state = state
        if state is JobState.PROCESSING:
            self.started_at = time.time()
            self.stage = "starting"
        if state is JobState.QUEUED:  # handed back: it never ran
            self.started_at, self.worker, self.stage, self.progress = None, None, "queued", 0.0
        if state.finished:
            self.finished_at = time.time() if at is None else at
            self.stage = state.value
            if state is JobState.COMPLETED:
                self.progress = 1.0
            self.image = self.source = None  # the image is no longer needed
            self.done.set()

    @property
    def processing_time(self) -> float | None:
        if self.started_at is None:
            return None
        return round((self.finished_at or time.time()) - self.started_at, 3)


@dataclass(frozen=True)
class JobView:
    """A consistent copy of a job's state for readers outside the lock."""

    id: str
    pipeline: str
    state: JobState
    position: int
    queue_length: int
    stage: str
    progress: float
    processing_time: float | None
    result: Any
    error: str | None
    error_kind: FailureKind | None
    cancel_requested: bool
    options: Any = None
    output: str = ""  # what the job makes: `glb (textured)`, `ply`, `depth png`
    waited: float | None = None  # seconds between submission and start
    worker: str | None = None  # the worker running it: `lotus@cuda:1`
    batch_size: int = 1

    @classmethod
    def of(cls, job: Job, lane: Any = None) -> "JobView":
        """`job` as readers see it (under the queue's lock); `lane` (workers/lanes.py), its
        pipeline's, gives its place in line."""
        queued = job.state is JobState.QUEUED and lane is not None
        return cls(id=job.id, pipeline=job.pipeline, state=job.state,
                   position=lane.position(job) if queued else 0,
                   queue_length=lane.length if lane is not None else 0, stage=job.stage,
                   progress=round(job.progress, 4), processing_time=job.processing_time,
                   result=job.result, error=job.error, error_kind=job.error_kind,
                   cancel_requested=job.cancel_requested, options=job.options,
                   output=output_of(job.options),
                   waited=None if job.started_at is None else round(
                       job.started_at - job.created_at, 3),
                   worker=getattr(job.worker, "label", None), batch_size=job.batch_size)


def output_of(options: Any) -> str:
    """What a job makes, for views and the log: `glb (textured)`, `ply`, `depth png`."""
    if hasattr(options, "output_format"):
        textured = options.output_format in ("glb", "obj", "usdz") and getattr(
            options, "with_texture", False)
        return options.output_format + (" (textured)" if textured else "")
    if options is None:
        return "recovered"
    return f"{getattr(options, 'TASK', 'depth')} {getattr(options, 'output', '')}".strip()
