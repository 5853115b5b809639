"""Jobs, their life cycle, the bounded queue, the worker threads, result files and expiry.

A job moves through one explicit state machine:

    queued -> processing -> completed | failed | cancelled
    queued -> cancelled

Every change goes through `JobQueue._move`, under the queue's one lock, so a reader always
sees a consistent job, and is written to the journal (journal.py), so a restart resumes
where the last process stopped. The queue knows pipelines only through `pipelines.base.Pipeline`
(looked up by name when a job starts) and knows nothing of HTTP.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from journal import Journal
from pipelines.base import (JobCancelled, Pipeline, PipelineError, describe_failure,
                            is_out_of_memory, release_memory)
from pipelines.device import with_gpu_peak

log = logging.getLogger(__name__)

JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")  # 128 random bits
_EXPIRED_IDS_KEPT = 100_000


class JobState(str, enum.Enum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


_ALLOWED_MOVES = {
    JobState.QUEUED: {JobState.PROCESSING, JobState.CANCELLED},
    JobState.PROCESSING: {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED},
}


class QueueFull(Exception):
    """More than MAX_QUEUE_SIZE jobs would be waiting."""


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
    id: str = field(default_factory=lambda: secrets.token_hex(16))
    created_at: float = field(default_factory=time.time)
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    stage: str = "queued"
    progress: float = 0.0
    result: Any = None  # pipelines.base.Result once completed
    error: str | None = None
    error_status: int | None = None
    cancel_requested: bool = False
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def _move_to(self, state: JobState) -> None:
        if state not in _ALLOWED_MOVES.get(self.state, ()):
            raise RuntimeError(f"job {self.id}: {self.state.value} -> {state.value} is not allowed")
        self.state = state
        if state is JobState.PROCESSING:
            self.started_at = time.time()
            self.stage = "starting"
        if state.finished:
            self.finished_at = time.time()
            self.stage = state.value
            self.image = None  # the decoded image is no longer needed
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
    error_status: int | None
    cancel_requested: bool
    options: Any = None
    output: str = ""  # what the job makes: `glb (textured)`, `ply`, `depth png`
    waited: float | None = None  # seconds between submission and start


Observer = Callable[[JobView], None]
"""Told of every job's submission, state change and stage change, under the queue's lock:
it must be quick and must not block (metrics, webhooks)."""


class JobQueue:
    """A bounded FIFO of jobs drained by exactly `max_concurrent` worker threads."""

    def __init__(self, pipelines: Mapping[str, Pipeline], output_dir: Path, *,
                 max_queue_size: int = 10, max_concurrent: int = 1,
                 result_ttl_seconds: float = 3600.0, janitor_interval: float = 0.5,
                 observers: Sequence[Observer] = ()):
        self._pipelines = pipelines
        self._observers = list(observers)
        self.output_dir = Path(output_dir)
        self.max_queue_size = max_queue_size
        self.max_concurrent = max_concurrent
        self.result_ttl_seconds = result_ttl_seconds
        self._janitor_interval = janitor_interval
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: list[Job | None] = [None] * max_concurrent
        self._jobs: dict[str, Job] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._workers: list[threading.Thread | None] = [None] * max_concurrent
        self._stopping = threading.Event()
        self._janitor: threading.Thread | None = None
        self._reserved = 0  # slots held by submissions still fetching or decoding
        self._journal: Journal | None = None

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._journal = Journal(self.output_dir)
        with self._lock:
            self._restore()
            self._remove_orphan_files()
        for slot in range(self.max_concurrent):
            self._start_worker(slot)
        self._janitor = threading.Thread(target=self._janitor_loop, name="queue-janitor",
                                         daemon=True)
        self._janitor.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Take no new job; let running ones finish within `timeout`. Waiting jobs stay in
        the journal for the next start."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        for thread in [*self._workers, self._janitor]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        busy = [thread for thread in self._workers if thread is not None and thread.is_alive()]
        if busy:
            log.warning("stopping with %d job(s) still running: they will show as interrupted",
                        len(busy))
        elif self._journal is not None:
            self._journal.close()

    # -- client side ----------------------------------------------------------------

    def submit(self, pipeline: str, inputs: tuple[Any, Any] | Callable[[], tuple[Any, Any]]
               ) -> JobView:
        """Queue a job of `(options, image)`. `inputs` may be a callable that makes them
        (download, decode, check masks): it runs outside the lock holding a reserved slot,
        so a full queue refuses before that work."""
        with self._lock:
            if len(self._waiting) + self._reserved >= self.max_queue_size:
                raise QueueFull(f"queue is full ({self.max_queue_size} jobs waiting)")
            self._reserved += 1
        try:
            options, image = inputs() if callable(inputs) else inputs
            job = Job(pipeline=pipeline, options=options, image=image)
            self._journal.keep_input(job.id, job.image)  # until it starts: for a restart
        finally:
            with self._lock:
                self._reserved -= 1
        with self._lock:
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._journal.record(job)
            self._notify(job)
            self._lock.notify()
            return self._view(job)

    def get(self, job_id: str) -> JobView:
        with self._lock:
            return self._view(self._find(job_id))

    def output_writable(self) -> bool:
        """Whether result files can be written (a full or read-only volume fails jobs)."""
        return os.access(self.output_dir, os.W_OK | os.X_OK)

    def cancel(self, job_id: str, force: bool = False) -> JobView:
        """Cancel a waiting job now; ask a running one to stop at its next stage, or with
        `force` at once where its pipeline can abort (the model process restarts)."""
        abort = None
        with self._lock:
            job = self._find(job_id)
            if job.state.finished:
                raise NotCancellable(f"job is already {job.state.value}")
            if job.state is JobState.QUEUED:
                self._waiting.remove(job)
                self._move(job, JobState.CANCELLED)
                log.info("job %s cancelled while waiting", job.id)
            else:
                job.cancel_requested = True
                abort = getattr(self._pipelines.get(job.pipeline), "abort", None) if force \
                    else None
            view = self._view(job)
        if abort is not None:
            abort()
        return view

    def wait(self, job_id: str, timeout: float) -> JobView:
        """Block until the job finishes or `timeout` passes; return its view either way."""
        with self._lock:
            job = self._find(job_id)
        job.done.wait(timeout)
        return self.get(job_id)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "queued": len(self._waiting),
                "processing": sum(job is not None for job in self._running),
                "max_queue_size": self.max_queue_size,
                "max_concurrent": self.max_concurrent,
            }

    def workers_alive(self) -> int:
        return sum(1 for thread in self._workers if thread is not None and thread.is_alive())

    def janitor_alive(self) -> bool:
        return self._janitor is not None and self._janitor.is_alive()

    # -- internals --------------------------------------------------------------------

    def _find(self, job_id: str) -> Job:
        if not isinstance(job_id, str) or not JOB_ID_PATTERN.match(job_id):
            raise JobNotFound(job_id)
        job = self._jobs.get(job_id)
        if job is not None and self._is_stale(job):
            self._expire(job)
            job = None
        if job is None:
            raise JobExpired(job_id) if job_id in self._expired else JobNotFound(job_id)
        return job

    def _view(self, job: Job) -> JobView:
        running = sum(j is not None for j in self._running)
        position = running + self._waiting.index(job) if job.state is JobState.QUEUED else 0
        return JobView(id=job.id, pipeline=job.pipeline, state=job.state, position=position,
                       queue_length=running + len(self._waiting), stage=job.stage,
                       progress=round(job.progress, 4), processing_time=job.processing_time,
                       result=job.result, error=job.error, error_status=job.error_status,
                       cancel_requested=job.cancel_requested, options=job.options,
                       output=_output_of(job.options),
                       waited=None if job.started_at is None else round(
                           job.started_at - job.created_at, 3))

    def _notify(self, job: Job) -> None:
        """Tell the observers (under the lock); one that fails is logged, never the job."""
        if not self._observers:
            return
        view = self._view(job)
        for observer in self._observers:
            try:
                observer(view)
            except Exception:  # noqa: BLE001
                log.exception("queue observer %r failed", observer)

    def _start_worker(self, slot: int) -> None:
        thread = threading.Thread(target=self._work, args=(slot,), name=f"queue-worker-{slot}",
                                  daemon=True)
        self._workers[slot] = thread
        thread.start()

    def _work(self, slot: int) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._stopping.is_set():
                    self._lock.wait()
                if self._stopping.is_set():
                    return
                job = self._waiting.popleft()
                self._move(job, JobState.PROCESSING)
                self._running[slot] = job
            self._run(job)
            with self._lock:
                self._running[slot] = None

    def _run(self, job: Job) -> None:
        log.info("job %s started: %s %s", job.id, job.pipeline, _output_of(job.options))
        pipeline = self._pipeline_for(job.pipeline)
        result, failure, cancelled, oom = None, None, False, False
        try:
            if pipeline is None:
                raise PipelineError(f"pipeline {job.pipeline!r} is not loaded", status=503)
            result = with_gpu_peak(lambda: pipeline.run(
                job.options, job.image, self.output_dir / job.id,
                lambda stage, fraction: self._report(job, stage, fraction)))
        except JobCancelled:
            cancelled = True
        except Exception as exc:  # a pipeline's failure fails its job, never the worker
            oom = is_out_of_memory(exc)
            failure = describe_failure(exc, getattr(pipeline, "oom_advice", ""))
            if failure.status >= 500 and not oom:
                log.exception("job %s failed", job.id)
        if oom:
            release_memory()  # outside the except block: the traceback is gone by now
        with self._lock:
            if cancelled or job.cancel_requested:
                self._move(job, JobState.CANCELLED)
                self._remove_files(result)
            elif failure is not None:
                job.error, job.error_status = str(failure), failure.status
                self._move(job, JobState.FAILED)
            else:
                job.result, job.progress = result, 1.0
                self._move(job, JobState.COMPLETED)
            log.info("job %s %s after %.1f s%s", job.id, job.state.value, job.processing_time,
                     f" ({job.error_status}: {job.error})" if job.error else "")

    def _pipeline_for(self, name: str) -> Pipeline | None:
        """The job's pipeline, waiting while models still load: after a restart the journal's
        waiting jobs are back before the models are."""
        while (pipeline := self._pipelines.get(name)) is None and not self._stopping.is_set():
            if not getattr(self._pipelines, "loading", False):
                break
            time.sleep(0.1)
        return pipeline

    def _report(self, job: Job, stage: str, fraction: float) -> None:
        with self._lock:
            if job.cancel_requested:
                raise JobCancelled()
            changed = stage != job.stage
            job.stage, job.progress = stage, min(max(float(fraction), 0.0), 1.0)
            if changed:
                self._notify(job)

    def _janitor_loop(self) -> None:
        """Revive dead workers, expire old jobs; a failure is logged, never the end of it."""
        while not self._stopping.wait(self._janitor_interval):
            try:
                with self._lock:
                    self._revive_dead_workers()
                    for job in [j for j in self._jobs.values() if self._is_stale(j)]:
                        self._expire(job)
            except Exception:  # noqa: BLE001 - e.g. a file that cannot be deleted
                log.exception("janitor: cleaning up failed; trying again")

    def _revive_dead_workers(self) -> None:
        for slot, thread in enumerate(self._workers):
            if thread is None or thread.is_alive() or self._stopping.is_set():
                continue
            job = self._running[slot]
            log.error("worker %d died; restarting it", slot)
            if job is not None and not job.state.finished:
                job.error, job.error_status = "the worker running this job crashed", 500
                self._move(job, JobState.FAILED)
            self._running[slot] = None
            self._start_worker(slot)

    def _is_stale(self, job: Job) -> bool:
        return (job.state.finished and job.finished_at is not None
                and time.time() - job.finished_at > self.result_ttl_seconds)

    def _move(self, job: Job, state: JobState) -> None:
        """Every state change: the job, then the journal (a started job no longer needs its
        kept image: if the process dies now, the job fails rather than run twice)."""
        job._move_to(state)
        self._journal.record(job)
        self._notify(job)
        if state is not JobState.QUEUED:
            self._journal.input_path(job.id).unlink(missing_ok=True)

    def _expire(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        self._expired[job.id] = None
        self._journal.expire(job.id, keep=_EXPIRED_IDS_KEPT)
        self._remove_files(job.result)
        while len(self._expired) > _EXPIRED_IDS_KEPT:
            self._expired.popitem(last=False)

    @staticmethod
    def _remove_files(result: Any) -> None:
        if result is None:
            return
        try:
            Path(result.path).unlink(missing_ok=True)
        except OSError as exc:  # a read-only or vanished volume: the janitor tries again
            log.warning("could not remove result file %s: %s", Path(result.path).name, exc)

    def _restore(self) -> None:
        """The journal's jobs, as the last process left them: finished ones keep their
        results, queued ones wait again, running ones fail with the reason."""
        for record in self._journal.records():
            if record.state == "expired":
                self._expired[record.id] = None
                continue
            job = Job(pipeline=record.pipeline, options=record.options, image=None,
                      id=record.id, created_at=record.created_at,
                      state=JobState(record.state), started_at=record.started_at,
                      finished_at=record.finished_at, result=record.result,
                      error=record.error, error_status=record.error_status)
            self._jobs[job.id] = job
            if job.state is JobState.QUEUED:
                try:
                    job.image = self._journal.load_input(job.id)
                    self._waiting.append(job)
                    continue
                except OSError:
                    job.error = "the server restarted and this job's image was lost"
            elif job.state is JobState.PROCESSING:
                job.error = ("interrupted: the server restarted while this job ran (killed, "
                             "probably out of memory, or stopped); submit it again")
            else:
                job.stage, job.progress = job.state.value, float(job.result is not None)
                job.done.set()
                continue
            job.error_status = 500
            job.state = JobState.PROCESSING  # both end as failed, through the allowed move
            self._move(job, JobState.FAILED)
        for job in [j for j in self._jobs.values() if self._is_stale(j)]:
            self._expire(job)
        if self._jobs:
            log.info("journal: %d jobs restored, %d waiting", len(self._jobs),
                     len(self._waiting))

    def _remove_orphan_files(self) -> None:
        """Result files no job owns (a crash between writing and recording), and the kept
        images of jobs that no longer wait."""
        owned = {Path(job.result.path).name for job in self._jobs.values()
                 if job.result is not None}
        for path in self.output_dir.iterdir():
            if (path.is_file() and path.name not in owned
                    and JOB_ID_PATTERN.match(path.name.lstrip(".").split(".", 1)[0])):
                path.unlink(missing_ok=True)
        waiting = {job.id for job in self._waiting}
        for path in self._journal.inputs.iterdir():
            if path.stem not in waiting:
                path.unlink(missing_ok=True)


def _output_of(options: Any) -> str:
    """What a job makes, for the log: `glb (textured)`, `ply`, `depth png`."""
    if hasattr(options, "output_format"):
        textured = options.output_format in ("glb", "obj", "usdz") and getattr(
            options, "with_texture", False)
        return options.output_format + (" (textured)" if textured else "")
    return f"depth {getattr(options, 'output', '')}".strip()
