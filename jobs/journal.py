"""The job journal: every job and its result recorded in SQLite under OUTPUT_DIR.

The queue keeps its jobs in memory and writes each state change here, so a restart (the
gunicorn worker killed for memory, SIGTERM, the container restarted on the same volume) loses
nothing: finished results stay downloadable, queued jobs run, interrupted jobs fail with a
reason. A queued job's image waits beside the journal until the job starts, and each
job's request (pipeline, options, created time) beside it until the job ends, so a
journal found damaged is rebuilt from the files (jobs/rebuild.py): no job a client was told
of answers 404.

Durability: WAL with `synchronous=FULL` (every commit is on disk before the client hears of
it) and a checkpoint after every commit (`wal_autocheckpoint=1`), so the main file holds
every committed row and a lost, truncated or garbage `-wal` file costs nothing already
answered. A journal that fails `PRAGMA quick_check` or is not a database at all is moved
aside and said loudly (`damaged`); the queue then trusts the files on disk over the journal.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from PIL import Image

from pipelines.base import Result
from pipelines.errors import FailureKind, PipelineError

if TYPE_CHECKING:
    from pipelines.video import Video, VideoLimits

log = logging.getLogger(__name__)

JOURNAL_NAME = ".jobs.sqlite3"
INPUTS_FOLDER = ".inputs"
REQUEST_SUFFIX = ".request.json"  # OUTPUT_DIR/.inputs/<id>.request.json, beside <id>
# Options are rebuilt from their class; only our own request models may be named.
_OPTIONS_MODULES = ("pipelines.",)
KNOWN_STATES = ("queued", "processing", "completed", "failed", "cancelled", "expired")


class JournalWriteError(OSError):
    """A change could not be written (disk full, read-only volume); the queue keeps it in
    memory and writes it again once it can."""


@dataclass(frozen=True)
class UnreadableRow:
    """A row the journal holds but this release cannot read (bad options JSON, an unknown
    state, a bad result): its job answers `failed` with `reason`, its files left as they are."""

    id: str
    pipeline: str
    created_at: float
    reason: str


@dataclass(frozen=True)
class KeptRequest:
    """A job as its client submitted it, from OUTPUT_DIR/.inputs/<id>.request.json."""

    id: str
    pipeline: str
    options: Any
    created_at: float


@dataclass(frozen=True)
class JobRecord:
    """A job as the journal holds it."""

    id: str
    pipeline: str
    options: Any
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    result: Result | None
    error: str | None
    error_kind: FailureKind | None


class Journal:
    """One SQLite file; one row per job, rewritten on every state change."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / JOURNAL_NAME
        self.inputs = Path(output_dir) / INPUTS_FOLDER
        self.inputs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.damaged: str | None = None  # why the journal found was not trusted
        try:
            self._db = self._open()
        except sqlite3.OperationalError as exc:  # full, read-only, locked: not damage
            raise JournalWriteError(f"the job journal could not be opened: {exc}") from None
        except sqlite3.DatabaseError as exc:  # not a database, or quick_check failed
            self.damaged = f"the job journal was unreadable ({exc}) and was moved aside"
            self._move_aside()
            self._db = self._open()
        if self.damaged:
            log.error("journal: %s; result files on disk are kept and served", self.damaged)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA wal_autocheckpoint=1")
            self.fresh = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'jobs'"
                                    ).fetchone()[0] == 0
            db.execute("""CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, options_class TEXT NOT NULL,
                options TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,
                started_at REAL, finished_at REAL, result TEXT, error TEXT,
                error_status INTEGER, error_kind TEXT)""")
            # A journal of a release before error kinds (62efd9a and earlier) has no
            # error_kind; its failed rows say an HTTP status instead (read by _kind below).
            if "error_kind" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
                db.execute("ALTER TABLE jobs ADD COLUMN error_kind TEXT")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, finished_at)")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _move_aside(self) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            source = self.path.with_name(self.path.name + suffix)
            if source.exists():
                source.rename(source.with_name(f"{source.name}.damaged-{stamp}"))

    @property
    def trusted(self) -> bool:
        """Whether a file that no row names can be taken for left over: only when the
        journal was found whole and already held jobs."""
        return self.damaged is None and not self.fresh

    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(sql, rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise JournalWriteError(f"the job journal could not be written: {exc}") from None

    def record(self, job) -> None:
        """Write `job` (a jobs.state.Job) as it is now; JournalWriteError if it cannot."""
        options = job.options
        options_class = ("" if options is None else
                         f"{type(options).__module__}:{type(options).__qualname__}")
        result = None if job.result is None else json.dumps({
            "path": str(job.result.path), "media_type": job.result.media_type,
            "download_name": job.result.download_name, "info": job.result.info})
        self._write(f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_COLUMNS))})", [(
            job.id, job.pipeline, options_class,
            "null" if options is None else options.model_dump_json(), job.state.value,
            job.created_at, job.started_at, job.finished_at, result, job.error,
            None if job.error_kind is None else job.error_kind.value)])

    def expire(self, job_ids: list[str], keep: int) -> None:
        """These jobs' files are gone; their ids stay known (410, not 404) among the last
        `keep` expired ones. One transaction, on the state index."""
        self._write("UPDATE jobs SET state = 'expired', result = NULL WHERE id = ?",
                    [(job_id,) for job_id in job_ids])
        self._write("""DELETE FROM jobs WHERE state = 'expired' AND finished_at < (
            SELECT finished_at FROM jobs WHERE state = 'expired'
            ORDER BY finished_at DESC LIMIT 1 OFFSET ?)""", [(keep - 1,)])

    def records(self) -> tuple[list[JobRecord], list[str], list[UnreadableRow]]:
        """Every job that is not expired, oldest first, with its options rebuilt; the
        expired ids; and the rows that could not be read (with a log line: their files are
        not this release's to judge)."""
        with self._lock:
            expired = [row[0] for row in self._db.execute(
                "SELECT id FROM jobs WHERE state = 'expired' ORDER BY finished_at")]
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)}, error_status FROM jobs "
                                    "WHERE state != 'expired' ORDER BY created_at").fetchall()
        records, skipped = [], []
        for row in rows:
            try:  # one unreadable row (an older or newer release's) must not stop start-up
                if row[4] not in KNOWN_STATES:
                    raise ValueError(f"unknown state {row[4]!r}")
                records.append(JobRecord(
                    id=row[0], pipeline=row[1], options=_options(row[2], row[3]),
                    state=row[4], created_at=row[5], started_at=row[6], finished_at=row[7],
                    result=_result(row[8]) if row[8] else None,
                    error=row[9], error_kind=_kind(row[10], row[11])))
            except (ValueError, TypeError, KeyError, ImportError, AttributeError) as exc:
                log.warning("journal: job %s cannot be read: %s", row[0], exc)
                created = row[5] if isinstance(row[5], (int, float)) else time.time()
                skipped.append(UnreadableRow(str(row[0]), str(row[1]), created,
                                             _reason(exc)))
        return records, expired, skipped

    # -- a queued job's image --------------------------------------------------------------

    def input_path(self, job_id: str) -> Path:
        return self.inputs / job_id

    def request_path(self, job_id: str) -> Path:
        return self.inputs / f"{job_id}{REQUEST_SUFFIX}"

    def keep_input(self, job) -> None:
        """The input's file as it came (nothing to encode; decoding it again at a restart
        gives the same pixels; a video's own bytes), else a quick lossless PNG
        (compress_level=1): it only has to last until the job starts. With it, once, the
        job's request (`keep_request`)."""
        path = self.input_path(job.id)
        try:
            data = job.source if job.source is not None else getattr(job.image, "data", None)
            if data is not None:  # a photo's file, or a video's (pipelines.video.Video)
                path.write_bytes(data)
            else:
                job.image.save(path, format="PNG", compress_level=1)
            if not self.request_path(job.id).exists():
                self.keep_request(job)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def keep_request(self, job) -> None:
        """The job's request as it was accepted, beside its input, until the job ends:
        what rebuilds the job if the journal is found damaged. Written whole or not at all
        (a temporary file renamed), so a kill -9 never leaves half of one."""
        target = self.request_path(job.id)
        options = job.options
        text = json.dumps({
            "id": job.id, "pipeline": job.pipeline,
            "options_class": "" if options is None else
            f"{type(options).__module__}:{type(options).__qualname__}",
            "options": None if options is None else json.loads(options.model_dump_json()),
            "created_at": job.created_at})
        partial = target.with_name(target.name + ".tmp")
        try:
            partial.write_text(text)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def kept_requests(self) -> dict[str, KeptRequest | str]:
        """Every kept request by job id: the request, or why it cannot be read."""
        found: dict[str, KeptRequest | str] = {}
        for path in self.inputs.glob(f"*{REQUEST_SUFFIX}"):
            job_id = path.name[:-len(REQUEST_SUFFIX)]
            try:
                fields = json.loads(path.read_text())
                if fields["id"] != job_id or not isinstance(fields["pipeline"], str):
                    raise ValueError("it names another job")
                found[job_id] = KeptRequest(
                    job_id, fields["pipeline"],
                    _options(fields["options_class"], json.dumps(fields["options"])),
                    float(fields["created_at"]))
            except (OSError, ValueError, TypeError, KeyError, ImportError,
                    AttributeError) as exc:
                log.warning("journal: the kept request of job %s cannot be read: %s",
                            job_id, exc)
                found[job_id] = _reason(exc, "its kept request's contents")
        return found

    def forget(self, job_id: str) -> None:
        """The job's kept input and request, once it has expired (or was never accepted)."""
        for path in (self.input_path(job_id), self.request_path(job_id)):
            path.unlink(missing_ok=True)

    def load_input(self, job_id: str, video_limits: VideoLimits
                   ) -> tuple[Image.Image | Video, bytes]:
        """The kept input as the job had it, and its file's bytes (the job's `source`, kept
        again if the job is handed back): an image, else a video (probed again under
        `video_limits`, VIDEO_MAX_*, so decoding stops where it would have). The image is
        tried first: an AVIF or HEIC photo starts as an mp4 does."""
        from pipelines.images import open_image
        from pipelines.video import demuxer_of, probe_video

        data = self.input_path(job_id).read_bytes()
        try:
            return open_image(data, max_side=2**16), data
        except PipelineError:
            if demuxer_of(data) is None:
                raise
        return probe_video(data, video_limits), data

    def close(self) -> None:
        with self._lock:
            self._db.close()


_COLUMNS = ("id", "pipeline", "options_class", "options", "state", "created_at", "started_at",
            "finished_at", "result", "error", "error_kind")

# What a failed row of a release before error kinds meant by its status (pipelines/errors.py
# STATUS_OF, read backwards; 507 was a full disk or a GPU out of memory, answered alike).
_KIND_OF_STATUS = {400: FailureKind.INVALID_INPUT, 422: FailureKind.UNPROCESSABLE,
                   503: FailureKind.NOT_LOADED, 504: FailureKind.TIMED_OUT,
                   507: FailureKind.OUT_OF_MEMORY}


def _kind(kind: str | None, status: int | None) -> FailureKind | None:
    """A failed row's kind: its own, or the one its old status stood for."""
    if kind is not None:
        return FailureKind(kind)
    if status is None:
        return None
    return _KIND_OF_STATUS.get(status, FailureKind.INTERNAL)


def _reason(exc: BaseException, what: str = "its options") -> str:
    """Why a row or request could not be read, in a few words (no traceback, no path)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{what} are not valid JSON ({exc.msg})"
    if isinstance(exc, KeyError):
        return f"{what} lack {exc}"
    return str(exc)[:200] or type(exc).__name__


def _result(data: str) -> Result:
    fields = json.loads(data)
    return Result(**{**fields, "path": Path(fields["path"])})


def _options(class_path: str, data: str) -> Any:
    """The job's options as submitted. They were validated then, without the image they
    carried, which the model's own validator would now ask for: rebuilt, not re-checked."""
    if not class_path:
        return None  # a job recovered from its result file
    module_name, _, name = class_path.partition(":")
    if not module_name.startswith(_OPTIONS_MODULES):
        raise ValueError(f"journal names options class {class_path!r}, not one of ours")
    model = getattr(importlib.import_module(module_name), name)
    return model.model_construct(**json.loads(data))
