"""The queue's writes to its journal (jobs/journal.py), and what a write that fails means.

Every job the queue accepts keeps its input until it starts and its request until its end is
written; every state change is recorded. A write that fails for lack of space or on a
read-only volume is kept (`unsaved`) and sets `problem`: the queue refuses new jobs (507) and
starts none until the janitor finds OUTPUT_DIR writable again (`retry`), which writes what
was missed. The queue (queue_manager.py) calls each method under its lock, except `check`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .journal import Journal, JournalWriteError
from .state import Job, JobState, StorageUnavailable
from .storage import is_disk_error, storage_problem

log = logging.getLogger("queue_manager")


class JobRecorder:
    def __init__(self, output_dir: Path, min_free_bytes: int):
        self.output_dir, self.min_free_bytes = output_dir, min_free_bytes
        self.journal: Journal | None = None  # opened at the queue's start
        self.problem: str | None = None  # why results cannot be written now
        self._unsaved: dict[str, Job] = {}  # changes the journal could not take yet

    def open(self) -> Journal:
        self.journal = Journal(self.output_dir)
        return self.journal

    def output_problem(self) -> str | None:
        """Why results cannot be written now (a full or read-only volume), looked at now:
        what the last write met, else what the disk says."""
        return self.problem or self.check()

    def check(self) -> str | None:
        """What the disk says now (no lock needed)."""
        return storage_problem(self.output_dir, self.min_free_bytes)

    def keep_input(self, job: Job) -> None:
        """A new job's input and request, for a restart; StorageUnavailable if they cannot
        be written."""
        try:
            self.journal.keep_input(job)
        except OSError as exc:
            raise self.failed(exc) from None

    def save(self, job: Job) -> None:
        """The job as it is now; a write that fails is kept for `retry`."""
        try:
            self.journal.record(job)
        except JournalWriteError as exc:
            self._unsaved[job.id] = job
            self.failed(exc)
        else:
            self._unsaved.pop(job.id, None)

    def moved(self, job: Job, state: JobState) -> None:
        """After a move (saved): a started job no longer needs its kept input (if the
        process dies now, the job fails rather than run twice); its kept request lasts
        until its end is written, for a journal found damaged."""
        if state is JobState.QUEUED:
            return
        try:
            self.journal.input_path(job.id).unlink(missing_ok=True)
            if state.finished and job.id not in self._unsaved:  # the journal has its end
                self.journal.request_path(job.id).unlink(missing_ok=True)
        except OSError as exc:  # a read-only volume: the janitor's sweep tries again
            log.warning("could not remove the kept image of job %s: %s", job.id, exc)

    def failed(self, exc: OSError) -> StorageUnavailable:
        """A write failed: if for lack of space or a read-only volume, the queue stops
        taking work until the janitor finds OUTPUT_DIR writable again."""
        reason = self.check()
        if reason is None:
            reason = ("OUTPUT_DIR could not be written: "
                      f"{'disk full or read-only' if is_disk_error(exc) else exc}")
        if self.problem is None:
            log.error("%s; new jobs are refused and waiting ones wait", reason)
        self.problem = reason
        return StorageUnavailable(reason)

    def retry(self, problem: str | None) -> bool:
        """The janitor's look at the disk (`check`, taken outside the lock): once it can
        take writes, what the journal missed is written. True when work may go on again
        after a problem (the queue wakes its workers)."""
        if problem is None:
            for job in list(self._unsaved.values()):
                self.save(job)
            if not self._unsaved:
                if self.problem is not None:
                    log.info("OUTPUT_DIR is writable again; jobs go on")
                    self.problem = None
                    return True
                return False
            problem = self.problem
        if self.problem is None:
            log.error("%s; new jobs are refused and waiting ones wait", problem)
        self.problem = problem
        return False
