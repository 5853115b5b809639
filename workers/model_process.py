"""A model process: the model worker (worker.py) that is one child process, which loads one
pipeline on one device and runs one job (or one batch of depth jobs) at a time, as
Replicate's Cog runs its predictor apart from its HTTP server.

A supervisor thread owns the child's life: it starts it, waits for its load report, then
watches it while idle as well as busy, so a child that dies between jobs is noticed at once
and started again (a crash loop backs off, and /health says so) instead of failing the next
job. Only the job running when a child dies fails, with how it died; a job that found the
child already gone is handed back to be retried. A job over its time limit, or one
cancelled with `force`, kills the child, which is then started again at once.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pipelines.base import JobCancelled, MemoryAdmitting, Progress, Result
from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError, TimedOut

from . import messages
from .devices import Device, pin
from .in_process import Item, Outcome
from .worker import WorkerLost, WorkerState

if TYPE_CHECKING:
    from settings import Settings

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.2
BACKOFF_SECONDS = (0.5, 1, 2, 4, 8, 16, 30)  # before each restart after an unplanned death
STABLE_SECONDS = 60.0  # up this long after loading: the next death starts the backoff over


class ModelProcess:
    """A model worker (worker.py) that is one child process: one pipeline, one device."""

    def __init__(self, settings: "Settings", pipeline: str, device: Device, slot: int = 0,
                 batch_limit: int = 1):
        self.settings, self.pipeline_name, self.device = settings, pipeline, device
        self.slot, self.batch_limit = slot, batch_limit
        self.label = f"{pipeline}@{device.label}" + (f"#{slot}" if slot else "")
        self.state: WorkerState = WorkerState.STARTING
        self.reason: str | None = None
        self.jobs: list[str] = []
        self.restarts = 0
        self.details: dict = {}
        self.peak_gib: float | None = None  # the most GPU memory a job of it allocated
        # SAM 3D's workers (workers/pool.py): the GPU memory the card leaves this worker
        # beside the others on its device, passed to each new child as SAM3D_VRAM_GIB
        self.memory_budget: Callable[[], float | None] | None = None
        self.on_change: Callable[[], None] = lambda: None
        self.loaded = threading.Event()  # the first load has ended, well or not
        self._context = multiprocessing.get_context("spawn")  # no CUDA state is inherited
        self._pipe_lock = threading.Lock()  # one job at a time on the pipe
        self._stopping = threading.Event()
        self._planned_kill = False  # a forced cancel or a timeout: restart at once
        self._process = self._conn = self._cancel = None

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        threading.Thread(target=self._supervise, name=f"supervise-{self.label}",
                         daemon=True).start()

    def stop(self) -> None:
        """The server is stopping: a job still running goes back to its lane (and so to the
        journal's waiting jobs for the next start) rather than failing."""
        self._stopping.set()
        if self._process is not None and self._process.is_alive():
            self._kill()
            self._process.join(5)

    def _set(self, state: WorkerState, reason: str | None = None) -> None:
        self.state, self.reason = state, reason
        self.on_change()

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                how, planned, served = self._one_life()
            except Exception as exc:  # noqa: BLE001 - a spawn that failed: try again later
                log.exception("model worker %s could not be started", self.label)
                how, planned, served = f"could not be started ({exc})", False, 0.0
            if how is None or self._stopping.is_set():
                return
            failures = 0 if served > STABLE_SECONDS else failures
            delay = 0.0 if planned else BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
            failures += not planned
            self.restarts += 1
            self._set(WorkerState.RESTARTING, f"the model process {how}; restart "
                                              f"{self.restarts} in {delay:g} s")
            (log.info if planned else log.error)("model worker %s: %s", self.label, self.reason)
            self._stopping.wait(delay)

    def _one_life(self) -> tuple[str | None, bool, float]:
        """Start the child and serve until it ends: how it ended, whether on purpose, and
        how long it served; None if its first load failed, which no restart would mend. A
        load that fails after a crash is retried (the dead child's memory, say, was not yet
        free)."""
        self._spawn()
        error = self._await_load()
        if error is not None and not self.loaded.is_set():
            self._set(WorkerState.FAILED, error)
            self.loaded.set()
            log.error("model worker %s failed to load: %s", self.label, error)
            return None, False, 0.0
        if error is not None:
            self._process.join()
            return f"failed to load again ({error})", False, 0.0
        ready_at = time.monotonic()
        if self._process.exitcode is None:  # loaded: serve until the child ends
            self._set(WorkerState.READY)
            self.loaded.set()
            self._process.join()
        with self._pipe_lock:  # a running job sees the end first and answers for it
            planned, self._planned_kill = self._planned_kill, False
        how = "was stopped" if planned else _how_it_ended(self._exit_code())
        return how, planned, time.monotonic() - ready_at

    def _spawn(self) -> None:
        parent, child = self._context.Pipe()
        self._cancel = self._context.Event()
        # The child gets what its pipeline is built from, not the Settings: those hold the
        # API key and the webhook secret, which a process running a model should not hold.
        config = PipelineConfig.from_settings(self.settings)
        budget = self.memory_budget() if self.memory_budget is not None else None
        if budget is not None:  # what the others on its card leave it, at this (re)start
            config = replace(config, sam3d_vram_gib=budget)
        self._process = self._context.Process(
            target=_serve, args=(child, self._cancel, config, self.pipeline_name,
                                 self.device), name=f"model-{self.label}", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        self._set(WorkerState.LOADING)

    def _await_load(self) -> str | None:
        """The child's load report: None once loaded (or if it died, which the supervisor
        then sees), else the load error, which no restart would mend."""
        while not self._conn.poll(_POLL_SECONDS):
            if not self._process.is_alive() and not self._conn.poll(0):
                self._process.join()
                return None
        try:
            loaded: messages.Loaded = self._conn.recv()
        except (EOFError, OSError):
            self._process.join()
            return None
        self.details = loaded.details
        return loaded.error

    # -- jobs ------------------------------------------------------------------------

    def run(self, items: Sequence[Item], progress: Progress, job_ids: list[str],
            time_limit: float | None = None) -> list[Outcome]:
        """Run the items in the child; raises WorkerLost, JobCancelled or PipelineError
        for the whole batch, or returns one outcome per item."""
        limit = min(self.settings.job_timeout_seconds, time_limit or float("inf"))
        with self._pipe_lock:
            if self.state is not WorkerState.READY or not self._process.is_alive():
                raise WorkerLost(f"model worker {self.label} is {self.state}")
            self.jobs = list(job_ids)
            self._set(WorkerState.BUSY)
            try:
                return self._record_peak(
                    self._exchange(items, progress, time.monotonic() + limit, limit))
            except (JobCancelled, WorkerLost, PipelineError):
                raise  # the exchange ended as the protocol says
            except BaseException:
                self._kill()  # the child is mid-job and the pipe out of step: start over
                raise
            finally:
                self.jobs = []
                if self.state is WorkerState.BUSY:  # else the supervisor has said what happened
                    alive = self._process.is_alive() and not self._planned_kill
                    self._set(WorkerState.READY if alive else WorkerState.RESTARTING)

    def _record_peak(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Keep the largest `gpu_peak_bytes` (pipelines/device.py with_gpu_peak) its jobs
        reported: the caching allocator keeps that much reserved after the job, so the
        worker holds it from then on (`held_gib`)."""
        peaks = [outcome.info["gpu_peak_bytes"] / 2**30 for outcome in outcomes
                 if isinstance(outcome, Result) and "gpu_peak_bytes" in outcome.info]
        if peaks:
            self.peak_gib = round(max([*peaks, self.peak_gib or 0.0]), 2)
        return outcomes

    @property
    def held_gib(self) -> float | None:
        """GPU memory this worker holds on its device: its footprint measured at load, or
        its largest job's peak (plus the CUDA context) if larger; None until loaded."""
        loaded = self.details.get("gpu_footprint_gib")
        if loaded is None:
            return None
        from pipelines.device import CUDA_CONTEXT_GIB

        peak = self.peak_gib + CUDA_CONTEXT_GIB if self.peak_gib is not None else 0.0
        return round(max(loaded, peak), 2)

    def _exchange(self, items, progress, deadline: float, limit: float) -> list[Outcome]:
        self._cancel.clear()
        try:
            self._conn.send(messages.Run(list(items)))
        except (BrokenPipeError, OSError):
            raise WorkerLost(f"model worker {self.label} was gone") from None
        started = False
        while True:
            match self._next_message(deadline, started, limit):
                case messages.Started():
                    started = True
                case messages.Progress(stage, fraction):
                    try:
                        progress(stage, fraction)
                    except JobCancelled:
                        self._cancel.set()  # the child stops at its next stage
                    except Exception:  # noqa: BLE001 - a failed report is not the job's end
                        log.exception("model worker %s: a progress report failed", self.label)
                case messages.Done(outcomes):
                    return [PipelineError.of_kind(outcome.kind, outcome.message)
                            if isinstance(outcome, messages.Failure) else outcome
                            for outcome in outcomes]
                case messages.Cancelled():
                    raise JobCancelled()

    def _next_message(self, deadline: float, started: bool, limit: float) -> object:
        while time.monotonic() > deadline or not self._conn.poll(_POLL_SECONDS):
            if not self._process.is_alive():
                self._lost(started)
            if time.monotonic() > deadline:
                self._kill()
                raise TimedOut(f"the job ran longer than its time limit ({limit:g} s, "
                               "JOB_TIMEOUT_SECONDS or the job's own estimate) and was "
                               "stopped; the model is reloading")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._lost(started)

    def _lost(self, started: bool) -> None:
        code = self._exit_code()
        if not started or self._planned_kill:
            raise WorkerLost(f"model worker {self.label} ended before the job ran")
        raise PipelineError(f"the model process {_how_it_ended(code)} while running this "
                            "job; it is restarting")

    def _exit_code(self) -> int | None:
        """The ended child's exit code. The supervisor and a running job both wait for it;
        whichever reaps it first records it, so the other waits a moment to read it."""
        deadline = time.monotonic() + 5
        while self._process.exitcode is None and time.monotonic() < deadline:
            self._process.join(0.05)
        return self._process.exitcode

    def _kill(self) -> None:
        self._planned_kill = True
        self._process.kill()

    def abort(self, job_id: str) -> None:
        """A forced cancel of `job_id`: the child is killed and started again at once (not
        if the job has ended meanwhile, which would kill the next one)."""
        if job_id in self.jobs and self._process is not None and self._process.is_alive():
            self._kill()

    def describe(self) -> dict:
        described = {"pipeline": self.pipeline_name, "device": self.device.label,
                     "state": self.state, "jobs": list(self.jobs), "restarts": self.restarts,
                     "reason": self.reason, "pid": self._process.pid if self._process else None,
                     **{key: value for key, value in self.details.items()
                        if key in ("gpu_memory_gib", "gpu_footprint_gib",
                                   "gpu_footprint_source")}}
        if self.peak_gib is not None:
            described["gpu_peak_gib"] = self.peak_gib
        budget = self.memory_budget() if self.memory_budget is not None else None
        if budget is not None:
            described["gpu_budget_gib"] = budget
        return described


def _how_it_ended(code: int | None) -> str:
    if code == -signal.SIGKILL:
        return "was killed (SIGKILL), probably out of memory"
    return f"exited (code {code})"


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the server's worker dies (kill -9 included), so an
    orphan never keeps the GPU memory the next worker's models need (prctl PR_SET_PDEATHSIG).
    The signal comes only if the parent dies after the call, and (prctl(2)) when the thread
    that started this process ends: a watch on the parent's pid covers both, and systems
    without prctl; a busy child would otherwise notice the parent gone only at the pipe."""
    parent = multiprocessing.parent_process()
    expected = parent.pid if parent is not None else os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the watch below still stops it
        pass

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's PDEATHSIG would

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _name_process(label: str) -> None:
    """Linux: name this process `lotus@cuda:0` (its /proc/PID/comm, what `ps -o comm` and
    `top` show), so an operator tells model processes apart now that the open /health no
    longer lists their pids (prctl PR_SET_NAME = 15, at most 15 bytes)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(15, label.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _serve(conn, cancel, config: PipelineConfig, name: str, device: Device) -> None:
    """The child: pin, load, report, then run jobs until the parent goes away."""
    # Ctrl-C reaches the whole process group: the server decides what stops (a running job
    # finishes in the graceful period, or goes back to the queue), not a KeyboardInterrupt
    # raised in the middle of a forward pass.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pin(device)  # before anything imports torch
    _die_with_parent()
    _name_process(f"{name}@{device.label}")
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s %(name)s [{name}@{device.label}]: "
                               "%(message)s")
    from pipelines.table import SPECS

    from .in_process import run_items

    pipeline = SPECS[name].factory(config)
    try:
        pipeline.load()
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(messages.Loaded(f"{type(exc).__name__}: {exc}"))
        return
    conn.send(messages.Loaded(None, _load_details(pipeline, name, config)))

    def progress(stage: str, fraction: float) -> None:
        if cancel.is_set():
            raise JobCancelled()
        conn.send(messages.Progress(stage, fraction))

    while True:
        try:
            run: messages.Run = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        conn.send(messages.Started())
        try:
            outcomes = run_items(pipeline, [(o, i, Path(s)) for o, i, s in run.items], progress)
        except JobCancelled:
            conn.send(messages.Cancelled())
            continue
        conn.send(messages.Done([outcome if isinstance(outcome, Result) else
                                 messages.Failure(str(outcome), outcome.kind)
                                 for outcome in outcomes]))


def _load_details(pipeline: Any, name: str, config: PipelineConfig) -> dict:
    """What the parent shows of a loaded worker: the admission memory of SAM 3D, the GPU
    memory the weights take and what the process holds on its GPU (its footprint)."""
    import torch

    from pipelines.device import footprint

    details = {"vram_gib": pipeline.vram_gib} if isinstance(pipeline, MemoryAdmitting) else {}
    if torch.cuda.is_available():
        details["gpu_memory_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    return {**details, **footprint(name, config.stand_in_footprints)}
