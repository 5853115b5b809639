"""The one interface between the job queue and the models.

A pipeline is loaded once, then runs jobs one at a time per model worker: it gets the
validated options and the decoded image, reports its stages through `progress`, writes
its result file next to `output_stem` and says what it wrote. Nothing here knows HTTP.
"""

from __future__ import annotations

import errno
import gc
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Hashable, Protocol, Sequence, runtime_checkable

from PIL import Image
from pydantic import BaseModel, ValidationError

from .errors import DiskFull, OutOfMemory, PipelineError

DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # full, over quota, read-only

Progress = Callable[[str, float], None]
"""progress(stage, fraction in [0, 1]); raises JobCancelled when the job was cancelled."""


class JobCancelled(Exception):
    """Raised from a progress callback so a running job stops at its next stage boundary."""


@dataclass(frozen=True)
class Result:
    path: Path
    media_type: str
    download_name: str
    info: dict[str, Any] = field(default_factory=dict)


class Pipeline(Protocol):
    name: ClassVar[str]
    options_model: ClassVar[type[BaseModel]]
    oom_advice: ClassVar[str]

    def load(self) -> None: ...

    def check(self, options: BaseModel) -> None:
        """Raise PipelineError for a request this server can never serve (checked at submit)."""

    def time_limit(self, options: BaseModel, image: Image.Image) -> float | None:
        """Seconds after which this job is surely stuck (the queue caps JOB_TIMEOUT_SECONDS
        with it), or None for no estimate; needs no loaded model."""

    def run(self, options: BaseModel, image: Image.Image, output_stem: Path,
            progress: Progress) -> Result: ...


# The optional parts a pipeline may have, each a protocol of its own: callers ask
# `isinstance(pipeline, Batching)` of what a model declares, instead of probing names.

@runtime_checkable
class TimeLimited(Protocol):
    def time_limit(self, options: BaseModel, image: Image.Image) -> float | None: ...


@runtime_checkable
class Batching(Protocol):
    """Jobs with equal keys share one forward pass (Lotus-D's depth jobs)."""

    def batch_key(self, options: BaseModel, image: Image.Image) -> Hashable: ...

    def run_batch(self, jobs: Sequence[tuple[BaseModel, Image.Image, Path]],
                  progress: Progress) -> list[Result | "PipelineError"]: ...


@runtime_checkable
class Capable(Protocol):
    """What this device can serve (/health's `capabilities`)."""

    capabilities: dict[str, bool]


@runtime_checkable
class Noticing(Protocol):
    """What a user must know before trusting a result (test weights): /health's notices."""

    notice: str | None


@runtime_checkable
class ModelTable(Protocol):
    """The checkpoints a request's `model` may name, and which are served (/health)."""

    def model_table(self) -> dict[str, dict]: ...


@runtime_checkable
class Abortable(Protocol):
    """Stops the running job at once (an in-process job's forced cancel)."""

    def abort(self) -> None: ...


@runtime_checkable
class DeviceAware(Protocol):
    """Its cost model (`time_limit`) depends on the device kind its workers run on."""

    device_kind: str


@runtime_checkable
class MemoryAdmitting(Protocol):
    """Admits jobs by the GPU memory its workers report (SAM 3D Objects)."""

    vram_gib: float | None


# Loading torch weights is not thread-safe in one process: diffusers and transformers build
# models under accelerate's `init_empty_weights`, which patches `nn.Module.register_parameter`
# for the whole process while it lasts (accelerate 1.4.0, big_modeling.py:93-162), so a
# model built meanwhile in another thread gets meta tensors ("Cannot copy out of meta
# tensor"). Pipelines loaded side by side in one process (MODEL_PROCESS=0, the tests' in-process
# registries) hold this lock while they build their models; model workers load in processes
# of their own and never wait on it.
LOADING_WEIGHTS = threading.Lock()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA (or CPU allocator) out-of-memory error."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of every pipeline
        torch = None
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def release_memory() -> None:
    """Drop what a failed job left behind; called outside the except block that caught it,
    so the traceback no longer pins the job's tensors."""
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe_failure(exc: BaseException, oom_advice: str = "") -> PipelineError:
    """Turn any exception a pipeline raised into a readable message of its kind.

    The result carries no traceback, so it does not keep the failed job's tensors alive.
    """
    if isinstance(exc, PipelineError):
        return type(exc)(str(exc))
    if is_out_of_memory(exc):
        return OutOfMemory(f"Out of GPU memory. {oom_advice}".strip())
    if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
        return DiskFull(f"the server's disk (OUTPUT_DIR) is full or read-only: "
                        f"{exc.strerror}; submit the job again later")
    return PipelineError(f"{type(exc).__name__}: {exc}")


# A server path, not one of this API's own routes that messages name (`/job/<id>/download`,
# `/depth/sync`: app.py's routes), which cut would read "<id>/download", "sync".
_API_ROUTES = ("job", "depth", "normal", "generate", "segment")
_SERVER_PATH = re.compile(rf"(?<![\w.:/])/(?!(?:{'|'.join(_API_ROUTES)})/)"
                          r"(?:[\w.+-]+/)+([\w.+-]*)")
MAX_MESSAGE_CHARS = 500


def public_message(text: str) -> str:
    """An error message fit for a client: server paths cut to their last part (a checkpoint
    folder's name says enough), at most MAX_MESSAGE_CHARS characters."""
    text = _SERVER_PATH.sub(r"\1", text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS - 1] + "…"


def validation_message(exc: ValidationError) -> str:
    """pydantic's errors as one line a client can act on: `field: what is wrong; ...`."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
