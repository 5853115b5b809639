"""Response models of the HTTP API, and the OpenAPI document built from them.

The HTTP layer (`app.py`, `api/`) shapes every JSON answer through these models and
validates every request with the pipelines' request models, so `/openapi.json` is
generated from the same classes that do the work and cannot drift from them.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from jobs.state import JobState
from pipelines import PipelineState
from pipelines.sam3d_parts.masks import MaskSource
from pipelines.table import endpoints, media_types
from workers.lanes import RECENT_JOBS
from workers.worker import WorkerState


def values_of(states: type[enum.Enum]) -> Any:
    """`Literal["a", "b", ...]` of an enum's values, in order: the field validates and
    serialises plain strings and the OpenAPI document lists the values inline (an enum
    field would add a component and a `$ref`), as it did before the states were enums."""
    return Literal[tuple(state.value for state in states)]


class HealthStatus(str, enum.Enum):
    """/health's `status`: the guide's three words."""

    HEALTHY = "healthy"
    LOADING = "loading"
    UNHEALTHY = "unhealthy"

    __str__ = str.__str__  # the value, as enum.StrEnum (Python 3.11) gives it
    __format__ = str.__format__


class ServerState(str, enum.Enum):
    """/health's and /readyz's `state` (api/health.py state_of): Cog's states, plus
    unhealthy."""

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    SETUP_FAILED = "setup_failed"
    UNHEALTHY = "unhealthy"

    __str__ = str.__str__
    __format__ = str.__format__


JobStateName = values_of(JobState)


class ErrorResponse(BaseModel):
    error: str
    job_id: str | None = None
    status_url: str | None = None


class LaneStats(BaseModel):
    queued: int
    processing: int
    workers: int
    ready_workers: int
    mean_seconds: float | None = Field(None, description="Mean processing time of the lane's "
                                       f"last {RECENT_JOBS} completed jobs (null until one "
                                       "completes): what the web page estimates waits from")


class QueueStats(BaseModel):
    queued: int = Field(description="Jobs waiting, every lane together")
    processing: int = Field(description="Jobs a model worker is running now")
    max_queue_size: int
    max_concurrent: int = Field(description="Jobs each lane runs at once on each device")
    lanes: dict[str, LaneStats] = Field(default_factory=dict, description="Each pipeline's "
                                        "lane: its own line of jobs and workers")


class WorkerStatus(BaseModel):
    pipeline: str
    device: str = Field(description="cuda:N (N among the GPUs the server sees), cpu:N, or "
                        "in-process")
    state: values_of(WorkerState)
    running: int = Field(0, description="How many jobs it is running")
    jobs: list[str] | None = Field(None, description="The ids of the jobs it is running "
                                   "(shown only with the API key)")
    restarts: int
    reason: str | None = None
    pid: int | None = Field(None, description="Its process id (shown only with the API key)")
    gpu_memory_gib: float | None = Field(None, description="GPU memory its loaded model takes")
    gpu_footprint_gib: float | None = Field(
        None, description="GPU memory its process holds, read at load (torch's reserved "
        "memory plus an estimated 0.5 GiB CUDA context)")
    gpu_footprint_source: Literal["measured", "stand-in"] | None = Field(
        None, description="stand-in: STAND_IN_GPU_FOOTPRINT_GIB's figure (tests), not a GPU's")
    gpu_peak_gib: float | None = Field(None, description="The most GPU memory one of its jobs "
                                       "allocated (gpu_peak_bytes)")
    gpu_budget_gib: float | None = Field(
        None, description="SAM 3D: the GPU memory its card leaves it beside the other workers "
        "there (SAM3D_VRAM_GIB or the card's size, less their footprints), what its jobs "
        "are admitted against")


class GPU(BaseModel):
    name: str
    vram_gb: float


class LotusModelInfo(BaseModel):
    """One row of the model table (Lotus's six, Depth Anything V2's three)."""

    repo_id: str
    task: Literal["depth", "normal"]
    mode: Literal["generation", "regression"] | None = Field(
        None, description="Lotus: generation, Lotus-G (seeded noise beside the photo); "
        "regression, Lotus-D")
    kind: Literal["relative", "metric"] | None = Field(
        None, description="Depth Anything V2: relative (affine-invariant disparity) or "
        "metric (depth in metres)")
    units: str | None = Field(None, description="Depth Anything V2: what its map holds")
    licence: str | None = Field(None, description="Depth Anything V2: the checkpoint's "
                                "licence, and where it is stated (licence_source)")
    licence_source: str | None = None
    served: bool

    @model_serializer(mode="wrap")
    def _only_its_family_fields(self, handler):
        """A Lotus row without Depth Anything's fields and the other way round: each row
        answers as it did before they shared this schema."""
        return {key: value for key, value in handler(self).items() if value is not None}


class Health(BaseModel):
    status: values_of(HealthStatus)
    state: values_of(ServerState) = Field(
        description="starting: models loading; ready: idle; busy: jobs running or waiting; "
                    "setup_failed: a model failed to load; unhealthy: a worker is dead or "
                    "OUTPUT_DIR is not writable")
    model_loaded: bool
    cuda: bool
    gpu: GPU | None = Field(description="The first GPU (the guide's field)")
    gpus: list[GPU] = Field(default_factory=list, description="Every GPU workers run on")
    queue: QueueStats
    pipelines: dict[str, values_of(PipelineState)] = Field(
        description="The pipelines this server serves, by state: readiness is theirs")
    pipeline_reasons: dict[str, str] = Field(
        default_factory=dict, description="Each known pipeline (sam3d, lotus, segment) that "
        "takes no job here now, and why, with what to do: 'not served here: ...' (absent "
        "from `pipelines`), 'failed to load: ...' or 'loading: ...'")
    capabilities: dict[str, dict[str, bool]] = Field(
        description="sam3d: the outputs this GPU fits; segment.offered: whether POST /segment "
        "answers now (SAM 3D Objects and its mask worker ready)")
    models: dict[str, LotusModelInfo] = Field(
        default_factory=dict, description="The model table: upstream Lotus's six checkpoints "
        "and Depth Anything V2's three by short name (a depth or normal request's `model`); "
        "`served`: present here")
    workers_alive: int
    workers: list[WorkerStatus] = Field(default_factory=list)
    notices: dict[str, str] = Field(default_factory=dict, description="What to know before "
                                    "trusting a model's results, e.g. test weights")


class Readiness(BaseModel):
    ready: bool
    state: str
    reasons: list[str]


class JobAccepted(BaseModel):
    job_id: str
    status: JobStateName
    position: int
    status_url: str
    message: str


class ObjectResult(BaseModel):
    """One reconstructed object: its pose in the photo's camera frame (PyTorch3D's: +X left,
    +Y up, +Z forward) and its size in the file."""

    rotation: list[float] = Field(description="Quaternion w, x, y, z")
    translation: list[float]
    scale: list[float]
    vertices: int | None = Field(None, description="Mesh vertices (mesh formats)")
    faces: int | None = Field(None, description="Mesh triangles (mesh formats)")
    gaussians: int | None = Field(None, description="Gaussians (ply)")


class JobStatus(BaseModel):
    """Fields beyond `job_id, status, position, stage, progress` depend on the state."""

    model_config = ConfigDict(extra="allow")  # a pipeline's result info (width, height, ...)

    job_id: str
    status: JobStateName
    position: int
    queue_length: int | None = None
    message: str | None = None
    download_url: str | None = None
    processing_time: float | None = None
    error: str | None = None
    worker: str | None = Field(None, description="The model worker that runs (ran) it: "
                               "pipeline@device")
    batch_size: int | None = Field(None, description="Jobs in the forward pass it ran in "
                                   "(depth jobs batch up to DEPTH_BATCH)")
    stage: str
    progress: float
    objects: list[ObjectResult] | None = Field(
        None, description="A completed 3D job: each object, in the order of its mask")
    vertices: int | None = None
    faces: int | None = None
    gaussians: int | None = None
    model: str | None = Field(None, description="A depth or normal job: the Lotus model that "
                              "ran it")
    min: float | None = Field(None, description="A completed depth job: the map's least value")
    max: float | None = Field(None, description="A completed depth job: its greatest value")
    disparity: bool | None = Field(None, description="A completed depth job: true for "
                                   "affine-invariant disparity, false for depth")
    units: str | None = Field(None, description="A completed depth job of a metric model: "
                              "metres")
    frame: str | None = Field(None, description="A completed normal job: the camera frame "
                              "of its normals")
    range: str | None = Field(None, description="A completed normal job: what its values mean")


class DepthResult(BaseModel):
    job_id: str
    image_base64: str = Field(description="The file, base64: a PNG, an .npy, or for output "
                              "glb / ply a relief mesh or point cloud")
    model: str | None = Field(None, description="The Lotus model that made it")
    min: float
    max: float
    disparity: bool | None = Field(None, description="true: affine-invariant disparity "
                                   "(larger = nearer); false: depth (affine-invariant, or "
                                   "in metres where `units` says so)")
    units: str | None = Field(None, description="A metric model's map: metres")
    geometry: str | None = Field(None, description="glb, ply: how the relief is built from "
                                 "the prediction (relief, not metric depth)")
    fov_degrees: float | None = Field(None, description="glb, ply: the field of view assumed")
    normals: str | None = Field(None, description="glb, and ply lit by a normal_model: where "
                                "the relief's vertex normals come from")
    normal_model: str | None = Field(None, description="The normal model that lit the relief")
    width: int
    height: int
    file_path: str = Field(description="The file's name inside OUTPUT_DIR")
    download_url: str


class NormalResult(BaseModel):
    job_id: str
    image_base64: str = Field(description="The file: an RGB PNG (8 or 16 bits) or an .npy of "
                              "height x width x 3 float32")
    model: str
    width: int
    height: int
    frame: str = Field(description="The camera frame the normals are in")
    range: str = Field(description="What the values mean")
    file_path: str = Field(description="The file's name inside OUTPUT_DIR")
    download_url: str


class SegmentResult(BaseModel):
    """The mask a 3D job would give the model for this image (no `mask` of the client's)."""

    mask: str = Field(description="Base64 PNG, 8-bit greyscale, the image's size: 255 is the "
                      "object, 0 the rest; send it as /generate's `mask` to use it")
    source: MaskSource = Field(
        description="alpha: the image's own transparency; rembg: background removal; "
        "center: a centre box (no rembg model on this server)")
    width: int = Field(description="The image's width as a job sees it (EXIF orientation "
                       "applied)")
    height: int
    job_id: str = Field(description="The job that made it (its file: /job/<id>/download)")


# The schemas an endpoint of the model table may answer with (its `answer`).
ANSWERS = {model.__name__: model for model in (DepthResult, NormalResult, SegmentResult)}


def answer_schema(name: str) -> type[BaseModel]:
    return ANSWERS[name]


def _json(model: type[BaseModel], description: str) -> dict:
    return {"description": description, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}


def _errors(*codes: int) -> dict:
    meanings = {400: "Invalid request", 401: "Missing or wrong API key", 404: "Unknown job",
                409: "Job not finished, or already finished", 410: "Results expired",
                413: "Request body too large", 422: "Idempotency-Key used for another request",
                500: "The job failed",
                501: "The model is not served on this server (the error says why); "
                     "retrying does not help",
                503: "Queue full or model loading (see Retry-After), or failed to load",
                504: "Sync wait timed out; keep polling status_url",
                507: "Does not fit in GPU memory"}
    return {str(code): _json(ErrorResponse, meanings[code]) for code in codes}


def _file(description: str) -> dict:
    return {"description": description, "content": {
        media: {"schema": {"type": "string", "format": "binary"}} for media in media_types()}}


# One server-sent event as a reader parses it (OpenAPI 3.2's SSE item; the stream sends
# only `data:` lines and keep-alive comments).
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "contentMediaType": "application/json",
             "contentSchema": {"$ref": "#/components/schemas/JobStatus"}},
    "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}
# Fields a multipart/form-data upload sends as files (api/request_body.py's form); the rest as text.
FORM_FILES = {"image": False, "mask": False, "masks": True, "video": False}


def _form_schema(schema: dict) -> dict:
    """A request model's schema as a form upload: its image fields as files."""
    binary = {"type": "string", "format": "binary"}
    properties = {name: ({"type": "array", "items": binary} if FORM_FILES[name] else binary)
                  if name in FORM_FILES else field
                  for name, field in schema["properties"].items()}
    return {**schema, "properties": properties}


def openapi_document(secured: bool) -> dict:
    table = endpoints()  # the model table's endpoints, in its order
    models = [ErrorResponse, QueueStats, GPU, Health, Readiness, JobAccepted, JobStatus,
              *ANSWERS.values(), *dict.fromkeys(endpoint.request for endpoint in table.values())]
    schemas: dict = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    auth = _errors(401) if secured else {}
    submit_errors = _errors(400, 413, 501, 503, 507)
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]

    def body(model):
        return {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
            "multipart/form-data": {"schema": _form_schema(schemas[model.__name__])}}}

    idempotency = [{"name": "Idempotency-Key", "in": "header", "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": "The same key and body within the result TTL answer the "
                                   "first job (200, Idempotent-Replayed: true); another body "
                                   "with the key is a 422"}]

    def submit(model, summary):
        return {"post": {"summary": summary, "parameters": idempotency,
                         "requestBody": body(model), "responses": {
                             "202": _json(JobAccepted, "Queued"),
                             "200": _json(JobAccepted, "The job this Idempotency-Key made"),
                             **submit_errors, **_errors(422), **auth}}}

    def submit_sync(model, summary, ok):
        return {"post": {"summary": summary, "parameters": idempotency,
                         "requestBody": body(model), "responses": {
                             "200": ok, **submit_errors, **_errors(409, 422, 500, 504),
                             **auth}}}

    paths = {
        "/health": {"get": {"summary": "Liveness, models and queue", "security": [],
                            "responses": {"200": _json(Health, "Healthy or loading"),
                                          "503": _json(Health, "A model failed to load")}}},
        "/livez": {"get": {"summary": "The process answers", "security": [], "responses": {
            "200": {"description": "Alive", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"alive": {"type": "boolean"}}}}}}}}},
        "/readyz": {"get": {"summary": "Models ready, workers alive, output folder writable",
                            "security": [], "responses": {
                                "200": _json(Readiness, "Ready"),
                                "503": _json(Readiness, "Not ready, and why")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "Prometheus text format", "content": {
                "text/plain": {"schema": {"type": "string"}}}}, **auth}}},
        "/queue": {"get": {"summary": "Queue statistics",
                           "responses": {"200": _json(QueueStats, "Queue statistics"), **auth}}},
        "/job/{job_id}": {
            "parameters": job_id,
            "get": {"summary": "Job status", "responses": {
                "200": _json(JobStatus, "Job status"), **_errors(404, 410), **auth}},
            "delete": {"summary": "Cancel a job", "parameters": [{
                "name": "force", "in": "query", "required": False,
                "schema": {"type": "string", "enum": ["true", "false"]},
                "description": "true: stop a running job at once (the model process "
                               "restarts) instead of at its next stage"}], "responses": {
                "200": _json(JobStatus, "Cancelled"),
                "202": _json(JobStatus, "Running; stops at its next stage"),
                **_errors(404, 409, 410), **auth}}},
        "/job/{job_id}/events": {"parameters": job_id, "get": {
            "summary": "The job's status as server-sent events until it finishes",
            "responses": {"200": {"description": "One `data:` line per change, each a "
                                                 "JobStatus as JSON", "content": {
                "text/event-stream": {"schema": SSE_EVENT}}},
                **_errors(404, 410), **auth}}},
        "/job/{job_id}/download": {"parameters": job_id, "get": {
            "summary": "The result file", "responses": {
                "200": _file("The result file"), **_errors(404, 409, 410, 500, 503, 507),
                **auth}}},
    }
    for endpoint in table.values():  # after the fixed paths, as the routes are added
        answer = (_file(endpoint.answer_description) if endpoint.sync == "file" else
                  _json(ANSWERS[endpoint.answer], endpoint.answer_description))
        if endpoint.sync == "only":
            paths[f"/{endpoint.path}"] = submit_sync(endpoint.request, endpoint.sync_summary,
                                                     answer)
            continue
        paths[f"/{endpoint.path}"] = submit(endpoint.request, endpoint.summary)
        paths[f"/{endpoint.path}/sync"] = submit_sync(endpoint.request, endpoint.sync_summary,
                                                      answer)
    document = {"openapi": "3.1.0",
                "info": {"title": "SAM 3D Objects and Lotus inference server",
                         "version": "0.1.0"},
                "paths": paths, "components": {"schemas": schemas}}
    paths["/openapi.json"] = {"get": {"summary": "This document", "responses": {
        "200": {"description": "OpenAPI 3.1 document"}, **auth}}}
    if secured:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
        document["security"] = [{"bearer": []}, {"apiKey": []}]
    return document
