"""RunPod serverless worker over the same pipelines as the HTTP server.

    python handler.py                      # serve RunPod's queue
    python handler.py --warmup             # load the models once and exit 0 (never fatal)
    python handler.py --test_input '{"input": {...}}'   # the SDK's local test mode
    python handler.py --rp_serve_api --rp_api_port 8010 # the SDK's local /run, /runsync

RunPod hands a handler only `{"id", "input"}`, never HTTP headers, so the key travels as
`input.api_key` and is compared in constant time with `LOTUS_API_KEY`; with that variable
unset every job is refused. Models load once per worker, before the first job.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from pipelines.base import (Pipeline, PipelineError, Result, describe_failure,
                            is_out_of_memory, release_memory, validation_message)
from pipelines.catalog import configured_pipelines
from pipelines.images import load_image
from pipelines.lotus import DEFAULT_MODEL_ID, DepthRequest
from pipelines.sam3d import GenerateRequest
from settings import Settings, load_settings

log = logging.getLogger("handler")

TASKS = {"depth": "lotus", "3d": "sam3d"}


class DepthJob(DepthRequest):
    task: Literal["depth"] = "depth"
    model_id: str | None = Field(None, description="Must match the worker's MODEL_ID")


class ObjectJob(GenerateRequest):
    task: Literal["3d"]


class Unauthorized(Exception):
    pass


class Worker:
    """The loaded pipelines and what the handler needs to run one job."""

    def __init__(self, settings: Settings, pipelines: dict[str, Pipeline]):
        self.settings, self.pipelines = settings, pipelines
        self.max_inline_bytes = settings.max_inline_bytes
        self.baseline_gpu_bytes = gpu_bytes_in_use()  # the loaded models

    @classmethod
    def from_env(cls) -> "Worker":
        settings = load_settings()
        pipelines = configured_pipelines(settings)
        for name, pipeline in pipelines.items():
            log.info("loading %s", name)
            pipeline.load()
        return cls(settings, pipelines)

    def handle(self, job: dict) -> dict:
        """Always `{"error", "status"}` or the answer: RunPod shows a handler's exception to
        the caller as a traceback string with no status (runpod-python rp_job.py:286-296)."""
        job_input = job.get("input") or {}
        if not isinstance(job_input, dict):
            return {"error": "input must be a JSON object", "status": 400}
        job_input = dict(job_input)
        try:
            self._check_key(job_input.pop("api_key", None))
            return self._run(str(job.get("id", "local")), job_input)
        except Unauthorized as exc:
            return {"error": str(exc), "status": 401}
        except ValidationError as exc:
            return {"error": validation_message(exc), "status": 400}
        except Exception as exc:  # noqa: BLE001 - every failure becomes an answer
            failure, broken = describe_failure(exc, self._advice(job_input)), gpu_broken(exc)
            log.log(logging.ERROR if failure.status >= 500 else logging.INFO,
                    "job %s failed: %s", job.get("id"), failure)
        release_memory()  # outside the except block, so the traceback frees the tensors
        answer: dict[str, Any] = {"error": str(failure), "status": failure.status}
        if broken or self._gpu_memory_held(failure):
            # rp_job.py:268-274: the worker is stopped after this job and RunPod starts a
            # fresh one, instead of failing every job that follows on a poisoned GPU.
            answer["refresh_worker"] = True
            answer["error"] += " (this worker is being replaced)"
        return answer

    def _advice(self, job_input: dict) -> str:
        pipeline = self.pipelines.get(TASKS.get(job_input.get("task", "depth"), ""))
        return pipeline.oom_advice if pipeline is not None else ""

    def _gpu_memory_held(self, failure: PipelineError) -> bool:
        """Out of memory that does not clear: more than 512 MiB above the loaded models."""
        return failure.status == 507 and gpu_bytes_in_use() > self.baseline_gpu_bytes + 2**29

    def _check_key(self, supplied: Any) -> None:
        expected = os.environ.get("LOTUS_API_KEY", "").strip()
        if not expected:
            raise Unauthorized("Unauthorized: LOTUS_API_KEY is not set on this endpoint, so "
                               "every job is refused")
        supplied = supplied.strip() if isinstance(supplied, str) else ""
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            raise Unauthorized("Unauthorized")

    def _run(self, job_id: str, job_input: dict) -> dict:
        task = job_input.get("task", "depth")
        if task not in TASKS:
            raise PipelineError(f"task must be one of {', '.join(TASKS)}", status=400)
        request = (DepthJob if task == "depth" else ObjectJob).model_validate(job_input)
        pipeline = self.pipelines.get(TASKS[task])
        if pipeline is None:
            raise PipelineError(f"task {task!r} is not served by this worker", status=400)
        if task == "depth" and request.model_id and request.model_id != self._model_id():
            raise PipelineError(f"this worker serves {self._model_id()}; model_id "
                                f"{request.model_id!r} needs its own endpoint", status=400)
        pipeline.check(request)
        image = load_image(request, self.settings.image_limits)
        result = pipeline.run(request.without_image(), image,
                              self.settings.output_dir / f"{job_id}", lambda stage, f: None)
        return self._answer(job_id, result, "image_base64" if task == "depth" else "model_base64")

    def _model_id(self) -> str:
        return self.settings.model_id or DEFAULT_MODEL_ID

    def _answer(self, job_id: str, result: Result, key: str) -> dict:
        """The plan's answer: base64 + min/max + file_path, or a path (and URL) when the
        file would not fit in RunPod's payload limits."""
        answer: dict[str, Any] = {**result.info, "file_path": str(result.path),
                                  "media_type": result.media_type}
        size = Path(result.path).stat().st_size
        if size * 4 / 3 <= self.max_inline_bytes:
            answer[key] = base64.b64encode(Path(result.path).read_bytes()).decode()
            return answer
        answer["message"] = (f"result is {size} bytes, over the inline limit; "
                             "read it from file_path (network volume) or url")
        if os.environ.get("BUCKET_ENDPOINT_URL"):
            from runpod.serverless.utils.rp_upload import upload_file_to_bucket

            answer["url"] = upload_file_to_bucket(f"{job_id}{Path(result.path).suffix}",
                                                  str(result.path))
        return answer


def gpu_bytes_in_use() -> int:
    import torch

    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def gpu_broken(exc: BaseException) -> bool:
    """A CUDA error (illegal access, launch failure, ECC) leaves the context unusable."""
    return not is_out_of_memory(exc) and ("CUDA error" in str(exc)
                                          or type(exc).__name__ == "AcceleratorError")


_worker: Worker | None = None


def handler(job: dict) -> dict:
    """RunPod's entry point: one job in, one JSON-able answer out."""
    return _worker.handle(job)


def main() -> None:
    global _worker
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--warmup", action="store_true")
    args, _ = parser.parse_known_args()
    if args.warmup:
        try:
            Worker.from_env()
            log.info("warmup done: models load")
        except Exception as exc:  # the plan: a failed warmup must not stop the start
            log.error("warmup failed: %s", exc)
        sys.exit(0)
    _worker = Worker.from_env()
    # The SDK logs whole job inputs (the key among them) at DEBUG: keep it at INFO.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    import runpod

    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
