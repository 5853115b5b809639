"""The job journal: every job and its result recorded in SQLite under OUTPUT_DIR.

The queue keeps its jobs in memory and writes each state change here, so a restart (the
worker killed for memory, SIGTERM, the container restarted on the same volume) loses
nothing: finished results stay downloadable, queued jobs run, interrupted jobs fail with a
reason. A queued job's image waits beside the journal as a PNG until the job starts.
"""

from __future__ import annotations

import importlib
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.base import Result

log = logging.getLogger(__name__)

JOURNAL_NAME = ".jobs.sqlite3"
INPUTS_FOLDER = ".inputs"
# Options are rebuilt from their class; only our own request models may be named.
_OPTIONS_MODULES = ("pipelines.",)


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
    error_status: int | None


class Journal:
    """One SQLite file; one row per job, rewritten on every state change."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / JOURNAL_NAME
        self.inputs = Path(output_dir) / INPUTS_FOLDER
        self.inputs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL with synchronous=NORMAL survives a killed process (the failure it is for);
        # only a power loss can drop the last transactions. Saves an fsync per change.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, options_class TEXT NOT NULL,
            options TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,
            started_at REAL, finished_at REAL, result TEXT, error TEXT, error_status INTEGER)""")

    def record(self, job) -> None:
        """Write `job` (a queue_manager.Job) as it is now."""
        options_class = f"{type(job.options).__module__}:{type(job.options).__qualname__}"
        result = None if job.result is None else json.dumps({
            "path": str(job.result.path), "media_type": job.result.media_type,
            "download_name": job.result.download_name, "info": job.result.info})
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.pipeline, options_class, job.options.model_dump_json(),
                 job.state.value, job.created_at, job.started_at, job.finished_at, result,
                 job.error, job.error_status))

    def expire(self, job_id: str, keep: int) -> None:
        """The job's files are gone; its id stays known (410, not 404) among the last
        `keep` expired ones."""
        with self._lock:
            self._db.execute("UPDATE jobs SET state = 'expired', result = NULL WHERE id = ?",
                             (job_id,))
            self._db.execute("""DELETE FROM jobs WHERE state = 'expired' AND id NOT IN (
                SELECT id FROM jobs WHERE state = 'expired' ORDER BY finished_at DESC
                LIMIT ?)""", (keep,))
        self.input_path(job_id).unlink(missing_ok=True)

    def records(self) -> list[JobRecord]:
        """Every job, oldest first, with its options rebuilt (state "expired" for the ids
        whose results are gone)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created_at").fetchall()
        records = []
        for row in rows:
            try:  # one unreadable row (an older release's options) must not stop start-up
                records.append(JobRecord(
                    id=row[0], pipeline=row[1], options=_options(row[2], row[3]),
                    state=row[4], created_at=row[5], started_at=row[6], finished_at=row[7],
                    result=_result(row[8]) if row[8] else None,
                    error=row[9], error_status=row[10]))
            except (ValueError, TypeError, ImportError, AttributeError) as exc:
                log.warning("journal: skipping job %s: %s", row[0], exc)
        return records

    # -- a queued job's image --------------------------------------------------------------

    def input_path(self, job_id: str) -> Path:
        return self.inputs / f"{job_id}.png"

    def keep_input(self, job_id: str, image: Image.Image) -> None:
        """Lossless and quick (compress_level=1): it only has to last until the job starts."""
        image.save(self.input_path(job_id), format="PNG", compress_level=1)

    def load_input(self, job_id: str) -> Image.Image:
        with Image.open(self.input_path(job_id)) as image:
            image.load()
            return image

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _result(data: str) -> Result:
    fields = json.loads(data)
    return Result(**{**fields, "path": Path(fields["path"])})


def _options(class_path: str, data: str) -> Any:
    """The job's options as submitted. They were validated then, without the image they
    carried, which the model's own validator would now ask for: rebuilt, not re-checked."""
    module_name, _, name = class_path.partition(":")
    if not module_name.startswith(_OPTIONS_MODULES):
        raise ValueError(f"journal names options class {class_path!r}, not one of ours")
    model = getattr(importlib.import_module(module_name), name)
    return model.model_construct(**json.loads(data))
