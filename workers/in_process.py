"""Running a job, or a batch of jobs, on a loaded pipeline; and a model worker that does it
in this process (MODEL_PROCESS=0, the tests' scripted pipelines).

`run_items` is the one place a pipeline is called: the model process runs it in its child,
the in-process worker here. A failure becomes the job's error, never the caller's crash.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from pipelines.base import (Abortable, Batching, JobCancelled, Pipeline, Progress, Result,
                            describe_failure, is_out_of_memory, release_memory)
from pipelines.errors import FailureKind, NotLoaded, PipelineError
from pipelines.device import with_gpu_peak

from .worker import WorkerState

log = logging.getLogger(__name__)

Item = tuple[Any, Any, Path]  # (options, image, output stem) of one job
Outcome = Result | PipelineError


def run_items(pipeline: Pipeline, items: Sequence[Item], progress: Progress) -> list[Outcome]:
    """One outcome per item, in order. Several items go through the pipeline's batch path
    as one forward pass; JobCancelled (the whole batch cancelled) propagates."""
    oom = False
    try:
        if len(items) == 1:
            options, image, stem = items[0]
            outcomes = with_gpu_peak(lambda: [pipeline.run(options, image, stem, progress)])
        else:
            outcomes = with_gpu_peak(lambda: list(pipeline.run_batch(items, progress)))
    except JobCancelled:
        raise
    except Exception as exc:  # a pipeline's failure fails its jobs, never the worker
        oom = is_out_of_memory(exc)
        failure = describe_failure(exc, pipeline.oom_advice)
        if not oom and failure.kind not in (FailureKind.INVALID_INPUT, FailureKind.UNPROCESSABLE):
            log.exception("%s failed", pipeline.name)
        outcomes = [failure] * len(items)
    if oom:
        release_memory()  # outside the except block: the traceback no longer pins tensors
    return outcomes


class InProcessModel:
    """A model worker (worker.py) that calls the pipeline in this process; ready once the
    registry has loaded it."""

    def __init__(self, name: str, lookup: Callable[[], Pipeline | None],
                 loading: Callable[[], bool], batch_limit: int = 1, slot: int = 0):
        self.pipeline_name, self.slot = name, slot
        self.label = f"{name}#{slot}"
        self._batch_limit = batch_limit
        self._lookup, self._loading = lookup, loading
        self.jobs: list[str] = []
        self.on_change: Callable[[], None] = lambda: None

    @property
    def batch_limit(self) -> int:
        return self._batch_limit if isinstance(self._lookup(), Batching) else 1

    @property
    def state(self) -> WorkerState:
        if self.jobs:
            return WorkerState.BUSY
        if self._lookup() is not None:
            return WorkerState.READY
        return WorkerState.LOADING if self._loading() else WorkerState.FAILED

    @property
    def reason(self) -> str | None:
        if self.state is not WorkerState.FAILED:
            return None
        return f"pipeline {self.pipeline_name!r} is not loaded"

    def run(self, items: Sequence[Item], progress: Progress, job_ids: list[str],
            time_limit: float | None = None) -> list[Outcome]:
        pipeline = self._lookup()
        if pipeline is None:
            raise NotLoaded(f"pipeline {self.pipeline_name!r} is not loaded")
        self.jobs = list(job_ids)
        try:
            return run_items(pipeline, items, progress)
        finally:
            self.jobs = []

    def stop(self) -> None:
        """Nothing to stop: the pipeline lives in this process."""

    def abort(self, job_id: str) -> None:
        pipeline = self._lookup()
        if isinstance(pipeline, Abortable) and job_id in self.jobs:
            pipeline.abort()

    def describe(self) -> dict:
        return {"pipeline": self.pipeline_name, "device": "in-process", "state": self.state,
                "jobs": list(self.jobs), "restarts": 0, "reason": self.reason}
