"""Jobs, their life cycle and the bounded queue, drained by one thread per model worker.

A job moves through one explicit state machine:

    queued -> processing -> completed | failed | cancelled
    queued -> cancelled
    processing -> queued     (only when its worker was gone before it ran: retried once)

Every change goes through `JobQueue._move`, under the queue's one lock, so a reader always
sees a consistent job, and is written to the journal (jobs/journal.py), so a restart resumes
where the last process stopped. Each pipeline has a lane (workers/lanes.py) of its own; a
job is "processing" only while a worker runs it. The queue knows pipelines only through
`pipelines.base.Pipeline` and its workers through their `run`, and knows nothing of HTTP.
What happens at start-up and in the background (restoring, expiry) is in jobs/housekeeping.py.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

from jobs import housekeeping
from jobs.state import (ALLOWED_MOVES, JOB_ID_PATTERN, Job, JobExpired, JobNotFound, JobState, JobView,  # noqa: F401
                        NotCancellable, QueueFull, StorageUnavailable)
from jobs.journal import Journal, JournalWriteError
from pipelines.base import Batching, JobCancelled, Pipeline, Result, TimeLimited, public_message
from pipelines.errors import FailureKind, NotLoaded, PipelineError
from pipelines.video import VideoLimits
from jobs.storage import OutputDirLock, is_disk_error, storage_problem
from workers.in_process import InProcessModel
from workers.lanes import Lane
from workers.worker import WorkerLost, WorkerState

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 64 * 2**20  # below this OUTPUT_DIR counts as full: no job could finish


Observer = Callable[[JobView], None]
"""Told of every job's submission, state change and stage change, under the queue's lock:
it must be quick and must not block (metrics, webhooks)."""


class JobQueue:
    """A bounded FIFO of jobs, one lane per pipeline, each drained by its workers.

    `workers` gives each pipeline's model workers (workers/pool.py); a pipeline without
    any runs in this process on `max_concurrent` slots (MODEL_PROCESS=0 and the tests),
    batching up to `batch_limit` jobs where the pipeline has a batch path.
    """

    def __init__(self, pipelines: Mapping[str, Pipeline], output_dir: Path, *,
                 workers: Mapping[str, Sequence[Any]] | None = None,
                 max_queue_size: int = 10, max_concurrent: int = 1, batch_limit: int = 1,
                 result_ttl_seconds: float = 3600.0, janitor_interval: float = 0.5,
                 min_free_bytes: int = MIN_FREE_BYTES, observers: Sequence[Observer] = (),
                 video_limits: VideoLimits = VideoLimits(), gather_seconds: float = 0.0):
        self._pipelines = pipelines
        self._worker_map = dict(workers or {})
        self._observers = list(observers)
        self.output_dir = Path(output_dir)
        self.max_queue_size = max_queue_size
        self.max_concurrent = max_concurrent
        self.batch_limit = batch_limit
        self.result_ttl_seconds = result_ttl_seconds
        self.min_free_bytes = min_free_bytes
        self.video_limits = video_limits  # a video kept for a restart is probed again under them
        self._janitor_interval = janitor_interval
        # How long a batching worker waits after a lane's head job arrived for jobs that may
        # share its pass: 0 over HTTP (a busy worker's lane fills while it runs); the RunPod
        # worker's jobs arrive together, as concurrent calls (handler.py).
        self.gather_seconds = gather_seconds
        self._lock = threading.Condition()
        self._lanes: dict[str, Lane] = {}
        self._dispatchers: dict[tuple[str, int], threading.Thread] = {}
        self._jobs: dict[str, Job] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._finished: list[tuple[float, str]] = []  # heap of (finished_at, id): expiry order
        self._unsaved: dict[str, Job] = {}  # changes the journal could not take yet
        self._unfinished_files: list[str] = []  # ids of failed or cancelled jobs to clean
        self._stopping = threading.Event()
        self._started = False
        self._janitor: threading.Thread | None = None
        self._reserved = 0  # slots held by submissions still fetching or decoding
        self._dir_lock = OutputDirLock(self.output_dir)
        self._journal: Journal | None = None
        self.storage_problem: str | None = None  # why results cannot be written now

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Lock OUTPUT_DIR (OutputDirInUse if another server has it), restore the journal's
        jobs, start the workers' threads and the janitor."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._dir_lock.acquire()
        self._journal = Journal(self.output_dir)
        served = getattr(self._pipelines, "status", lambda: self._pipelines)()
        with self._lock:
            for name in sorted({*self._worker_map, *served}):
                self._lane(name)
            housekeeping.restore(self, self._journal)
            self._started = True
            for lane in self._lanes.values():
                self._start_dispatchers(lane)
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
        for thread in [*self._dispatchers.values(), self._janitor]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        for lane in self._lanes.values():
            for worker in lane.workers:
                worker.stop()  # a model process's job still running waits again
        for thread in self._dispatchers.values():
            thread.join(1.0)
        busy = [t for t in self._dispatchers.values() if t.is_alive()]
        if busy:  # in-process jobs: they end with the process
            log.warning("stopping with %d job(s) still running: they will show as interrupted",
                        len(busy))
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
            if self.waiting() + self._reserved + count > self.max_queue_size:
                raise QueueFull(f"queue is full ({self.max_queue_size} jobs waiting)")
            self._reserved += count
        jobs: list[Job] = []
        try:
            for made in inputs:
                job = Job(pipeline, *(made() if callable(made) else made))
                try:
                    self._journal.keep_input(job)  # until it starts: for a restart
                except OSError as exc:
                    raise self._storage_failed(exc) from None
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
                        raise self._storage_failed(exc) from None  # those before it run
                    self._jobs[job.id] = job
                    self._lane(pipeline).waiting.append(job)
                    self._notify(job)
                    views.append(self._view(job))
            finally:
                self._lock.notify_all()
            return views

    def get(self, job_id: str) -> JobView:
        with self._lock:
            return self._view(self._find(job_id))

    def output_problem(self) -> str | None:
        """Why results cannot be written now (a full or read-only volume), looked at now:
        what the last write met, else what the disk says."""
        return self.storage_problem or storage_problem(self.output_dir, self.min_free_bytes)

    def cancel(self, job_id: str, force: bool = False) -> JobView:
        """Cancel a waiting job now; ask a running one to stop at its next stage, or with
        `force` at once where its worker can abort (a model process restarts)."""
        worker = None
        with self._lock:
            job = self._find(job_id)
            if job.state.finished:
                raise NotCancellable(f"job is already {job.state.value}")
            if job.state is JobState.QUEUED:
                self._lanes[job.pipeline].waiting.remove(job)
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
            job = self._find(job_id)
        job.done.wait(timeout)
        return self.get(job_id)

    def waiting(self) -> int:
        return sum(len(lane.waiting) for lane in self._lanes.values())

    def stats(self) -> dict:
        """The guide's counts over every lane, and each lane's own."""
        with self._lock:
            return {
                "queued": self.waiting(),
                "processing": sum(len(lane.running) for lane in self._lanes.values()),
                "max_queue_size": self.max_queue_size,
                "max_concurrent": self.max_concurrent,
                "lanes": {name: lane.stats() for name, lane in sorted(self._lanes.items())},
            }

    def workers(self) -> list[dict]:
        """Every worker: pipeline, device, state, its jobs."""
        with self._lock:
            lanes = list(self._lanes.values())
        return [worker.describe() for lane in lanes for worker in lane.workers]

    def dispatchers_alive(self) -> int:
        """Threads feeding the workers that are running (one per worker)."""
        return sum(thread.is_alive() for thread in self._dispatchers.values())

    def dispatchers_expected(self) -> int:
        return len(self._dispatchers)

    def janitor_alive(self) -> bool:
        return self._janitor is not None and self._janitor.is_alive()

    @property
    def journal_notice(self) -> str | None:
        return self._journal.damaged if self._journal is not None else None

    # -- what housekeeping (jobs/housekeeping.py) asks of the queue, under its lock ----------

    def adopt(self, job: Job, *, save: bool = False, expires: bool = True) -> None:
        """Take in a job read back at a restart, in the state it was built in: a waiting
        one waits again in its lane, a finished one joins the expiry order unless not
        `expires` (a row this release cannot read stays for the release that wrote it).
        `save`: write it to the journal (a job the journal had lost)."""
        self._jobs[job.id] = job
        if job.state is JobState.QUEUED:
            self._lane(job.pipeline).waiting.append(job)
        elif job.state.finished and expires:
            heapq.heappush(self._finished, (job.finished_at or 0.0, job.id))
        if save:
            self._save(job)

    def end(self, job: Job, state: JobState, *, result: Result | None = None,
            error: str | None = None, error_kind: FailureKind | None = None,
            at: float | None = None) -> None:
        """Finish an adopted job through the allowed moves (a restart's verdict: its result
        file was written, or it was interrupted, or its input is lost)."""
        job.result, job.error, job.error_kind = result, error, error_kind
        if job.state is JobState.QUEUED:
            lane = self._lanes.get(job.pipeline)
            if lane is not None and job in lane.waiting:
                lane.waiting.remove(job)
        self._move(job, state, at)

    def forget(self, job_ids: Sequence[str]) -> None:
        """Ids of expired jobs: answered 410, not 404, while EXPIRED_IDS_KEPT allow."""
        self._expired.update(dict.fromkeys(job_ids))
        while len(self._expired) > housekeeping.EXPIRED_IDS_KEPT:
            self._expired.popitem(last=False)

    def knows(self, job_id: str) -> bool:
        """A job of this queue, or one that expired."""
        return job_id in self._jobs or job_id in self._expired

    def unfinished(self, job_id: str) -> bool:
        """A job of this queue that has not ended (its kept request is still needed)."""
        job = self._jobs.get(job_id)
        return job is not None and not job.state.finished

    def waiting_ids(self) -> set[str]:
        return {job.id for lane in self._lanes.values() for job in lane.waiting}

    def restored_count(self) -> int:
        return len(self._jobs)

    def take_due(self, limit: int) -> list[Job]:
        """Up to `limit` jobs finished more than RESULT_TTL_SECONDS ago, oldest first, taken
        out of the queue (their ids answered 410 from now on); their files are the
        caller's to remove."""
        due: list[Job] = []
        with self._lock:
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

    def retry_storage(self) -> None:
        """Whether OUTPUT_DIR can take results: a full or read-only volume stops new work;
        once it can, what the journal missed is written and the queue goes on by itself."""
        problem = storage_problem(self.output_dir, self.min_free_bytes)
        with self._lock:
            if problem is None:
                for job in list(self._unsaved.values()):
                    self._save(job)
                if not self._unsaved:
                    if self.storage_problem is not None:
                        log.info("OUTPUT_DIR is writable again; jobs go on")
                        self.storage_problem = None
                        self._lock.notify_all()
                    return
                problem = self.storage_problem
            if self.storage_problem is None:
                log.error("%s; new jobs are refused and waiting ones wait", problem)
            self.storage_problem = problem

    # -- lanes and their workers ---------------------------------------------------------

    def _lane(self, name: str) -> Lane:
        """`name`'s lane, made on first use (a restored job may name any pipeline)."""
        lane = self._lanes.get(name)
        if lane is None:
            workers = self._worker_map.get(name) or [
                InProcessModel(name, lambda: self._pipelines.get(name),
                                lambda: getattr(self._pipelines, "loading", False),
                                self.batch_limit, slot)
                for slot in range(self.max_concurrent)]
            for worker in workers:
                worker.on_change = self._wake
            lane = self._lanes[name] = Lane(name, workers)
            if self._started:
                self._start_dispatchers(lane)
        return lane

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _start_dispatchers(self, lane: Lane) -> None:
        for index, worker in enumerate(lane.workers):
            thread = threading.Thread(target=self._dispatch, args=(lane, worker),
                                      name=f"queue-dispatcher-{lane.name}-{index}", daemon=True)
            self._dispatchers[(lane.name, index)] = thread
            thread.start()

    def _dispatch(self, lane: Lane, worker) -> None:
        """One worker's thread: take the lane's next job(s) when the worker is ready and
        the disk can take results, run them, settle each."""
        while True:
            with self._lock:
                jobs = self._next_jobs(lane, worker)
                if jobs is None:
                    return
            self._execute(lane, worker, jobs)

    def _next_jobs(self, lane: Lane, worker) -> list[Job] | None:
        while not self._stopping.is_set():
            if lane.waiting and self.storage_problem is None:
                if worker.state is WorkerState.READY:
                    if (wait := self._gathering(lane, worker)) > 0:
                        self._lock.wait(wait)
                        continue
                    self._size_up(lane)
                    jobs = lane.take(worker.batch_limit)
                    for job in jobs:
                        job.worker, job.batch_size = worker, len(jobs)
                        self._move(job, JobState.PROCESSING)
                    return jobs
                if lane.all_failed():  # nothing will ever run them: say why
                    job = lane.take(1)[0]
                    self._move(job, JobState.PROCESSING)
                    self._settle(lane, job, NotLoaded(
                        f"model {lane.name!r} is not loaded: {worker.reason}"))
                    continue
            self._lock.wait(0.25)  # worker states change without telling (in-process)
        return None

    def _gathering(self, lane: Lane, worker) -> float:
        """Seconds a batching worker still waits for jobs to join its lane's head job
        (`gather_seconds` after the head arrived, or until a batch is full); 0: take now."""
        if self.gather_seconds <= 0 or len(lane.waiting) >= worker.batch_limit:
            return 0.0
        return lane.waiting[0].created_at + self.gather_seconds - time.time()

    def _size_up(self, lane: Lane) -> None:
        """Ask the (now loaded) pipeline what each waiting job may share and may take."""
        pipeline = self._pipelines.get(lane.name)
        for job in lane.waiting:
            if job.sized or pipeline is None:
                continue
            job.sized = True
            if isinstance(pipeline, Batching):
                job.batch_key = pipeline.batch_key(job.options, job.image)
            if isinstance(pipeline, TimeLimited):
                job.time_limit = pipeline.time_limit(job.options, job.image)

    def _execute(self, lane: Lane, worker, jobs: list[Job]) -> None:
        for job in jobs:
            log.info("job %s started: %s %s on %s%s", job.id, lane.name, _output_of(job.options),
                     worker.label, f" (batch of {len(jobs)})" if len(jobs) > 1 else "")
        items = [(job.options, job.image, self.output_dir / job.id) for job in jobs]
        limits = [job.time_limit for job in jobs if job.time_limit]
        try:
            outcomes = worker.run(items, lambda stage, fraction: self._report(jobs, stage, fraction),
                                  [job.id for job in jobs], sum(limits) if limits else None)
        except (JobCancelled, WorkerLost, PipelineError) as exc:
            outcomes = [exc] * len(jobs)
        with self._lock:
            for job, outcome in reversed(list(zip(jobs, outcomes))):  # put back in order
                self._settle(lane, job, outcome)
            self._lock.notify_all()

    def _settle(self, lane: Lane, job: Job, outcome: Any) -> None:
        """A job's outcome into its state; under the lock."""
        if job.state.finished:  # cancelled at a stage of its batch
            lane.finished(job)
            if isinstance(outcome, Result):
                self.remove_files(outcome)
            return
        if isinstance(outcome, WorkerLost) and not job.cancel_requested and not job.retried:
            job.retried = True
            lane.put_back([job])
            self._move(job, JobState.QUEUED)
            try:
                self._journal.keep_input(job)  # waiting again: for a restart
            except OSError as exc:
                log.warning("could not keep the image of job %s again: %s", job.id, exc)
            log.warning("job %s goes back to the head of its lane: %s", job.id, outcome)
            return
        lane.finished(job)
        if isinstance(outcome, (JobCancelled, WorkerLost)) and job.cancel_requested or (
                job.cancel_requested and isinstance(outcome, Result)):
            self._move(job, JobState.CANCELLED)
            self.remove_files(outcome if isinstance(outcome, Result) else None)
        elif isinstance(outcome, Result):
            job.result, job.progress = outcome, 1.0
            self._move(job, JobState.COMPLETED)
            lane.completed(job.processing_time)
        else:
            kind = outcome.kind if isinstance(outcome, PipelineError) else FailureKind.INTERNAL
            job.error, job.error_kind = public_message(str(outcome)), kind
            self._move(job, JobState.FAILED)
        log.info("job %s %s after %.1f s%s", job.id, job.state.value, job.processing_time or 0,
                 f" ({job.error_kind.value}: {job.error})" if job.error else "")

    def _report(self, jobs: list[Job], stage: str, fraction: float) -> None:
        """A stage of a running batch: each job's progress; a job cancelled meanwhile ends
        now; JobCancelled stops the pipeline once no job of the batch is left."""
        with self._lock:
            for job in jobs:
                if job.state.finished:
                    continue
                if job.cancel_requested:
                    self._lanes[job.pipeline].finished(job)
                    self._move(job, JobState.CANCELLED)
                    continue
                changed = stage != job.stage
                job.stage, job.progress = stage, min(max(float(fraction), 0.0), 1.0)
                if changed:
                    self._notify(job)
            if all(job.state.finished for job in jobs):
                raise JobCancelled()

    # -- internals --------------------------------------------------------------------

    def _find(self, job_id: str) -> Job:
        if not isinstance(job_id, str) or not JOB_ID_PATTERN.match(job_id):
            raise JobNotFound(job_id)
        job = self._jobs.get(job_id)
        if job is not None and self._is_stale(job):
            raise JobExpired(job_id)  # its files go with the janitor's next sweep
        if job is None:
            raise JobExpired(job_id) if job_id in self._expired else JobNotFound(job_id)
        return job

    def _view(self, job: Job) -> JobView:
        lane = self._lanes.get(job.pipeline)
        queued = job.state is JobState.QUEUED and lane is not None
        return JobView(id=job.id, pipeline=job.pipeline, state=job.state,
                       position=lane.position(job) if queued else 0,
                       queue_length=lane.length if lane is not None else 0, stage=job.stage,
                       progress=round(job.progress, 4), processing_time=job.processing_time,
                       result=job.result, error=job.error, error_kind=job.error_kind,
                       cancel_requested=job.cancel_requested, options=job.options,
                       output=_output_of(job.options),
                       waited=None if job.started_at is None else round(
                           job.started_at - job.created_at, 3),
                       worker=getattr(job.worker, "label", None), batch_size=job.batch_size)

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
        """Every state change: the job, then the journal (a started job no longer needs its
        kept image: if the process dies now, the job fails rather than run twice; its kept
        request lasts until its end is written, for a journal found damaged). A
        journal that cannot be written keeps the change for the janitor to write later."""
        job.move_to(state, at)
        if state.finished:
            heapq.heappush(self._finished, (job.finished_at, job.id))
        self._save(job)
        self._notify(job)
        if state is not JobState.QUEUED:
            try:
                self._journal.input_path(job.id).unlink(missing_ok=True)
                if state.finished and job.id not in self._unsaved:  # the journal has its end
                    self._journal.request_path(job.id).unlink(missing_ok=True)
            except OSError as exc:  # a read-only volume: the janitor's sweep tries again
                log.warning("could not remove the kept image of job %s: %s", job.id, exc)
        if state in (JobState.FAILED, JobState.CANCELLED):
            self._unfinished_files.append(job.id)  # the janitor removes them, off the lock

    def _save(self, job: Job) -> None:
        try:
            self._journal.record(job)
        except JournalWriteError as exc:
            self._unsaved[job.id] = job
            self._storage_failed(exc)
        else:
            self._unsaved.pop(job.id, None)

    def _storage_failed(self, exc: OSError) -> StorageUnavailable:
        """A write failed: if for lack of space or a read-only volume, the queue stops
        taking work until the janitor finds OUTPUT_DIR writable again."""
        reason = storage_problem(self.output_dir, self.min_free_bytes)
        if reason is None:
            reason = ("OUTPUT_DIR could not be written: "
                      f"{'disk full or read-only' if is_disk_error(exc) else exc}")
        if self.storage_problem is None:
            log.error("%s; new jobs are refused and waiting ones wait", reason)
        self.storage_problem = reason
        return StorageUnavailable(reason)

    def _janitor_loop(self) -> None:
        """Revive dead worker threads, check the disk, write what the journal missed,
        expire old jobs; a failure is logged, never the end of it."""
        while not self._stopping.wait(self._janitor_interval):
            try:
                with self._lock:
                    self._revive_dead_dispatchers()
                self.retry_storage()
                housekeeping.expire_due(self, self._journal)
                self._remove_unfinished_files()
            except Exception:  # noqa: BLE001 - e.g. a file that cannot be deleted
                log.exception("janitor: cleaning up failed; trying again")

    def _revive_dead_dispatchers(self) -> None:
        for (name, index), thread in list(self._dispatchers.items()):
            if thread.is_alive() or self._stopping.is_set():
                continue
            lane = self._lanes[name]
            worker = lane.workers[index]
            log.error("the dispatcher of %s died; restarting it", worker.label)
            for job in [job for job in lane.running if job.worker is worker]:
                lane.finished(job)
                job.error, job.error_kind = "the queue thread running this job crashed", FailureKind.INTERNAL
                self._move(job, JobState.FAILED)
            thread = threading.Thread(target=self._dispatch, args=(lane, worker),
                                      name=thread.name, daemon=True)
            self._dispatchers[(name, index)] = thread
            thread.start()

    def _is_stale(self, job: Job) -> bool:
        return (job.state.finished and job.finished_at is not None
                and time.time() - job.finished_at > self.result_ttl_seconds)

    def _remove_unfinished_files(self) -> None:
        """What failed or cancelled jobs' workers wrote before they ended (a batch partly
        written, a temporary file of a killed process); outside the lock."""
        with self._lock:
            job_ids, self._unfinished_files = set(self._unfinished_files), []
        if not job_ids:
            return
        for path in self.output_dir.iterdir():  # one pass over the folder for all of them
            if path.name.lstrip(".").split(".", 1)[0] in job_ids:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("could not remove %s: %s", path.name, exc)

    @staticmethod
    def remove_files(result: Any) -> None:
        if result is None:
            return
        try:
            Path(result.path).unlink(missing_ok=True)
        except OSError as exc:  # a read-only or vanished volume: the janitor tries again
            log.warning("could not remove result file %s: %s", Path(result.path).name, exc)


def _output_of(options: Any) -> str:
    """What a job makes, for the log: `glb (textured)`, `ply`, `depth png`, `normal npy`."""
    if hasattr(options, "output_format"):
        textured = options.output_format in ("glb", "obj", "usdz") and getattr(
            options, "with_texture", False)
        return options.output_format + (" (textured)" if textured else "")
    if options is None:
        return "recovered"
    return f"{getattr(options, 'TASK', 'depth')} {getattr(options, 'output', '')}".strip()
