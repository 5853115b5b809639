"""Model wrappers behind one interface (`base.Pipeline`) and the registry that loads them.

Loading runs in background threads so the server answers `/health` at once; a pipeline
becomes visible to the queue (`registry.get(name)`) only when it is ready.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Mapping
from typing import Iterator

from .base import Pipeline

log = logging.getLogger(__name__)


class PipelineState(str, enum.Enum):
    """A configured pipeline's state in the registry, as /health's `pipelines` shows it (the
    values are the API's: clients read them)."""

    LOADING = "loading"
    READY = "ready"  # the queue sees it (`registry.get(name)`)
    FAILED = "failed"  # its load failed; `registry.error(name)` says why

    __str__ = str.__str__  # the value, as enum.StrEnum (Python 3.11) gives it
    __format__ = str.__format__


class PipelineRegistry(Mapping):
    """Name -> loaded pipeline; also tracks each pipeline's loading state for /health."""

    def __init__(self, pipelines: dict[str, Pipeline]):
        self._pending = dict(pipelines)
        self._ready: dict[str, Pipeline] = {}
        self._errors: dict[str, str] = {}
        self.load_seconds: dict[str, float] = {}  # of each pipeline that loaded
        self._lock = threading.Lock()

    def load_in_background(self) -> None:
        """Each pipeline in a thread of its own: one slow or stuck model holds up no other."""
        for name, pipeline in list(self._pending.items()):
            threading.Thread(target=self._load, args=(name, pipeline),
                             name=f"pipeline-loader-{name}", daemon=True).start()

    def _load(self, name: str, pipeline: Pipeline) -> None:
        log.info("loading pipeline %s", name)
        started = time.perf_counter()
        try:
            pipeline.load()
        except Exception as exc:  # one broken checkpoint must not take the server down
            log.error("pipeline %s failed to load: %s", name, exc)
            with self._lock:
                self._errors[name] = f"{type(exc).__name__}: {exc}"
                del self._pending[name]
            return
        log.info("pipeline %s ready", name)
        with self._lock:
            self.load_seconds[name] = round(time.perf_counter() - started, 3)
            self._ready[name] = pipeline
            del self._pending[name]

    def status(self) -> dict[str, PipelineState]:
        """Every configured pipeline's state."""
        with self._lock:
            return {**{name: PipelineState.LOADING for name in self._pending},
                    **{name: PipelineState.READY for name in self._ready},
                    **{name: PipelineState.FAILED for name in self._errors}}

    def error(self, name: str) -> str | None:
        with self._lock:
            return self._errors.get(name)

    @property
    def loading(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def __getitem__(self, name: str) -> Pipeline:
        with self._lock:
            return self._ready[name]

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._ready))

    def __len__(self) -> int:
        with self._lock:
            return len(self._ready)
