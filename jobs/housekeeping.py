"""The queue's work outside serving: restoring the journal's jobs at start and expiring old
results, each without holding up a status read. Every state change goes through the queue
(`adopt`, `end`, `take_due`): this module never sets a job's state.

Restoring trusts the files on disk over a journal that was damaged or lost: a result file
with no row is taken back as a completed job, never deleted as an orphan. Expiry takes
jobs in the order they finished from a heap, in bounded batches, and deletes their files
and rows outside the queue's lock on the journal's state index.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.base import Result
from pipelines.errors import FailureKind, PipelineError
from pipelines.table import result_format

from . import rebuild
from .index import EXPIRED_IDS_KEPT
from .journal import REQUEST_SUFFIX
from .state import JOB_ID_PATTERN, Job, JobState
from .storage import remove_result

if TYPE_CHECKING:
    from .journal import Journal
    from queue_manager import JobQueue

log = logging.getLogger("queue_manager")

EXPIRE_BATCH = 500  # jobs expired per hold of the queue's lock


def restore(queue: "JobQueue", journal: "Journal") -> None:
    """The journal's jobs, as the last process left them (under the queue's lock):
    finished ones keep their results, queued ones wait again, running ones fail with the
    reason, unless their result file was written (then they completed). Each is built in
    its recorded state and handed to the queue, which makes every move after that."""
    records, expired, unreadable = journal.records()
    queue.forget(expired[-EXPIRED_IDS_KEPT:])
    files = _result_files(queue.output_dir, JOB_ID_PATTERN)
    # rows this release cannot read: failed with the reason, their files untouched
    rebuild.unreadable_rows(queue, unreadable, files)
    for record in records:
        job = Job.restored(record)
        queue.adopt(job)
        if job.state is JobState.QUEUED:
            try:  # its bytes too: kept again if the job is handed back (issue 31 item 5)
                job.image, job.source = journal.load_input(job.id, queue.config.video_limits)
            except (OSError, PipelineError) as exc:  # gone, damaged, or now over a limit
                why = f" ({exc})" if isinstance(exc, PipelineError) else ""
                queue.end(job, JobState.FAILED, error_kind=FailureKind.INTERNAL, error=(
                    "the server restarted before this job started and could not "
                    f"reopen its input{why}; submit it again"))
        elif job.state is JobState.PROCESSING and job.id in files:
            path = files.pop(job.id)  # written, then the process died
            queue.end(job, JobState.COMPLETED, result=_recovered(path),
                      at=path.stat().st_mtime)
        elif job.state is JobState.PROCESSING:
            queue.end(job, JobState.FAILED, error_kind=FailureKind.INTERNAL, error=(
                "interrupted: the server restarted while this job ran (killed, "
                "probably out of memory, or stopped); submit it again"))
        else:
            files.pop(job.id, None)
    # a journal found damaged or missing: the jobs from their kept requests (issue 31 item 6)
    rebuild.from_kept_requests(queue, journal, files, _recovered)
    _unowned_files(queue, journal, files)
    if queue.restored_count():
        log.info("journal: %d jobs restored, %d waiting", queue.restored_count(),
                 queue.waiting())


def _result_files(folder: Path, pattern) -> dict[str, Path]:
    """Result files by job id; a write's temporary file is removed (never complete)."""
    files = {}
    for path in folder.iterdir():
        job_id = path.name.lstrip(".").split(".", 1)[0]
        if not path.is_file() or not pattern.match(job_id):
            continue
        if path.name.startswith("."):
            path.unlink(missing_ok=True)
        else:
            files[job_id] = path
    return files


def _recovered(path: Path) -> Result:
    """A result file's Result, its media type from the model table's row for its format."""
    found = result_format(path)
    media_type = (found[1].media_type if found else mimetypes.guess_type(path.name)[0]
                  or "application/octet-stream")
    return Result(path, media_type, f"result{path.suffix}", {})


def _owner(path: Path) -> str:
    """The model that writes files like `path` (the model table; a zip by what it holds:
    an OBJ zip is SAM 3D's, a video job's zip Lotus's); Lotus for a file no row names."""
    found = result_format(path)
    return found[0] if found else "lotus"


def _unowned_files(queue: "JobQueue", journal: "Journal", files: dict[str, Path]) -> None:
    """Files that no row accounts for. A whole journal that held jobs knows them for left
    over (a crash between writing and recording); otherwise they are what the journal
    lost, and come back as completed jobs. Kept images follow the same rule."""
    for job_id, path in files.items():
        if journal.trusted or queue.knows(job_id):
            path.unlink(missing_ok=True)
            continue
        finished = path.stat().st_mtime
        job = Job(pipeline=_owner(path), options=None,
                  image=None, id=job_id, created_at=finished, state=JobState.COMPLETED,
                  started_at=finished, finished_at=finished, result=_recovered(path),
                  stage="completed", progress=1.0)
        job.done.set()
        queue.adopt(job, save=True)
    if files and not journal.trusted:
        log.warning("journal: %d result file(s) had no record and were taken back as "
                    "completed jobs", len(files))
    waiting = queue.waiting_ids()
    for path in journal.inputs.iterdir():
        job_id = path.name.split(".", 1)[0]
        if path.name.endswith(".tmp"):  # a request being written when the process died
            path.unlink(missing_ok=True)
        elif path.name.endswith(REQUEST_SUFFIX):  # an unfinished job's lasts until its end
            if queue.unfinished(job_id):
                continue
            if journal.trusted or queue.knows(job_id):
                path.unlink(missing_ok=True)
        elif job_id not in waiting and (journal.trusted or queue.knows(job_id)):
            path.unlink(missing_ok=True)


def expire_due(queue: "JobQueue", journal: "Journal") -> None:
    """Expire the jobs finished more than RESULT_TTL_SECONDS ago, a batch per hold of the
    queue's lock (`take_due`); their files and rows go outside it."""
    while True:
        due = queue.take_due(EXPIRE_BATCH)
        if not due:
            return
        for job in due:
            remove_result(job.result)
            journal.forget(job.id)  # its kept input and request
        journal.expire([job.id for job in due], keep=EXPIRED_IDS_KEPT)
        if len(due) < EXPIRE_BATCH:
            return
