"""Jobs, their life cycle and the bounded queue, drained by one thread per model worker.

A job moves through one explicit state machine (jobs/state.py):

    queued -> processing -> completed | failed | cancelled
    queued -> cancelled
    processing -> queued     (only when its worker was gone before it ran: retried once)

Every change goes through `JobQueue._move`, under the queue's one lock, so a reader always
sees a consistent job, and is written to the journal (jobs/journal.py), so a restart resumes
where the last process stopped. Each pipeline has a lane (workers/lanes.py) of its own; a
job is "processing" only while a worker runs it. Who asks for the moves: the client side
here (submit, cancel); the threads feeding the workers (workers/dispatch.py: which jobs run
next, what an outcome means); housekeeping (jobs/housekeeping.py: restoring at start,
expiry). The queue knows pipelines only through `pipelines.base.Pipeline` and its workers
through their `run`, and knows nothing of HTTP.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from jobs import housekeeping
from jobs.index import JobIndex
from jobs.journal import Journal, JournalWriteError
from jobs.queue_config import QueueConfig
from jobs.recorder import JobRecorder
from jobs.state import (ALLOWED_MOVES, JOB_ID_PATTERN, Job, JobExpired, JobNotFound, JobState,  # noqa: F401
                        JobView, NotCancellable, QueueFull, StorageUnavailable)
from jobs.storage import OutputDirLock, remove_job_files
from pipelines.base import JobCancelled, Pipeline, Result
from pipelines.errors import FailureKind
from workers.dispatch import Dispatch

log = logging.getLogger(__name__)

Observer = Callable[[JobView], None]
"""Told of every job's submission, state change and stage change, under the queue's lock:
it must be quick and must not block (metrics, webhooks)."""


class JobQueue:
    """A bounded FIFO of jobs, one lane per pipeline, each drained by its workers.

    `config` (QueueConfig) or, for short, its fields as keywords (`max_queue_size=3`);
    `workers` gives each pipeline's model workers (workers/pool.py, workers/dispatch.py);
    `observers` are told of every change."""

    def __init__(self, pipelines: Mapping[str, Pipeline], output_dir: Path,
                 config: QueueConfig | None = None, *,
                 workers: Mapping[str, Sequence[Any]] | None = None,
                 observers: Sequence[Observer] = (), **config_fields: Any):
        self.config = replace(config or QueueConfig(), **config_fields)
        self._pipelines = pipelines
        self._observers = list(observers)
        self.output_dir = Path(output_dir)
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._index = JobIndex(self.config.result_ttl_seconds)
        self._dispatch = Dispatch(self, self._lock, self._stopping, pipelines, workers or {},
                                  self.config)
        self._recorder = JobRecorder(self.output_dir, self.config.min_free_bytes)
        self._unfinished_files: list[str] = []  # ids of failed or cancelled jobs to clean
        self._janitor: threading.Thread | None = None
        self._reserved = 0  # slots held by submissions still fetching or decoding
        self._dir_lock = OutputDirLock(self.output_dir)
        self._journal: Journal | None = None

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Lock OUTPUT_DIR (OutputDirInUse if another server has it), restore the journal's
        jobs, start the workers' threads and the janitor."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._dir_lock.acquire()
        self._journal = self._recorder.open()
        served = getattr(self._pipelines, "status", lambda: self._pipelines)()
        with self._lock:
            self._dispatch.open(served)
            housekeeping.restore(self, self._journal)
            self._dispatch.start()
        housekeeping.expire_due(self, self._journal)  # what expired while it was down
        self._janitor = threading.Thread(target=self._janitor_loop, name="queue-janitor",
                                         daemon=True)
        self._janitor.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Take no new job; let running ones finish within `timeout`, then stop the model
        workers. Waiting jobs stay in the journal for the next start."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        if self._janitor is not None:
            self._janitor.join(max(0.0, deadline - time.monotonic()))
        busy = self._dispatch.stop(deadline)
        if busy:  # in-process jobs: they end with the process
            log.warning("stopping with %d job(s) still running: they will show as interrupted",
                        busy)
        elif self._journal is not None:
            self._journal.close()
            self._dir_lock.release()

    # -- client side ----------------------------------------------------------------

    def submit(self, pipeline: str, inputs: tuple | Callable[[], tuple]) -> JobView:
        """Queue a job of `(options, image[, source])` (`JobInputs`). `inputs` may be a
        callable that makes them (download, decode, check masks): it runs outside the lock
        holding a reserved slot, so a full queue (or disk) refuses before that work."""
        return self.submit_many(pipeline, [inputs])[0]

    def submit_many(self, pipeline: str,
                    inputs: Sequence[tuple | Callable[[], tuple]]) -> list[JobView]:
        """Queue several jobs that enter their lane together, in order (the RunPod
        worker's `images`): a batching worker finds them all waiting, none taken alone
        before the rest arrive. A journal write that fails part way refuses the rest (the
        ones recorded before it run)."""
        count = len(inputs)
        with self._lock:
            if (problem := self.output_problem()) is not None:
                raise StorageUnavailable(problem)
            if self.waiting() + self._reserved + count > self.config.max_queue_size:
                raise QueueFull(f"queue is full ({self.config.max_queue_size} jobs waiting)")
            self._reserved += count
        jobs: list[Job] = []
        try:
            for made in inputs:
                job = Job(pipeline, *(made() if callable(made) else made))
                self._recorder.keep_input(job)  # until it starts: for a restart
                jobs.append(job)
        except BaseException:
            for job in jobs:  # the inputs kept for the ones before it: never accepted
                with contextlib.suppress(OSError):
                    self._journal.forget(job.id)
            raise
        finally:
            with self._lock:
                self._reserved -= count
        with self._lock:
            views = []
            try:
                for index, job in enumerate(jobs):
                    try:
                        self._journal.record(job)
                    except JournalWriteError as exc:
                        for refused in jobs[index:]:  # kept input and request: never accepted
                            self._journal.forget(refused.id)
                        raise self._recorder.failed(exc) from None  # those before it run
                    self._index.add(job)
                    self._dispatch.lane(pipeline).waiting.append(job)
                    self._notify(job)
                    views.append(self._view(job))
            finally:
                self._lock.notify_all()
            return views

    def get(self, job_id: str) -> JobView:
        with self._lock:
            return self._view(self._index.find(job_id))

    def output_problem(self) -> str | None:
        """Why results cannot be written now (a full or read-only volume), looked at now:
        what the last write met, else what the disk says."""
        return self._recorder.output_problem()

    @property
    def storage_problem(self) -> str | None:
        """What the last write met (jobs/recorder.py): no job starts while it lasts."""
        return self._recorder.problem

    def cancel(self, job_id: str, force: bool = False) -> JobView:
        """Cancel a waiting job now; ask a running one to stop at its next stage, or with
        `force` at once where its worker can abort (a model process restarts)."""
        worker = None
        with self._lock:
            job = self._index.find(job_id)
            if job.state.finished:
                raise NotCancellable(f"job is already {job.state.value}")
            if job.state is JobState.QUEUED:
                self._dispatch.lanes[job.pipeline].waiting.remove(job)
                self._move(job, JobState.CANCELLED)
                log.info("job %s cancelled while waiting", job.id)
            else:
                job.cancel_requested = True
                worker = job.worker if force else None
            view = self._view(job)
        if worker is not None:
            worker.abort(job_id)
        return view

    def wait(self, job_id: str, timeout: float) -> JobView:
        """Block until the job finishes or `timeout` passes; return its view either way."""
        with self._lock:
            job = self._index.find(job_id)
        job.done.wait(timeout)
        return self.get(job_id)

    def waiting(self) -> int:
        return sum(len(lane.waiting) for lane in self._dispatch.lanes.values())

    def stats(self) -> dict:
        """The guide's counts over every lane, and each lane's own."""
        with self._lock:
            lanes = self._dispatch.stats()
            return {"queued": self.waiting(), "processing": lanes["processing"],
                    "max_queue_size": self.config.max_queue_size,
                    "max_concurrent": self.config.max_concurrent, "lanes": lanes["lanes"]}

    def workers(self) -> list[dict]:
        """Every worker: pipeline, device, state, its jobs."""
        with self._lock:
            lanes = list(self._dispatch.lanes.values())
        return [worker.describe() for lane in lanes for worker in lane.workers]

    def dispatchers_alive(self) -> int:
        """Threads feeding the workers that are running (one per worker)."""
        return self._dispatch.alive()

    def dispatchers_expected(self) -> int:
        return self._dispatch.expected()

    def janitor_alive(self) -> bool:
        return self._janitor is not None and self._janitor.is_alive()

    @property
    def journal_notice(self) -> str | None:
        return self._journal.damaged if self._journal is not None else None

    # -- what the workers' threads (workers/dispatch.py) ask of the queue, under its lock --

    def begin(self, jobs: list[Job], worker: Any) -> None:
        """`jobs`, taken out of their lane together, run on `worker` (None: none will)."""
        for job in jobs:
            job.worker, job.batch_size = worker, len(jobs)
            self._move(job, JobState.PROCESSING)

    def hand_back(self, job: Job) -> None:
        """A job whose worker was gone before it ran, put back at the head of its lane:
        it waits again, once."""
        job.retried = True
        self._move(job, JobState.QUEUED)
        try:
            self._journal.keep_input(job)  # waiting again: for a restart
        except OSError as exc:
            log.warning("could not keep the image of job %s again: %s", job.id, exc)

    def report(self, jobs: list[Job], stage: str, fraction: float) -> None:
        """A stage of a running batch: each job's progress; a job cancelled meanwhile ends
        now; JobCancelled stops the pipeline once no job of the batch is left."""
        with self._lock:
            for job in jobs:
                if job.state.finished:
                    continue
                if job.cancel_requested:
                    self._dispatch.lanes[job.pipeline].finished(job)
                    self._move(job, JobState.CANCELLED)
                    continue
                changed = stage != job.stage
                job.stage, job.progress = stage, min(max(float(fraction), 0.0), 1.0)
                if changed:
                    self._notify(job)
            if all(job.state.finished for job in jobs):
                raise JobCancelled()

    # -- what housekeeping (jobs/housekeeping.py) asks of the queue, under its lock ----------

    def adopt(self, job: Job, *, save: bool = False, expires: bool = True) -> None:
        """Take in a job read back at a restart, in the state it was built in: a waiting
        one waits again in its lane, a finished one joins the expiry order unless not
        `expires` (a row this release cannot read stays for the release that wrote it).
        `save`: write it to the journal (a job the journal had lost)."""
        self._index.add(job)
        if job.state is JobState.QUEUED:
            self._dispatch.lane(job.pipeline).waiting.append(job)
        elif job.state.finished and expires:
            self._index.finished(job)
        if save:
            self._recorder.save(job)

    def end(self, job: Job, state: JobState, *, result: Result | None = None,
            error: str | None = None, error_kind: FailureKind | None = None,
            at: float | None = None) -> None:
        """Finish a job through the allowed moves: a worker's outcome (workers/dispatch.py),
        or a restart's verdict (its result file was written, it was interrupted, or its
        input is lost)."""
        job.result, job.error, job.error_kind = result, error, error_kind
        if job.state is JobState.QUEUED:
            lane = self._dispatch.lanes.get(job.pipeline)
            if lane is not None and job in lane.waiting:
                lane.waiting.remove(job)
        self._move(job, state, at)

    def forget(self, job_ids: Sequence[str]) -> None:
        self._index.forget(job_ids)

    def knows(self, job_id: str) -> bool:
        return self._index.knows(job_id)

    def unfinished(self, job_id: str) -> bool:
        return self._index.unfinished(job_id)

    def waiting_ids(self) -> set[str]:
        return {job.id for lane in self._dispatch.lanes.values() for job in lane.waiting}

    def restored_count(self) -> int:
        return len(self._index)

    def take_due(self, limit: int) -> list[Job]:
        """Up to `limit` jobs finished more than RESULT_TTL_SECONDS ago, oldest first, taken
        out of the queue (their ids answered 410 from now on); their files are the
        caller's to remove."""
        with self._lock:
            return self._index.take_due(limit)

    def retry_storage(self) -> None:
        """Whether OUTPUT_DIR can take results: a full or read-only volume stops new work;
        once it can, what the journal missed is written and the queue goes on by itself."""
        problem = self._recorder.check()
        with self._lock:
            if self._recorder.retry(problem):
                self._lock.notify_all()

    # -- internals --------------------------------------------------------------------

    def _view(self, job: Job) -> JobView:
        return JobView.of(job, self._dispatch.lanes.get(job.pipeline))

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

    def _move(self, job: Job, state: JobState, at: float | None = None) -> None:
        """Every state change: the job, then the journal (jobs/recorder.py: a write that
        fails is kept for the janitor to write later), then the observers."""
        job.move_to(state, at)
        if state.finished:
            self._index.finished(job)
        self._recorder.save(job)
        self._notify(job)
        self._recorder.moved(job, state)
        if state in (JobState.FAILED, JobState.CANCELLED):
            self._unfinished_files.append(job.id)  # the janitor removes them, off the lock

    def _janitor_loop(self) -> None:
        """Revive dead worker threads, check the disk, write what the journal missed,
        expire old jobs, remove what failed jobs left; a failure is logged, never the end
        of it."""
        while not self._stopping.wait(self.config.janitor_interval):
            try:
                with self._lock:
                    self._dispatch.revive_dead()
                self.retry_storage()
                housekeeping.expire_due(self, self._journal)
                with self._lock:
                    job_ids, self._unfinished_files = set(self._unfinished_files), []
                remove_job_files(self.output_dir, job_ids)  # off the lock
            except Exception:  # noqa: BLE001 - e.g. a file that cannot be deleted
                log.exception("janitor: cleaning up failed; trying again")
