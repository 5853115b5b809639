"""What can go wrong with a job, by kind.

Pipelines, workers and the queue raise these; none of them knows HTTP. Each class says its
`FailureKind` kind, and the HTTP layer (`api/errors.py`'s `STATUS_OF`) alone decides which status a
kind is answered with. The kind travels with a failed job (worker messages, the journal), so a
job failed in a child process, or before a restart, answers as it did when it failed.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar


class FailureKind(str, Enum):
    """Why a job (or a request) failed, as a client would sort it."""

    INVALID_INPUT = "invalid_input"  # the client sent something unusable
    UNPROCESSABLE = "unprocessable"  # well-formed, but this output cannot be made from it
    NOT_LOADED = "not_loaded"  # the model that would run it is not loaded (yet, or at all)
    OUT_OF_MEMORY = "out_of_memory"  # the GPU cannot hold it
    DISK_FULL = "disk_full"  # the result cannot be written: disk full, over quota, read-only
    TIMED_OUT = "timed_out"  # it ran past its time limit and was stopped
    INTERNAL = "internal"  # anything else: the server's fault


class PipelineError(Exception):
    """A failure worth showing to the client as is; its class says its kind."""

    kind: ClassVar[FailureKind] = FailureKind.INTERNAL

    @staticmethod
    def of_kind(kind: FailureKind | str, message: str) -> "PipelineError":
        """The error of `kind` with `message`: how a failure is rebuilt from a worker's
        message or a journal row."""
        kind = FailureKind(kind)
        return next((cls for cls in _ALL if cls.kind is kind), PipelineError)(message)


class InvalidInput(PipelineError):
    """The client sent something unusable; the message says what."""

    kind = FailureKind.INVALID_INPUT


class Unprocessable(PipelineError):
    """The request is well-formed, but this output cannot be made from it."""

    kind = FailureKind.UNPROCESSABLE


class NotLoaded(PipelineError):
    """The model that would run the job is not loaded."""

    kind = FailureKind.NOT_LOADED


class OutOfMemory(PipelineError):
    """The GPU cannot hold the job (refused before work, or an OOM while running)."""

    kind = FailureKind.OUT_OF_MEMORY


class DiskFull(PipelineError):
    """The result cannot be written: the disk is full, over quota or read-only."""

    kind = FailureKind.DISK_FULL


class TimedOut(PipelineError):
    """The job ran past its time limit and was stopped."""

    kind = FailureKind.TIMED_OUT


_ALL = (PipelineError, InvalidInput, Unprocessable, NotLoaded, OutOfMemory, DiskFull, TimedOut)


# The HTTP status each kind is answered with. Only the two answering layers read it: the
# HTTP API (api/errors.py, api/submission.py, api/job_routes.py) and the RunPod handler's
# `{"error", "status"}` (handler.py); tests/api/test_api_layout.py checks that nothing below them
# does. 507 for a GPU that cannot hold the job as for a full disk: the server lacks room for
# this job, and another (smaller) job or a later try may pass.
STATUS_OF: dict[FailureKind, int] = {
    FailureKind.INVALID_INPUT: 400,
    FailureKind.UNPROCESSABLE: 422,
    FailureKind.NOT_LOADED: 503,
    FailureKind.OUT_OF_MEMORY: 507,
    FailureKind.DISK_FULL: 507,
    FailureKind.TIMED_OUT: 504,
    FailureKind.INTERNAL: 500,
}
