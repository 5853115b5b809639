"""The threads that feed the workers: one per worker of each lane (workers/lanes.py), which
takes the lane's next job(s) when its worker is ready and OUTPUT_DIR can take results, runs
them on the worker, and settles each outcome into its job's state.

Settling decides what an outcome means (a result completes its job, a failure fails it with
its kind, a cancelled job ends cancelled, a job whose worker was gone before it ran goes
back to the head of its lane once); the queue (queue_manager.JobQueue) makes every move:
this module asks it (`begin`, `hand_back`, `end`, `report`) and never sets a job's state.
Everything here runs under the queue's lock except the worker's `run`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from jobs.state import Job, JobState, output_of
from jobs.storage import remove_result
from pipelines.base import Batching, JobCancelled, Pipeline, Result, TimeLimited, public_message
from pipelines.errors import FailureKind, NotLoaded, PipelineError

from .in_process import InProcessModel
from .lanes import Lane
from .worker import WorkerLost, WorkerState

if TYPE_CHECKING:
    from jobs.queue_config import QueueConfig
    from queue_manager import JobQueue

log = logging.getLogger("queue_manager")


class Dispatch:
    """Every lane (one per pipeline, made on first use) and its workers' threads.

    `workers` gives each pipeline's model workers (workers/pool.py); a pipeline without any
    runs in this process on `max_concurrent` slots (MODEL_PROCESS=0, RunPod and the tests),
    batching up to `batch_limit` jobs where the pipeline has a batch path."""

    def __init__(self, queue: "JobQueue", lock: threading.Condition, stopping: threading.Event,
                 pipelines: Mapping[str, Pipeline], workers: Mapping[str, Sequence[Any]],
                 config: "QueueConfig"):
        self._queue, self._lock, self._stopping = queue, lock, stopping
        self._pipelines, self._worker_map, self._config = pipelines, dict(workers), config
        self.lanes: dict[str, Lane] = {}
        self._threads: dict[tuple[str, int], threading.Thread] = {}
        self._started = False

    def lane(self, name: str) -> Lane:
        """`name`'s lane, made on first use (a restored job may name any pipeline)."""
        lane = self.lanes.get(name)
        if lane is None:
            workers = self._worker_map.get(name) or [
                InProcessModel(name, lambda: self._pipelines.get(name),
                                lambda: getattr(self._pipelines, "loading", False),
                                self._config.batch_limit, slot)
                for slot in range(self._config.max_concurrent)]
            for worker in workers:
                worker.on_change = self._wake
            lane = self.lanes[name] = Lane(name, workers)
            if self._started:
                self._start_threads(lane)
        return lane

    def open(self, names) -> None:
        """The lanes of every pipeline with model workers and of `names`; under the lock."""
        for name in sorted({*self._worker_map, *names}):
            self.lane(name)

    def start(self) -> None:
        """Start every lane's threads (and those of lanes made later); under the lock."""
        self._started = True
        for lane in self.lanes.values():
            self._start_threads(lane)

    def stop(self, deadline: float) -> int:
        """Wait until `deadline` (monotonic) for the threads to end, stop the workers (a
        model process's job still running waits again); how many threads are still busy."""
        for thread in self._threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        for lane in self.lanes.values():
            for worker in lane.workers:
                worker.stop()
        for thread in self._threads.values():
            thread.join(1.0)
        return sum(thread.is_alive() for thread in self._threads.values())

    def stats(self) -> dict:
        """Jobs running over every lane, and each lane's counts."""
        return {"processing": sum(len(lane.running) for lane in self.lanes.values()),
                "lanes": {name: lane.stats() for name, lane in sorted(self.lanes.items())}}

    def alive(self) -> int:
        """Threads feeding the workers that are running (one per worker)."""
        return sum(thread.is_alive() for thread in self._threads.values())

    def expected(self) -> int:
        return len(self._threads)

    def revive_dead(self) -> None:
        """A thread that died (a bug, never a job's failure): its worker's jobs fail, and a
        new thread takes the worker's next jobs; under the lock."""
        for (name, index), thread in list(self._threads.items()):
            if thread.is_alive() or self._stopping.is_set():
                continue
            lane = self.lanes[name]
            worker = lane.workers[index]
            log.error("the dispatcher of %s died; restarting it", worker.label)
            for job in [job for job in lane.running if job.worker is worker]:
                lane.finished(job)
                self._queue.end(job, JobState.FAILED, error_kind=FailureKind.INTERNAL,
                                error="the queue thread running this job crashed")
            self._start_thread(lane, index, thread.name)

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _start_threads(self, lane: Lane) -> None:
        for index in range(len(lane.workers)):
            self._start_thread(lane, index, f"queue-dispatcher-{lane.name}-{index}")

    def _start_thread(self, lane: Lane, index: int, name: str) -> None:
        thread = threading.Thread(target=self._feed, args=(lane, lane.workers[index]),
                                  name=name, daemon=True)
        self._threads[(lane.name, index)] = thread
        thread.start()

    def _feed(self, lane: Lane, worker) -> None:
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
            if lane.waiting and self._queue.storage_problem is None:
                if worker.state is WorkerState.READY:
                    if (wait := self._gathering(lane, worker)) > 0:
                        self._lock.wait(wait)
                        continue
                    self._size_up(lane)
                    jobs = lane.take(worker.batch_limit)
                    self._queue.begin(jobs, worker)
                    return jobs
                if lane.all_failed():  # nothing will ever run them: say why
                    job = lane.take(1)[0]
                    self._queue.begin([job], None)
                    self._settle(lane, job, NotLoaded(
                        f"model {lane.name!r} is not loaded: {worker.reason}"))
                    continue
            self._lock.wait(0.25)  # worker states change without telling (in-process)
        return None

    def _gathering(self, lane: Lane, worker) -> float:
        """Seconds a batching worker still waits for jobs to join its lane's head job
        (`gather_seconds` after the head arrived, or until a batch is full); 0: take now."""
        gather = self._config.gather_seconds
        if gather <= 0 or len(lane.waiting) >= worker.batch_limit:
            return 0.0
        return lane.waiting[0].created_at + gather - time.time()

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
            log.info("job %s started: %s %s on %s%s", job.id, lane.name, output_of(job.options),
                     worker.label, f" (batch of {len(jobs)})" if len(jobs) > 1 else "")
        items = [(job.options, job.image, self._queue.output_dir / job.id) for job in jobs]
        limits = [job.time_limit for job in jobs if job.time_limit]
        try:
            outcomes = worker.run(
                items, lambda stage, fraction: self._queue.report(jobs, stage, fraction),
                [job.id for job in jobs], sum(limits) if limits else None)
        except (JobCancelled, WorkerLost, PipelineError) as exc:
            outcomes = [exc] * len(jobs)
        with self._lock:
            for job, outcome in reversed(list(zip(jobs, outcomes))):  # put back in order
                self._settle(lane, job, outcome)
            self._lock.notify_all()

    def _settle(self, lane: Lane, job: Job, outcome: Any) -> None:
        """A job's outcome into its state, through the queue; under the lock."""
        if job.state.finished:  # cancelled at a stage of its batch
            lane.finished(job)
            if isinstance(outcome, Result):
                remove_result(outcome)
            return
        if isinstance(outcome, WorkerLost) and not job.cancel_requested and not job.retried:
            lane.put_back([job])
            self._queue.hand_back(job)
            log.warning("job %s goes back to the head of its lane: %s", job.id, outcome)
            return
        lane.finished(job)
        if job.cancel_requested and isinstance(outcome, (JobCancelled, WorkerLost, Result)):
            self._queue.end(job, JobState.CANCELLED)
            if isinstance(outcome, Result):
                remove_result(outcome)
        elif isinstance(outcome, Result):
            self._queue.end(job, JobState.COMPLETED, result=outcome)
            lane.completed(job.processing_time)
        else:
            kind = outcome.kind if isinstance(outcome, PipelineError) else FailureKind.INTERNAL
            self._queue.end(job, JobState.FAILED, error=public_message(str(outcome)),
                            error_kind=kind)
        log.info("job %s %s after %.1f s%s", job.id, job.state.value, job.processing_time or 0,
                 f" ({job.error_kind.value}: {job.error})" if job.error else "")
