"""RunPod serverless worker over the same pipelines as the HTTP server.

    python handler.py                      # on RunPod: serve its queue; elsewhere: test_input.json
    python handler.py --warmup             # the same, after one small depth job in this process
    python handler.py --test_input '{"input": {...}}'   # the SDK's local test mode
    python handler.py --rp_serve_api --rp_api_port 8010 # the SDK's local /run, /runsync

RunPod hands a handler only `{"id", "input"}`, never HTTP headers, so the key travels as
`input.api_key` and is compared in constant time with `LOTUS_API_KEY`; with that variable
unset every job is refused. Models load once per worker, in the serving process, before the
first job; one that fails to load is reported in every answer that needs it. A job runs
through the HTTP server's queue (queue_manager.JobQueue, in-process as with MODEL_PROCESS=0):
its failures, batching and expiry are the queue's; RunPod's input schema and the answer's
files are serverless/'s. Line numbers are runpod-python 1.7.7's, the pinned SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import hmac
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from pydantic import ValidationError

from jobs.state import JobState, JobView, QueueFull, StorageUnavailable
from pipelines.base import Pipeline, Result, describe_failure, public_message, validation_message
from pipelines.errors import STATUS_OF, DiskFull, FailureKind, InvalidInput, NotLoaded, PipelineError
from pipelines.catalog import configured_pipelines
from pipelines.lotus.catalog import LOTUS_MODELS
from pipelines.images import JobInputs
from pipelines.lotus import DEFAULT_MODEL_ID, DepthRequest, NormalRequest
from pipelines.table import SPECS, pipeline_for, tasks
from queue_manager import JobQueue, QueueConfig
from serverless.answers import answer, bucket_name, sweep_volume
from serverless.inputs import (JOBS, MAX_BATCH_IMAGES, TASKS, requests_of, safe_job_id,
                               task_pipeline)
from settings import Settings, load_settings
from workers.devices import Device

log = logging.getLogger("handler")

# How long the queue's batching worker waits, after a depth job arrived, for the concurrent
# calls the SDK handed over with it (they arrive within milliseconds: rp_scale.py:207-221).
GATHER_SECONDS = 0.02


class Refused(Exception):
    """A refusal of the handler's own (the key, a full queue), with the status it answers."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class JobFailed(Exception):
    """A job the queue ran and failed: its kind and message, as the HTTP path has them."""

    def __init__(self, failure: PipelineError):
        super().__init__(str(failure))
        self.failure = failure


class Handler:
    """The loaded pipelines behind the HTTP server's queue (queue_manager.JobQueue, its
    pipelines run in this process as with MODEL_PROCESS=0), and what the handler adds: the
    key, RunPod's input schema (serverless/inputs.py), the answer's inline files
    (serverless/answers.py)."""

    def __init__(self, settings: Settings, pipelines: dict[str, Pipeline],
                 load_errors: dict[str, str] | None = None):
        self.settings, self.pipelines = settings, pipelines
        self.load_errors = load_errors or {}
        self.max_inline_bytes = settings.max_inline_bytes
        self.baseline_gpu_bytes = gpu_bytes_in_use()  # the loaded models
        self.bucket = bucket_name()
        device = Device("cuda" if _cuda() else "cpu", 0)
        # The SDK's concurrency: as many jobs at once as the model table lets one pass of a
        # model take (Lotus-D's, Depth Anything V2's DEPTH_BATCH); 3D jobs run one at a time
        # in their own lane.
        self.concurrency = max((SPECS[name].batch_limit(settings, device)
                                for name in pipelines
                                if name in SPECS and SPECS[name].batch_limit is not None),
                               default=1)
        self._reporters: dict[str, Callable[[str, float], None]] = {}
        # The queue's journal and working files in a folder of this process's own: the
        # answers' files go to OUTPUT_DIR (a network volume every worker shares, which the
        # queue's OUTPUT_DIR lock would give to one worker alone). A job's `images` may share
        # one pass (up to MAX_BATCH_IMAGES, as they did before they went through the queue); concurrent calls
        # are at most `concurrency`.
        self._work_dir = Path(tempfile.mkdtemp(prefix="runpod-queue-"))
        self.queue = JobQueue(pipelines, self._work_dir, QueueConfig.from_settings(
            settings, max_concurrent=1, max_queue_size=MAX_BATCH_IMAGES * self.concurrency,
            batch_limit=MAX_BATCH_IMAGES, gather_seconds=GATHER_SECONDS),
            observers=[self._observe])
        self.queue.start()
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the queue and remove its folder (the answers' files stay in OUTPUT_DIR)."""
        self.queue.stop(timeout=1.0)
        shutil.rmtree(self._work_dir, ignore_errors=True)

    @classmethod
    def from_env(cls) -> "Handler":
        """Load every configured model; one that fails is remembered, not fatal, so the
        worker answers why instead of crash-looping on a broken volume."""
        settings = load_settings()
        pipelines, errors = {}, {}
        for name, pipeline in configured_pipelines(settings).items():
            log.info("loading %s", name)
            try:
                pipeline.load()
                pipelines[name] = pipeline
            except Exception as exc:  # noqa: BLE001 - reported with every job that needs it
                errors[name] = f"{type(exc).__name__}: {exc}"
                log.error("%s failed to load: %s", name, errors[name])
        return cls(settings, pipelines, errors)

    def warm_up(self) -> None:
        """One small depth job in this process, so the first real one finds warm kernels."""
        if "lotus" not in self.pipelines:
            return
        try:
            started = time.perf_counter()
            lotus = self.pipelines["lotus"]
            first = lotus.served[0]  # the default depth model, or the first one served
            request = DepthRequest if LOTUS_MODELS[first].task == "depth" else NormalRequest
            lotus.predict(request(image="x", model=first).without_image(),
                          Image.new("RGB", (64, 48), (128, 128, 128)))
            log.info("warm-up done in %.1f s", time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - never fatal
            log.error("warm-up failed: %s", exc)

    def handle(self, job: dict) -> dict:
        """Always `{"error", "status"}` or the answer, never an exception."""
        job_input = job.get("input") or {}
        if not isinstance(job_input, dict):
            return {"error": "input must be a JSON object", "status": 400}
        job_input = dict(job_input)
        try:
            self._check_key(job_input.pop("api_key", None))
            return self._run(job, job_input)
        except Refused as exc:
            return {"error": public_message(str(exc)), "status": exc.status}
        except ValidationError as exc:
            return {"error": validation_message(exc), "status": 400}
        except JobFailed as exc:  # the queue's verdict (workers/in_process.run_items)
            failure = exc.failure
        except Exception as exc:  # noqa: BLE001 - every failure becomes an answer
            # (an exception would reach the caller as a traceback string: rp_job.py:210-220)
            failure = describe_failure(exc, self._advice(job_input))
            log.log(logging.ERROR if failure.kind is FailureKind.INTERNAL else logging.INFO,
                    "job %s refused: %s", job.get("id"), failure)
        answer: dict[str, Any] = {"error": public_message(str(failure)),
                                  "status": STATUS_OF[failure.kind]}
        if gpu_broken(failure) or self._gpu_memory_held(failure):
            # rp_job.py:193-198: the worker is stopped after this job and RunPod starts a
            # fresh one, instead of failing every job that follows on a poisoned GPU.
            answer["refresh_worker"] = True
            answer["error"] += " (this worker is being replaced)"
        return answer

    def _advice(self, job_input: dict) -> str:
        pipeline = self.pipelines.get(task_pipeline(job_input) or "")
        return getattr(pipeline, "oom_advice", "") if pipeline is not None else ""

    def _gpu_memory_held(self, failure: PipelineError) -> bool:
        """Out of memory that does not clear: more than 512 MiB above the loaded models."""
        return failure.kind is FailureKind.OUT_OF_MEMORY and gpu_bytes_in_use() > self.baseline_gpu_bytes + 2**29

    def _check_key(self, supplied: Any) -> None:
        key = self.settings.lotus_api_key  # trimmed by Settings; blank is unset
        expected = key.get_secret_value() if key is not None else ""
        if not expected:
            raise Refused(401, "Unauthorized: LOTUS_API_KEY is not set on this endpoint, so "
                               "every job is refused")
        supplied = supplied.strip() if isinstance(supplied, str) else ""
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            raise Refused(401, "Unauthorized")

    def _run(self, job: dict, job_input: dict) -> dict:
        job_id = safe_job_id(job.get("id", "local"))
        name = task_pipeline(job_input)
        if name is None:
            raise InvalidInput(f"task must be one of {', '.join(TASKS)}")
        task = job_input.get("task", "depth")
        if "webhook" in job_input or "webhook_events" in job_input:
            raise InvalidInput("webhook: give it to RunPod (the `webhook` beside `input` in "
                               "/run); this worker does not call webhooks")
        requests = requests_of(JOBS[task], job_input)
        name = pipeline_for(tasks()[task][1].path, requests[0])  # by `model`: the model table
        if name in self.load_errors:
            raise NotLoaded(f"model {name!r} failed to load on this worker: "
                            f"{self.load_errors[name]}")
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            raise InvalidInput(f"task {task!r} is not served by this worker")
        options = requests[0]
        if task == "depth" and options.model_id and options.model_id != self._model_id():
            raise InvalidInput(f"this worker serves {self._model_id()}; model_id "
                               f"{options.model_id!r} needs its own endpoint")
        pipeline.check(options)
        batch = "images" in job_input
        loaded = [self._load(request, f"images[{index}]: " if batch else "")
                  for index, request in enumerate(requests)]
        sweep_volume(self.settings.output_dir, self.settings.result_ttl_seconds)
        results = self._through_queue(name, loaded, progress_reporter(job))
        key = tasks()[task][1].inline_field  # image_base64 for a map, model_base64 for 3D
        return answer(results, job_id, batch, key, output_dir=self.settings.output_dir,
                      inline_bytes=self.max_inline_bytes, bucket=self.bucket)

    def _through_queue(self, name: str, loaded: list[JobInputs],
                       report: Callable[[str, float], None]) -> list[tuple[str, Result]]:
        """The job's images as queue jobs of `name`'s lane, entered together (they may share
        a pass, with each other and with concurrent calls' jobs), waited for in order: each
        result with its queue job's id, or the first failure, as the queue mapped it."""
        try:
            views = self.queue.submit_many(name, loaded)
        except QueueFull as exc:  # as the HTTP path answers them (app.py's submission)
            raise Refused(503, f"{exc}; retry later") from None
        except StorageUnavailable as exc:
            raise DiskFull(str(exc)) from None
        self._reporters[views[0].id] = report  # the job's stages: its first image's
        try:
            done = [self._wait(view.id) for view in views]
        finally:
            self._reporters.pop(views[0].id, None)
        for view in done:
            if view.state is not JobState.COMPLETED:
                raise JobFailed(PipelineError.of_kind(view.error_kind or FailureKind.INTERNAL,
                                                      view.error or f"job {view.state.value}"))
        return [(view.id, view.result) for view in done]

    def _wait(self, job_id: str) -> JobView:
        view = self.queue.wait(job_id, 60.0)
        while not view.state.finished:  # RunPod's executionTimeout bounds a job, not this
            view = self.queue.wait(job_id, 60.0)
        return view

    def _observe(self, view: JobView) -> None:
        """The queue's stage changes of a job RunPod is told about (under the queue's lock:
        progress_update only starts a thread, rp_progress.py:47-53)."""
        report = self._reporters.get(view.id)
        if report is not None and view.state is JobState.PROCESSING and view.stage != "starting":
            report(view.stage, view.progress)

    def _load(self, request, where: str) -> JobInputs:
        try:
            return request.load(self.settings.image_limits)
        except PipelineError as exc:
            raise type(exc)(f"{where}{exc}") from None

    def _model_id(self) -> str:
        return self.settings.model_id or DEFAULT_MODEL_ID


def progress_reporter(job: dict) -> Callable[[str, float], None]:
    """Stages to RunPod's job status (`progress_update`) when running on RunPod, where the
    SDK has somewhere to send them (worker.py:21); nothing locally."""
    if not os.environ.get("RUNPOD_WEBHOOK_GET_JOB"):
        return lambda stage, fraction: None
    from runpod.serverless import progress_update

    return lambda stage, fraction: progress_update(
        job, {"stage": stage, "progress": round(fraction, 2)})


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_bytes_in_use() -> int:
    import torch

    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def gpu_broken(failure: PipelineError) -> bool:
    """A CUDA error (illegal access, launch failure, ECC) leaves the context unusable: the
    queue's message keeps the exception's type and text (pipelines.base.describe_failure)."""
    message = str(failure)
    return failure.kind is FailureKind.INTERNAL and ("CUDA error" in message
                                                     or message.startswith("AcceleratorError"))


_handler: Handler | None = None


async def handler(job: dict) -> dict:
    """RunPod's entry point: one job in, one JSON-able answer out. A coroutine that runs the
    job on a thread (the SDK awaits what a handler returns, rp_job.py:181-186), so the jobs
    `concurrency` lets the SDK take at once are handled together."""
    return await asyncio.to_thread(_handler.handle, job)


def concurrency(current: int) -> int:
    """runpod-python's `concurrency_modifier`, asked before each fetch of jobs
    (rp_scale.py:158-161, 67-79): as many jobs at once as one pass of a depth model takes;
    3D jobs still run one at a time, in their own lane of the queue."""
    return 1 if _handler is None else _handler.concurrency


def main() -> None:
    global _handler
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--warmup", action="store_true")
    args, _ = parser.parse_known_args()  # the SDK reads its own flags (parse_known_args too)
    _handler = Handler.from_env()
    if args.warmup:
        _handler.warm_up()
    # The SDK logs whole job inputs (the key among them) at DEBUG: keep it at INFO.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    import runpod

    runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency})


if __name__ == "__main__":
    main()
