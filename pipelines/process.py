"""The models in a process of their own, apart from the HTTP server and its queue.

As Replicate's Cog runs its predictor in a worker process, the server runs its pipelines in
one child process (`ModelProcess`) and talks to it over a pipe: a job goes in, its stages
come back, then its result or its error. If the child dies (the host's out-of-memory killer,
a CUDA fault) or a job outlasts JOB_TIMEOUT_SECONDS, only that job fails, with a message that
says so; the child is started again, reloads the models, and the queue goes on. Each
`RemotePipeline` stands in the parent for one pipeline of the child; it answers `check` and
`capabilities` from an unloaded copy of the pipeline, which needs no model.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import JobCancelled, Pipeline, PipelineError, Progress, Result
from .device import with_gpu_peak

if TYPE_CHECKING:
    from settings import Settings

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.2


class ModelProcess:
    """One child process that loads every configured pipeline and runs one job at a time."""

    def __init__(self, settings: "Settings", names: list[str]):
        self.settings, self.names = settings, names
        self._context = multiprocessing.get_context("spawn")  # no CUDA state is inherited
        self._lock = threading.Lock()  # one job at a time
        self._loaded = threading.Condition()
        self._load_results: dict[str, tuple[str | None, dict]] = {}
        self._process = None
        self._conn = None
        self._cancel = None

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the child; it reports each pipeline as it loads (see `wait_loaded`)."""
        parent, child = self._context.Pipe()
        self._cancel = self._context.Event()
        self._process = self._context.Process(
            target=_serve, args=(child, self._cancel, self.settings, self.names),
            name="model-process", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        with self._loaded:
            self._load_results.clear()
        threading.Thread(target=self._read_load_reports, args=(parent,), daemon=True).start()

    def _read_load_reports(self, conn) -> None:
        """The child's first messages: ("loaded", name, error, details), one per pipeline."""
        for _ in self.names:
            try:
                _, name, error, details = conn.recv()
            except (EOFError, OSError):
                error, details = "the model process exited while loading", {}
                for name in self.names:
                    self._report_loaded(name, error, details)
                return
            self._report_loaded(name, error, details)

    def _report_loaded(self, name: str, error: str | None, details: dict) -> None:
        with self._loaded:
            self._load_results.setdefault(name, (error, details))
            self._loaded.notify_all()

    def wait_loaded(self, name: str) -> dict:
        """Block until the child has loaded `name`; its details, or RuntimeError why not."""
        with self._loaded:
            self._loaded.wait_for(lambda: name in self._load_results)
            error, details = self._load_results[name]
        if error is not None:
            raise RuntimeError(error)
        return details

    def stop(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    def abort(self) -> None:
        """Stop the running job now (a forced cancel): the child is killed and started
        again; `run` sees it die and fails the job, which the queue marks cancelled."""
        if self._process is not None:
            self._process.kill()

    def _restart(self, reason: str) -> None:
        log.error("model process: %s; starting it again", reason)
        self.stop()
        self.start()

    # -- jobs ------------------------------------------------------------------------

    def run(self, name: str, options: Any, image: Any, output_stem: Path,
            progress: Progress) -> Result:
        with self._lock:
            self.wait_loaded(name)  # after a restart, the models load again first
            self._cancel.clear()
            self._conn.send(("run", name, options, image, str(output_stem)))
            deadline = time.monotonic() + self.settings.job_timeout_seconds
            while True:
                message = self._next_message(deadline)
                kind = message[0]
                if kind == "progress":
                    try:
                        progress(message[1], message[2])
                    except JobCancelled:
                        self._cancel.set()  # the child stops at its next stage
                elif kind == "done":
                    return message[1]
                elif kind == "cancelled":
                    raise JobCancelled()
                else:  # "failed"
                    raise PipelineError(message[1], status=message[2])

    def _next_message(self, deadline: float) -> tuple:
        """The child's next message; if it died or the job ran too long, the job's error
        (after the child has been started again)."""
        while not self._conn.poll(_POLL_SECONDS):
            if not self._process.is_alive():
                self._died()
            if time.monotonic() > deadline:
                self._restart("a job exceeded JOB_TIMEOUT_SECONDS")
                raise PipelineError(f"the job ran longer than JOB_TIMEOUT_SECONDS "
                                    f"({self.settings.job_timeout_seconds:g} s) and was "
                                    "stopped; the models are reloading", status=504)
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._died()

    def _died(self) -> None:
        """The child is gone mid-job: start another, fail the job with how it ended."""
        self._process.join(5)  # reaped, so its exit code is known
        code = self._process.exitcode
        self._restart(f"exited with code {code} during a job")
        raise PipelineError(_death_message(code), status=500)


def _death_message(code: int | None) -> str:
    how = "was killed (SIGKILL), probably out of memory" if code == -9 else \
        f"exited (code {code})"
    return f"the model process {how} while running this job; it is restarting"


class RemotePipeline:
    """One pipeline of the child, as the queue and the API see it."""

    def __init__(self, twin: Pipeline, process: ModelProcess):
        self._twin, self._process = twin, process  # twin: the same pipeline, never loaded
        self.name, self.options_model = twin.name, twin.options_model
        self.oom_advice = twin.oom_advice

    def load(self) -> None:
        details = self._process.wait_loaded(self.name)
        if "vram_gib" in details:
            self._twin.vram_gib = details["vram_gib"]

    @property
    def capabilities(self) -> dict:
        return self._twin.capabilities

    @property
    def notice(self) -> str | None:
        return getattr(self._twin, "notice", None)

    def check(self, options: Any) -> None:
        self._twin.check(options)

    def abort(self) -> None:
        self._process.abort()

    def run(self, options: Any, image: Any, output_stem: Path, progress: Progress) -> Result:
        return self._process.run(self.name, options, image, output_stem, progress)


def remote_pipelines(settings: "Settings", twins: dict[str, Pipeline]) -> dict[str, Pipeline]:
    """The configured pipelines, run by one model process (started here)."""
    process = ModelProcess(settings, list(twins))
    process.start()
    return {name: RemotePipeline(twin, process) for name, twin in twins.items()}


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the server's worker dies (kill -9 included), so an
    orphan never keeps the GPU memory the next worker's models need (prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pipe's end still stops it when idle
        pass


def _serve(conn, cancel, settings: "Settings", names: list[str]) -> None:
    """The child: load, report, then run jobs until the parent goes away."""
    _die_with_parent()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s [model]: %(message)s")
    from .base import describe_failure, release_memory
    from .catalog import configured_pipelines

    pipelines = {}
    for name, pipeline in configured_pipelines(settings).items():
        if name not in names:
            continue
        try:
            pipeline.load()
        except Exception as exc:  # noqa: BLE001 - reported to the parent, per pipeline
            conn.send(("loaded", name, f"{type(exc).__name__}: {exc}", {}))
            continue
        pipelines[name] = pipeline
        details = {"vram_gib": pipeline.vram_gib} if hasattr(pipeline, "vram_gib") else {}
        conn.send(("loaded", name, None, details))

    def progress(stage: str, fraction: float) -> None:
        if cancel.is_set():
            raise JobCancelled()
        conn.send(("progress", stage, fraction))

    while True:
        try:
            _, name, options, image, stem = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        failure = None
        try:
            conn.send(("done", with_gpu_peak(
                lambda: pipelines[name].run(options, image, Path(stem), progress))))
        except JobCancelled:
            conn.send(("cancelled",))
        except Exception as exc:  # noqa: BLE001 - a job's failure, sent to the parent
            failure = describe_failure(exc, pipelines[name].oom_advice)
        if failure is not None:
            release_memory()  # outside the except block: the traceback no longer pins tensors
            conn.send(("failed", str(failure), failure.status))
