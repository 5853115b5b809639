"""Depth jobs that arrive as concurrent calls (the RunPod worker's, under runpod-python's
`concurrency_modifier`) run as one forward pass, with the lane's rule for which may share it.

Each call waits in a lane (workers/lanes.py); whichever call holds the model lock takes the
head of the lane and its batch (up to `limit` jobs of one batch key), runs it, hands every job
its own outcome, and goes on until its own job is done. One model call runs at a time, so a 3D
job (which takes the same lock) never shares the GPU with a batch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable

from pipelines.base import Progress, Result

from .lanes import Lane

GATHER_SECONDS = 0.02  # how long a batch waits for calls that arrived with it


@dataclass(eq=False)
class _Call:
    options: Any
    image: Any
    stem: Path
    progress: Progress
    batch_key: Hashable | None
    outcome: Result | BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class DepthBatcher:
    def __init__(self, pipeline: Any, limit: int, model_lock: threading.Lock):
        self.pipeline, self.limit, self.model_lock = pipeline, limit, model_lock
        self._lane = Lane("lotus", [])
        self._lane_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # what ran, for the log and the tests

    def run(self, options: Any, image: Any, stem: Path, progress: Progress) -> Result:
        call = _Call(options, image, stem, progress, self.pipeline.batch_key(options, image))
        with self._lane_lock:
            self._lane.waiting.append(call)
        while not call.done.is_set():
            if self.model_lock.acquire(timeout=0.01):
                try:
                    time.sleep(GATHER_SECONDS)
                    self._run_next()
                finally:
                    self.model_lock.release()
        if isinstance(call.outcome, BaseException):  # its own failure, or the whole pass's
            raise call.outcome
        return call.outcome

    def _run_next(self) -> None:
        with self._lane_lock:
            if not self._lane.waiting:
                return
            batch = self._lane.take(self.limit)
        self.batch_sizes.append(len(batch))

        def progress(stage: str, fraction: float) -> None:
            for call in batch:
                call.progress(stage, fraction)

        try:
            outcomes = self.pipeline.run_batch(
                [(call.options, call.image, call.stem) for call in batch], progress)
        except Exception as exc:  # noqa: BLE001 - the whole pass failed: each call says why
            outcomes = [exc] * len(batch)
        with self._lane_lock:
            for call, outcome in zip(batch, outcomes):
                self._lane.finished(call)
                call.outcome = outcome
                call.done.set()

