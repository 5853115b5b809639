"""RunPod's input schema: which pipeline a `task` runs, each task's request model (the HTTP
endpoint's, plus `task`), a job's `images` as one request per image, and a job id as a file
name. Line numbers are runpod-python 1.7.7's, the pinned SDK.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import Field, ValidationError

from pipelines.base import validation_message
from pipelines.errors import InvalidInput
from pipelines.lotus import DepthRequest, NormalRequest
from pipelines.sam3d import GenerateRequest
from pipelines.table import tasks

# RunPod input's `task` -> the pipeline that runs it: the model table's endpoints' tasks,
# the default task's model's first (`depth, normal, 3d`, as messages list them).
DEFAULT_TASK = "depth"
TASKS = dict(sorted(((task, pipeline) for task, (pipeline, _) in tasks().items()),
                    key=lambda item: item[1] != tasks()[DEFAULT_TASK][0]))
MAX_BATCH_IMAGES = 16
# A job id becomes a file name. RunPod's (`sync-<uuid>`, `<uuid>-u1`) and the SDK's local
# ones (`test-<uuid>`, rp_fastapi.py:306,317; `local_test`, rp_local.py:40) fit this; the SDK
# hands on whatever id the job-take API or --test_input gave, unchecked (rp_job.py:110-117,
# rp_local.py:40).
SAFE_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class DepthJob(DepthRequest):
    task: Literal["depth"] = "depth"
    model_id: str | None = Field(None, description="Must match the worker's MODEL_ID")


class NormalJob(NormalRequest):
    task: Literal["normal"]


class ObjectJob(GenerateRequest):
    task: Literal["3d"]


JOBS = {"depth": DepthJob, "normal": NormalJob, "3d": ObjectJob}


def task_pipeline(job_input: dict) -> str | None:
    """The pipeline a job's `task` names; None for any other value (a typo, a list)."""
    task = job_input.get("task", DEFAULT_TASK)
    return TASKS.get(task) if isinstance(task, str) else None


def requests_of(model: type, job_input: dict) -> list:
    """One validated request per image: `images` (a list of base64 strings or http(s)
    URLs) shares the other options; without it, the single image fields."""
    sources = job_input.get("images")
    if sources is None:
        return [model.model_validate(job_input)]
    if not isinstance(sources, list) or not 1 <= len(sources) <= MAX_BATCH_IMAGES:
        raise InvalidInput(f"images must be a list of 1 to {MAX_BATCH_IMAGES} base64 "
                           "strings or URLs")
    options = {key: value for key, value in job_input.items() if key != "images"}
    requests = []
    for index, source in enumerate(sources):
        field = "image_url" if isinstance(source, str) and source.startswith(
            ("http://", "https://")) else "image"
        try:
            requests.append(model.model_validate({**options, field: source}))
        except ValidationError as exc:
            raise InvalidInput(f"images[{index}]: {validation_message(exc)}") from None
    return requests


def safe_job_id(job_id: Any) -> str:
    """The id as a file name: itself when made of letters, digits, `-` and `_`, else a name
    derived from it, so no id (`../x`, `a/b`) puts a result outside OUTPUT_DIR."""
    text = str(job_id)
    if SAFE_JOB_ID.fullmatch(text):
        return text
    return "job-" + hashlib.sha256(text.encode()).hexdigest()[:32]
