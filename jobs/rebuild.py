"""Jobs the journal cannot tell about, rebuilt from the files each job keeps.

Every accepted job keeps its request (OUTPUT_DIR/.inputs/<id>.request.json: pipeline,
options, created time) until its end is in the journal, and its input (.inputs/<id>) until
it starts (jobs/journal.py). When the journal was found damaged or missing
(`Journal.trusted` is false) those files are the record: a job is completed if its result
file is there, waits again if its input is, and otherwise was running: it fails saying so,
as a job a restart interrupts does (a finished job's result file alone brings it back,
housekeeping._unowned_files). A row the journal holds but cannot read fails with
the reason. Never a 404 for a job a client was told of (issue 31 items 5 and 6).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.errors import FailureKind, PipelineError

from .state import Job, JobState

if TYPE_CHECKING:
    from queue_manager import JobQueue

    from .journal import Journal, KeptRequest, UnreadableRow

log = logging.getLogger("queue_manager")

UNKNOWN_PIPELINE = "unknown"  # a job whose kept request cannot be read
LOST_OUTCOME = ("interrupted: the server restarted while this job ran (killed, probably out "
                "of memory, or stopped) and its job journal was found damaged; submit it "
                "again")
INPUT_LOST = ("the server restarted before this job started and could not reopen its "
              "input{why}; submit it again")


def unreadable_rows(queue: "JobQueue", rows: list["UnreadableRow"],
                    files: dict[str, Path]) -> None:
    """Rows this release cannot read: their jobs answer `failed` with the reason, in memory
    only (the row stays as it is for the release that wrote it) and never expire here;
    their files are not this release's to judge, so they are left untouched."""
    for row in rows:
        files.pop(row.id, None)
        queue.adopt(_ended(Job(pipeline=row.pipeline, options=None, image=None, id=row.id,
                               created_at=row.created_at), JobState.FAILED,
                           error=f"this job's record in the job journal cannot be read "
                                 f"({row.reason}); submit it again"), expires=False)


def from_kept_requests(queue: "JobQueue", journal: "Journal", files: dict[str, Path],
                       recovered) -> int:
    """The jobs of a journal found damaged or missing, from their kept requests (under the
    queue's lock, before the workers start); how many. `recovered(path)` makes a completed
    job's Result from its file. Each is built in the state its files show and handed to the
    queue (`adopt`), as housekeeping.restore does with the journal's rows."""
    if journal.trusted:  # a whole journal knows its jobs; a request it lacks is left over
        return 0
    kept = journal.kept_requests()
    rebuilt = 0
    for job_id, request in sorted(kept.items(), key=lambda item: _created(item[1])):
        if queue.knows(job_id):
            continue
        if isinstance(request, str) and job_id in files:
            continue  # its result is there: taken back as completed with the other files
        if isinstance(request, str):  # which pipeline, which options: unknown
            job = Job(pipeline=UNKNOWN_PIPELINE, options=None, image=None, id=job_id,
                      created_at=_input_time(journal, job_id))
            _fail(queue, job, f"the job journal was found damaged after a restart and this "
                              f"job's kept request cannot be read ({request}); submit it "
                              "again", files)
        else:
            job = Job(pipeline=request.pipeline, options=request.options, image=None,
                      id=job_id, created_at=request.created_at)
            _restore(queue, journal, job, files, recovered)
        rebuilt += 1
    if rebuilt:
        log.warning("journal: %d job(s) rebuilt from their kept requests (the journal was "
                    "damaged or lost)", rebuilt)
        if journal.damaged is None:  # an empty or missing journal on a folder with jobs
            journal.damaged = (f"the job journal was missing or empty; {rebuilt} job(s) were "
                               "rebuilt from the requests kept beside their inputs")
    return rebuilt


def _restore(queue: "JobQueue", journal: "Journal", job: Job, files: dict[str, Path],
             recovered) -> None:
    if job.id in files:  # its result was written: completed
        result = recovered(files.pop(job.id))
        written = result.path.stat().st_mtime
        queue.adopt(_ended(job, JobState.COMPLETED, result=result, at=written), save=True)
        return
    if journal.input_path(job.id).exists():  # it was waiting: it waits again
        try:
            job.image, job.source = journal.load_input(job.id, queue.config.video_limits)
        except (OSError, PipelineError) as exc:
            why = f" ({exc})" if isinstance(exc, PipelineError) else ""
            _fail(queue, job, INPUT_LOST.format(why=why), files)
            return
        queue.adopt(job, save=True)
        return
    _fail(queue, job, LOST_OUTCOME, files)


def _fail(queue: "JobQueue", job: Job, error: str, files: dict[str, Path]) -> None:
    """The job, built failed with the reason, handed to the queue and written down."""
    files.pop(job.id, None)
    queue.adopt(_ended(job, JobState.FAILED, error=error), save=True)


def _ended(job: Job, state: JobState, *, result=None, error: str | None = None,
           at: float | None = None) -> Job:
    """`job` built in a finished state, as `Job.restored` builds a finished row: what its
    files show is its record (it is not moved there: no lane ever held it)."""
    job.state, job.result, job.error = state, result, error
    job.error_kind = FailureKind.INTERNAL if error is not None else None
    job.started_at = job.finished_at = time.time() if at is None else at
    job.stage, job.progress = state.value, float(result is not None)
    job.done.set()
    return job


def _created(request: "KeptRequest | str") -> float:
    return 0.0 if isinstance(request, str) else request.created_at


def _input_time(journal: "Journal", job_id: str) -> float:
    try:
        return journal.request_path(job_id).stat().st_mtime
    except OSError:
        return time.time()
