"""OUTPUT_DIR as the server depends on it: held by one server at a time, and writable.

Two servers on one folder would each run the other's queued jobs and fail its running ones
as interrupted, so the folder is locked (`flock`, released by the kernel when the process
dies, `kill -9` included). A full or read-only volume is noticed before work is accepted:
submissions are refused with 507 and waiting jobs wait until it is writable again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any

from pipelines.base import DISK_ERRORS

log = logging.getLogger("queue_manager")

LOCK_NAME = ".server.lock"
LOCK_WAIT_SECONDS = 5.0  # a new gunicorn worker may start while the old one is still exiting


class OutputDirInUse(RuntimeError):
    """Another server holds OUTPUT_DIR."""


class OutputDirLock:
    """An exclusive lock on OUTPUT_DIR for this process's lifetime."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, wait: float = LOCK_WAIT_SECONDS) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise OutputDirInUse(
                        f"OUTPUT_DIR {self.path.parent} is in use by another server (pid "
                        f"{holder}); give each server its own OUTPUT_DIR") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def storage_problem(output_dir: Path, min_free_bytes: int) -> str | None:
    """Why results cannot be written to `output_dir` now, or None."""
    if not os.access(output_dir, os.W_OK | os.X_OK):
        return "OUTPUT_DIR is read-only or not writable"
    try:
        stats = os.statvfs(output_dir)
    except OSError as exc:
        return f"OUTPUT_DIR cannot be read: {exc.strerror}"
    free = stats.f_bavail * stats.f_frsize
    if free < min_free_bytes:
        return (f"OUTPUT_DIR is full ({free // 2**20} MiB free, at least "
                f"{min_free_bytes // 2**20} MiB needed)")
    return None


def is_disk_error(exc: BaseException) -> bool:
    """A full disk, an exceeded quota or a read-only file system."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRORS


def remove_result(result: Any) -> None:
    """A result's file (`pipelines.base.Result`; None: nothing), expired or never wanted."""
    if result is None:
        return
    try:
        Path(result.path).unlink(missing_ok=True)
    except OSError as exc:  # a read-only or vanished volume: the janitor tries again
        log.warning("could not remove result file %s: %s", Path(result.path).name, exc)


def remove_job_files(output_dir: Path, job_ids: set[str]) -> None:
    """What failed or cancelled jobs' workers wrote before they ended (a batch partly
    written, a temporary file of a killed process): every file named after one of them."""
    if not job_ids:
        return
    for path in output_dir.iterdir():  # one pass over the folder for all of them
        if path.name.lstrip(".").split(".", 1)[0] in job_ids:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove %s: %s", path.name, exc)
