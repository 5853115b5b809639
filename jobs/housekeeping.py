"""The queue's work outside serving: restoring the journal's jobs at start, watching the
disk, and expiring old results, each without holding up a status read.

Restoring trusts the files on disk over a journal that was damaged or lost: a result file
with no row is taken back as a completed job, never deleted as an orphan. Expiry takes
jobs in the order they finished from a heap, in bounded batches, and deletes their files
and rows outside the queue's lock on the journal's state index.
"""

from __future__ import annotations

import heapq
import logging
import mimetypes
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.base import PipelineError, Result

from . import rebuild
from .journal import REQUEST_SUFFIX
from .storage import storage_problem

if TYPE_CHECKING:
    from .journal import Journal
    from queue_manager import JobQueue

log = logging.getLogger("queue_manager")

EXPIRED_IDS_KEPT = 100_000  # ids still answered 410 rather than 404
EXPIRE_BATCH = 500  # jobs expired per hold of the queue's lock
MESH_SUFFIXES = (".glb", ".ply", ".zip", ".stl", ".usdz")


def restore(queue: "JobQueue", journal: "Journal") -> None:
    """The journal's jobs, as the last process left them (under the queue's lock):
    finished ones keep their results, queued ones wait again, running ones fail with the
    reason, unless their result file was written (then they completed)."""
    from queue_manager import JOB_ID_PATTERN, Job, JobState

    records, expired, unreadable = journal.records()
    queue._expired.update(dict.fromkeys(expired[-EXPIRED_IDS_KEPT:]))
    files = _result_files(queue.output_dir, JOB_ID_PATTERN)
    # rows this release cannot read: failed with the reason, their files untouched
    rebuild.unreadable_rows(queue, unreadable, files)
    for record in records:
        job = Job(pipeline=record.pipeline, options=record.options, image=None,
                  id=record.id, created_at=record.created_at,
                  state=JobState(record.state), started_at=record.started_at,
                  finished_at=record.finished_at, result=record.result,
                  error=record.error, error_status=record.error_status)
        queue._jobs[job.id] = job
        if job.state is JobState.QUEUED:
            try:  # its bytes too: kept again if the job is handed back (issue 31 item 5)
                job.image, job.source = journal.load_input(job.id, queue.video_limits)
                queue._lane(job.pipeline).waiting.append(job)
                continue
            except (OSError, PipelineError) as exc:  # gone, damaged, or now over a limit
                why = f" ({exc})" if isinstance(exc, PipelineError) else ""
                job.error = ("the server restarted before this job started and could not "
                             f"reopen its input{why}; submit it again")
        elif job.state is JobState.PROCESSING and job.id in files:
            job.result = _recovered(files.pop(job.id))  # written, then the process died
            job.state, job.stage, job.progress = JobState.COMPLETED, "completed", 1.0
            job.finished_at = job.result.path.stat().st_mtime
            queue._save(job)
        elif job.state is JobState.PROCESSING:
            job.error = ("interrupted: the server restarted while this job ran (killed, "
                         "probably out of memory, or stopped); submit it again")
        if job.state.finished:
            files.pop(job.id, None)
            job.stage, job.progress = job.state.value, float(job.result is not None)
            job.done.set()
            heapq.heappush(queue._finished, (job.finished_at or 0.0, job.id))
            continue
        job.error_status = 500
        job.state = JobState.PROCESSING  # both end as failed, through the allowed move
        queue._move(job, JobState.FAILED)
    # a journal found damaged or missing: the jobs from their kept requests (issue 31 item 6)
    rebuild.from_kept_requests(queue, journal, files, _recovered)
    _unowned_files(queue, journal, files)
    if queue._jobs:
        log.info("journal: %d jobs restored, %d waiting", len(queue._jobs), queue.waiting())


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
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Result(path, media_type, f"result{path.suffix}", {})


def _unowned_files(queue: "JobQueue", journal: "Journal", files: dict[str, Path]) -> None:
    """Files that no row accounts for. A whole journal that held jobs knows them for left
    over (a crash between writing and recording); otherwise they are what the journal
    lost, and come back as completed jobs. Kept images follow the same rule."""
    from queue_manager import Job, JobState

    for job_id, path in files.items():
        if journal.trusted or job_id in queue._expired:
            path.unlink(missing_ok=True)
            continue
        finished = path.stat().st_mtime
        job = Job(pipeline="sam3d" if path.suffix in MESH_SUFFIXES else "lotus", options=None,
                  image=None, id=job_id, created_at=finished, state=JobState.COMPLETED,
                  started_at=finished, finished_at=finished, result=_recovered(path),
                  stage="completed", progress=1.0)
        job.done.set()
        queue._jobs[job_id] = job
        heapq.heappush(queue._finished, (finished, job_id))
        queue._save(job)
    if files and not journal.trusted:
        log.warning("journal: %d result file(s) had no record and were taken back as "
                    "completed jobs", len(files))
    waiting = {job.id for lane in queue._lanes.values() for job in lane.waiting}
    for path in journal.inputs.iterdir():
        job_id = path.name.split(".", 1)[0]
        if path.name.endswith(".tmp"):  # a request being written when the process died
            path.unlink(missing_ok=True)
        elif path.name.endswith(REQUEST_SUFFIX):  # an unfinished job's lasts until its end
            job = queue._jobs.get(job_id)
            if job is not None and not job.state.finished:
                continue
            if job is not None or journal.trusted or job_id in queue._expired:
                path.unlink(missing_ok=True)
        elif job_id not in waiting and (journal.trusted or job_id in queue._jobs):
            path.unlink(missing_ok=True)


def check_storage(queue: "JobQueue") -> None:
    """Whether OUTPUT_DIR can take results: a full or read-only volume stops new work;
    once it can, what the journal missed is written and the queue goes on by itself."""
    problem = storage_problem(queue.output_dir, queue.min_free_bytes)
    with queue._lock:
        if problem is None:
            for job in list(queue._unsaved.values()):
                queue._save(job)
            if not queue._unsaved:
                if queue.storage_problem is not None:
                    log.info("OUTPUT_DIR is writable again; jobs go on")
                    queue.storage_problem = None
                    queue._lock.notify_all()
                return
            problem = queue.storage_problem
        if queue.storage_problem is None:
            log.error("%s; new jobs are refused and waiting ones wait", problem)
        queue.storage_problem = problem


def expire_due(queue: "JobQueue", journal: "Journal") -> None:
    """Expire the jobs finished more than RESULT_TTL_SECONDS ago, a batch per hold of the
    lock; their files and rows go outside it."""
    while True:
        due = []
        with queue._lock:
            now = time.time()
            while queue._finished and len(due) < EXPIRE_BATCH:
                finished_at, job_id = queue._finished[0]
                if now - finished_at <= queue.result_ttl_seconds:
                    break
                heapq.heappop(queue._finished)
                job = queue._jobs.get(job_id)
                if job is None or job.finished_at != finished_at:
                    continue
                del queue._jobs[job_id]
                queue._expired[job_id] = None
                due.append(job)
            while len(queue._expired) > EXPIRED_IDS_KEPT:
                queue._expired.popitem(last=False)
        if not due:
            return
        for job in due:
            queue._remove_files(job.result)
            journal.forget(job.id)  # its kept input and request
        journal.expire([job.id for job in due], keep=EXPIRED_IDS_KEPT)
        if len(due) < EXPIRE_BATCH:
            return
