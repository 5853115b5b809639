"""What a model process (model_process.py) and its child send each other over their pipe, one
dataclass per message (pickled by multiprocessing's Connection), so both ends name the same
fields and a reader matches on the type, not on a string tag.

    parent -> child:  Run
    child -> parent:  Loaded (once), then per Run: Started, Progress..., Done | Cancelled
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import FailureKind


@dataclass(frozen=True)
class Run:
    items: list  # (options, image, output stem) of each job of the batch


@dataclass(frozen=True)
class Loaded:
    error: str | None  # why the pipeline failed to load; None once loaded
    details: dict = field(default_factory=dict)  # admission memory, GPU memory taken


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class Progress:
    stage: str
    fraction: float


@dataclass(frozen=True)
class Failure:
    """A job's failure as the child reports it: the message and its kind."""

    message: str
    kind: FailureKind


@dataclass(frozen=True)
class Done:
    outcomes: list[Any]  # a Result or a Failure per job, in order


@dataclass(frozen=True)
class Cancelled:
    pass
