"""What a model worker is to the queue: its states, what it answers to (`ModelWorker`), and
the error that hands a job back (`WorkerLost`).

A model worker is one slot of a lane: it runs its pipeline's jobs, one job or one batch at a
time, on one device. It comes in two kinds: `ModelProcess` (model_process.py, a child
process, the server's) and `InProcessModel` (in_process.py, this process, MODEL_PROCESS=0,
the RunPod handler and the tests). The queue feeds each through a dispatcher thread of its
own (queue_manager.py) and knows it only through this protocol.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

if TYPE_CHECKING:
    from pipelines.base import Progress

    from .in_process import Item, Outcome


class WorkerState(str, enum.Enum):
    """A model worker's state, as /health's `workers[].state` shows it (the values are the
    API's: clients read them)."""

    STARTING = "starting"  # a model process not yet spawned
    LOADING = "loading"  # its pipeline is loading
    READY = "ready"  # loaded and idle: takes the lane's next job
    BUSY = "busy"  # running a job or a batch
    RESTARTING = "restarting"  # its process ended; started again after a backoff
    FAILED = "failed"  # its pipeline failed to load: it runs nothing, ever

    # str() and format() give the value, as enum.StrEnum (Python 3.11) would: the states
    # appear in messages ("model worker lotus@cpu:0 is restarting")
    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def up(self) -> bool:
        """Loaded: running a job now or ready to."""
        return self in (WorkerState.READY, WorkerState.BUSY)


class WorkerLost(Exception):
    """The model worker was gone before the job ran, or was killed for another job's sake:
    the job itself did nothing wrong and may be retried."""


class ModelWorker(Protocol):
    """What the queue and the lanes ask of a model worker, of either kind."""

    pipeline_name: str
    label: str  # e.g. lotus@cuda:0#1, in logs and a job's `worker`
    jobs: list[str]  # the ids of the jobs it runs now
    on_change: Callable[[], None]  # set by the queue: called when `state` changes

    @property
    def state(self) -> WorkerState: ...

    @property
    def reason(self) -> str | None: ...  # why it is failed or restarting

    @property
    def batch_limit(self) -> int: ...

    def run(self, items: Sequence["Item"], progress: "Progress", job_ids: list[str],
            time_limit: float | None = None) -> list["Outcome"]:
        """One outcome per item; raises WorkerLost (retry the jobs), JobCancelled or a
        PipelineError for the whole batch."""

    def abort(self, job_id: str) -> None:
        """A forced cancel of `job_id`, if it is running here."""

    def stop(self) -> None:
        """The server is stopping."""

    def describe(self) -> dict:
        """Its row of /health's `workers`."""
