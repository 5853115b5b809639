"""The HTTP API of the SAM 3D Objects deployment guide, plus Lotus depth and normals.

HTTP only: parse and validate a request, hand a job to the queue, shape the answer.
Route -> `queue_manager.JobQueue.submit` -> `pipelines.<model>.run` -> result file.

`gunicorn app:app` and `python app.py` serve the same app. The module-level `app` is
built on first access (PEP 562), so importing this module (tests, gunicorn's master)
never loads a model or touches CUDA.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args, get_origin

try:
    from flask import Flask, Response, current_app, jsonify, request, send_file
    from PIL import Image  # noqa: F401  (the first package a bare `python app.py` misses)
    from pydantic import BaseModel, ValidationError
except ModuleNotFoundError as exc:
    if __name__ != "__main__":
        raise
    sys.exit(f"{exc}: this Python lacks the server's packages; run `make serve`, or "
             f"activate .venv (`. .venv/bin/activate`) and run `python app.py` again")
from werkzeug.exceptions import HTTPException

from jobs.idempotency import MAX_KEY_LENGTH, IdempotencyKeys, KeyReused
from front.events import JobEvents
from front.forms import FormError, read_parts
from metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from metrics import Metrics
from pipelines import PipelineRegistry
from pipelines.base import (Capable, ModelTable, Noticing, PipelineError, public_message,
                            validation_message)
from pipelines.device import gpu_info
from pipelines.fetch import check_url
from pipelines.spec import Endpoint
from pipelines.table import SPECS, endpoints, pipeline_for, serving
from queue_manager import (JobExpired, JobNotFound, JobQueue, JobState, JobView,
                           NotCancellable, QueueFull, StorageUnavailable)
from schemas import (ErrorResponse, Health, JobAccepted, JobStatus, QueueStats, answer_schema,
                     openapi_document)
from settings import Settings, SettingsError, load_settings
from jobs.storage import OutputDirInUse
from webhooks import WebhookSender
from workers.pool import serving_pipelines

log = logging.getLogger("server")

# POST /<path> -> its row of the model table (pipelines/table.py)
ENDPOINTS: dict[str, Endpoint] = endpoints()
# A pipeline served only where another is: /segment's masks are of use to 3D jobs alone.
NEEDS = {name: spec.needs for name, spec in SPECS.items() if spec.needs}
RETRY_AFTER_SECONDS = "10"
OPEN_PATHS = {"/health", "/livez", "/readyz", "/"}
OPEN_PREFIXES = ("/static/", "/vendor/")  # the web page: public, the API behind it is not
# What /health shows only to the API key's holder: the ids of running jobs (on a server
# without API_KEY a job id is all that guards a result) and the model processes' pids.
OPEN_HEALTH_HIDES = {"workers": {"__all__": {"jobs", "pid"}}}
WEB = Path(__file__).resolve().parent / "web"
# The page's JavaScript, from the npm packages pinned in web/package-lock.json (`npm ci`
# in web/): served here, never from a CDN, so an offline pod shows the page too.
VENDOR_FILES = {
    # the module build imports "three" (the page's import map) where model-viewer.min.js
    # bundles a copy of its own: one three.js on the page, not two
    "model-viewer-module.min.js": "@google/model-viewer/dist/model-viewer-module.min.js",
    "three.module.min.js": "three/build/three.module.min.js",
    "three.core.min.js": "three/build/three.core.min.js",
    "gaussian-splats-3d.module.js": "@mkkellogg/gaussian-splats-3d/build/gaussian-splats-3d.module.js",
    **{name: f"three/examples/jsm/{folder}/{name}" for folder, name in (
        ("loaders", "OBJLoader.js"), ("loaders", "MTLLoader.js"), ("loaders", "STLLoader.js"),
        ("loaders", "PLYLoader.js"),
        ("controls", "OrbitControls.js"), ("libs", "fflate.module.js"))},
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, retry_after: bool = False, **extra):
        """`retry_after`: a 503 that will pass (queue full, model loading) says when to
        retry; one that will not (the model is not served here) says nothing of the kind."""
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra
        self.retry_after = retry_after


def create_app(settings: Settings | None = None, *,
               registry: PipelineRegistry | None = None) -> Flask:
    """Build the app, start the queue's workers and load the models in the background."""
    settings = settings or load_settings()
    workers: dict = {}
    if registry is None:
        pipelines, workers = serving_pipelines(settings)
        registry = PipelineRegistry(pipelines)
    metrics = Metrics()
    observers = [metrics.observe]
    if settings.webhook_secret is not None:
        observers.append(WebhookSender(settings.webhook_secret.get_secret_value(), _describe,
                                       allow_private=settings.allow_private_urls).observe)
    queue = JobQueue(registry, settings.output_dir, workers=workers,
                     max_queue_size=settings.max_queue_size,
                     max_concurrent=settings.max_concurrent,
                     batch_limit=settings.depth_batch or 1,
                     result_ttl_seconds=settings.result_ttl_seconds,
                     min_free_bytes=settings.min_free_disk_mb * 2**20, observers=observers,
                     video_limits=settings.image_limits.video)
    metrics.watch(queue.stats, lambda: dict(registry.load_seconds))
    queue.start()
    registry.load_in_background()
    if not registry.status():
        log.error("no pipeline to serve: no checkpoint found in %s and PIPELINES is empty",
                  settings.checkpoints_dir)
    if settings.required_api_key is None:
        log.warning("API_KEY is not set: every endpoint is open to anyone who can reach it")

    app = Flask(__name__, static_folder=WEB / "static", static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    # a base64 image sent as a form's text field is held to the body's limit, not 500 kB
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_content_length
    app.json.sort_keys = False
    app.extensions.update(settings=settings, registry=registry, queue=queue, metrics=metrics,
                          devices=sorted({w.device for ws in workers.values() for w in ws},
                                         key=lambda d: (d.kind, d.index)),
                          idempotency=IdempotencyKeys(settings.result_ttl_seconds))
    app.before_request(_check_api_key)
    app.after_request(_count_request)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    _add_routes(app)
    return app


def _settings() -> Settings:
    return current_app.extensions["settings"]


def _queue() -> JobQueue:
    return current_app.extensions["queue"]


def _registry() -> PipelineRegistry:
    return current_app.extensions["registry"]


# -- errors and auth ------------------------------------------------------------------

def _error(status: int, message: str, headers: dict | None = None, **extra) -> Response:
    response = jsonify(ErrorResponse(error=public_message(message),
                                     **extra).model_dump(exclude_none=True))
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _api_error(exc: ApiError) -> Response:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if exc.retry_after else None
    return _error(exc.status, exc.message, headers, **exc.extra)


def _http_error(exc: HTTPException) -> Response:
    # werkzeug's 413s are bare (wrappers, sansio/multipart.py:194, formparser.py:398); the
    # one left to it here is a Content-Length over MAX_CONTENT_LENGTH: forms count their own
    # parts and bytes (front/forms.py) and say which (issue 31 item 10).
    limit = _settings().max_content_length
    message = {413: f"request body is larger than {limit} bytes"
               if (request.content_length or 0) > limit else "request is too large"}
    return _error(exc.code or 500, message.get(exc.code, exc.description or exc.name))


def _unexpected_error(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _error(500, "internal server error")


def _check_api_key() -> None:
    expected = _settings().required_api_key
    if expected is None or request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
        return
    if not _holds_key():
        raise ApiError(401, "Unauthorized: send the API key as 'Authorization: Bearer <key>' "
                            "or 'X-API-Key: <key>'")


def _holds_key() -> bool:
    """Whether this request carries the server's API key (constant-time); never on a server
    without one: there nobody is known, so nobody sees what only the key's holder may."""
    expected = _settings().required_api_key
    if expected is None:
        return False
    supplied = (_bearer_token(request.headers.get("Authorization", ""))
                or request.headers.get("X-API-Key") or request.headers.get("lotus-api-key") or "")
    return hmac.compare_digest(supplied.encode(), expected.encode())


def _count_request(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    current_app.extensions["metrics"].request(request.method, route, response.status_code)
    return response


def _bearer_token(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


# -- request parsing ----------------------------------------------------------------

def _parse(model: type[BaseModel], raw: bytes) -> BaseModel:
    """JSON body -> validated model. Control characters inside strings are allowed: the
    guide's Git Bash recipe puts a raw newline inside the base64 string."""
    try:
        body = json.loads(raw.decode("utf-8-sig"), strict=False) if raw.strip() else None
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, 4300+ digit numbers
        raise ApiError(400, f"request body is not valid JSON: {str(exc)[:200]} (a file can "
                            "also come as multipart/form-data: curl -F image=@photo.jpg)") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc)) from None


def _body() -> bytes:
    """The request body. A chunked one (no Content-Length) is read here up to one byte past
    MAX_CONTENT_LENGTH: werkzeug would cut it at the limit without a word."""
    if request.content_length is not None:
        return request.get_data(cache=False)  # over the limit: werkzeug's own 413
    limit = _settings().max_content_length
    raw = request.environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes")
    return raw


def _is_list(annotation) -> bool:
    return get_origin(annotation) is list or any(map(_is_list, get_args(annotation)))


def _literal_numbers(annotation) -> dict[str, object]:
    """A form's text for each number a field's Literal allows (`texture_size=1024`): pydantic
    does not turn "1024" into Literal[512, 1024, 2048]'s 1024, even in lax mode."""
    if get_origin(annotation) is Literal:
        return {str(value): value for value in get_args(annotation) if not isinstance(value, str)}
    return {text: value for arg in get_args(annotation)
            for text, value in _literal_numbers(arg).items()}


def _form(model: type[BaseModel]) -> tuple[BaseModel, bytes]:
    """A multipart/form-data upload (`curl -F image=@photo.jpg -F output_format=ply`) as the
    JSON body it stands for: each file as its bytes (within MAX_CONTENT_LENGTH, as a JSON
    body's), a repeated field as a list in the order sent, text typed by the model. Also what
    identifies its content for an Idempotency-Key: the boundary differs on every retry."""
    lists = {name for name, field in model.model_fields.items() if _is_list(field.annotation)}
    body: dict = {}
    for name, values in _form_parts().items():
        if name not in lists and len(values) > 1:
            raise ApiError(400, f"{name}: send one value, not {len(values)}")
        if name in model.model_fields:
            numbers = _literal_numbers(model.model_fields[name].annotation)
            values = [numbers.get(v, v) if isinstance(v, str) else v for v in values]
        body[name] = values if name in lists else values[0]
    try:
        payload = model.model_validate(body, strict=False)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc)) from None
    identity = json.dumps(sorted(
        (name, [hashlib.sha256(value if isinstance(value, bytes) else str(value).encode()).hexdigest()
                for value in (values if isinstance(values, list) else [values])])
        for name, values in body.items()))
    return payload, identity.encode()


def _form_parts() -> dict[str, list[str | bytes]]:
    """The form's values by field name, each field's in the order sent, text and file parts
    alike (`masks`: objects[i] is the i-th mask sent). Read by front/forms.py rather than
    request.form/files: a non-UTF-8 file name no longer drops the form, and a 413 says
    whether the form had too many parts or too many bytes (issue 31 items 9-11)."""
    # a chunked body (no Content-Length) is read as _body() reads it: read_parts counts it
    stream = (request.stream if request.content_length is not None
              else request.environ["wsgi.input"])
    try:
        parts = read_parts(stream.read, request.mimetype_params.get("boundary"),
                           _settings().max_content_length)
    except FormError as exc:
        raise ApiError(exc.status, exc.message) from None
    fields: dict[str, list[str | bytes]] = {}
    for part in parts:
        fields.setdefault(part.name, []).append(part.value)
    return fields


def _submit(endpoint: str, sync: bool = False) -> tuple[JobView, bool]:
    """Validate and queue a job; the job, and whether it is one an Idempotency-Key found."""
    model = ENDPOINTS[endpoint].request
    if request.mimetype == "multipart/form-data":
        payload, raw = _form(model)
    else:
        raw = _body()
        payload = _parse(model, raw)
    pipeline = pipeline_for(endpoint, payload)
    if pipeline not in _registry().status() and len(serving(endpoint)) > 1:
        # a model of another family than the ones this server runs: the request's fault
        raise ApiError(400, f"model {getattr(payload, 'model', None)} is not served here: "
                            f"{pipeline!r} is not loaded on this server (loaded: "
                            f"{', '.join(_registry()) or 'none'}; /health lists the models)")
    if sync and getattr(payload, "is_video", False):
        raise ApiError(400, f"video: POST /{endpoint} takes videos (a job to poll, then "
                            f"/job/<id>/download); /{endpoint}/sync answers images only")
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    _require_ready(pipeline)

    def submit() -> JobView:
        _registry()[pipeline].check(payload)
        if getattr(payload, "webhook", None) is not None:
            _check_webhook(payload.webhook)
        # The image is fetched and decoded holding a queue slot: a full queue says 503 first.
        return _queue().submit(pipeline, lambda: payload.load(_settings().image_limits))

    try:
        if key is None:
            return submit(), False
        keys: IdempotencyKeys = current_app.extensions["idempotency"]
        return keys.submit(key, keys.fingerprint(endpoint, raw), submit, _find)
    except PipelineError as exc:
        raise ApiError(exc.status, str(exc)) from None
    except QueueFull as exc:
        raise ApiError(503, f"{exc}; retry later", retry_after=True) from None
    except StorageUnavailable as exc:
        raise ApiError(507, f"{exc}; the server takes jobs again once it has room",
                       retry_after=True) from None
    except KeyReused as exc:
        raise ApiError(422, str(exc)) from None


def _check_webhook(url: str) -> None:
    if _settings().webhook_secret is None:
        raise ApiError(400, "webhook: this server has no WEBHOOK_SECRET to sign webhooks with, "
                            "so it sends none; poll the job or follow /job/<id>/events")
    check_url(url, "webhook", _settings().allow_private_urls)


def _require_ready(pipeline: str) -> None:
    if pipeline in NEEDS:
        try:
            _require_ready(NEEDS[pipeline])
        except ApiError as exc:
            raise ApiError(exc.status, f"{pipeline!r} serves {NEEDS[pipeline]!r} jobs only: "
                           f"{exc.message}", retry_after=exc.retry_after) from None
    status = _registry().status().get(pipeline)
    if status == "ready":
        return
    if status == "loading":
        raise ApiError(503, f"model {pipeline!r} is still loading; retry shortly",
                       retry_after=True)
    if status == "failed":
        raise ApiError(503, f"model {pipeline!r} failed to load: {_registry().error(pipeline)}")
    # Not served here: no retry brings it, so not a 503 ("retry later") but 501, the
    # server does not do this (RFC 9110 15.6.2), with why and what to do.
    reason = pipeline_reasons(_settings(), _registry()).get(pipeline, "not served here")
    raise ApiError(501, f"model {pipeline!r} is not loaded on this server: {reason} "
                        f"(loaded: {', '.join(_registry()) or 'none'})")


def pipeline_reasons(settings: Settings, registry: PipelineRegistry) -> dict[str, str]:
    """Why each pipeline of the model table does not take jobs here now, and what to do: the
    words /health (`pipeline_reasons`), the API's refusal, the page's tooltip and the CLI
    give. A ready one is not listed. Open (in /health): names settings, never a path."""
    status, reasons = registry.status(), {}
    for name in SPECS:
        state = status.get(name)
        if state == "loading":
            reasons[name] = "loading: jobs wait until it is ready"
        elif state == "failed":
            reasons[name] = (f"failed to load: {public_message(registry.error(name) or '?')}; "
                             "the server's log says more, DEPLOY.md what it needs")
        elif state is None:
            reasons[name] = f"not served here: {_not_served(name, settings)}"
    return reasons


def _not_served(name: str, settings: Settings) -> str:
    spec = SPECS[name]
    if spec.needs is not None:
        return f"it serves {spec.needs}'s jobs, and runs only where {spec.needs} does"
    if settings.pipeline_names and name not in settings.pipeline_names:
        return f"PIPELINES={','.join(settings.pipeline_names)} leaves it out"
    return spec.unconfigured


def _find(job_id: str) -> JobView:
    try:
        return _queue().get(job_id)
    except JobNotFound:
        raise ApiError(404, "job not found") from None
    except JobExpired:
        raise ApiError(410, "job results have expired", job_id=job_id) from None


# -- response shaping -----------------------------------------------------------------

def _accepted(submitted: tuple[JobView, bool]) -> Response:
    """202 with the new job; 200 with the job an Idempotency-Key found."""
    view, replayed = submitted
    response = jsonify(JobAccepted(
        job_id=view.id, status=view.state.value, position=view.position,
        status_url=f"/job/{view.id}",
        message=f"Job queued at position {view.position}. Poll status_url for updates.",
    ).model_dump())
    response.status_code = 200 if replayed else 202
    response.headers["Location"] = f"/job/{view.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _json(model: BaseModel, status: int = 200, **dump) -> Response:
    """A model as a JSON answer, serialised by pydantic in one step (the dict ->
    json.dumps round cost a status poll more than its own work)."""
    return Response(model.model_dump_json(**dump), status, mimetype="application/json")


def _describe(view: JobView) -> dict:
    """A job's status as `GET /job/<id>` answers it, for its events stream and webhooks."""
    return _job_status(view).model_dump(exclude_none=True)


def _job_status(view: JobView) -> JobStatus:
    fields: dict = {}
    if view.state is JobState.QUEUED:
        fields.update(queue_length=view.queue_length,
                      message=f"Waiting in queue, position {view.position}")
    elif view.state is JobState.PROCESSING:
        fields.update(processing_time=view.processing_time, worker=view.worker,
                      batch_size=view.batch_size, message=(
            "Cancelling: the job stops at its next stage" if view.cancel_requested
            else f"Processing: {view.stage}"))
    elif view.state is JobState.COMPLETED:
        fields.update(download_url=f"/job/{view.id}/download", worker=view.worker,
                      batch_size=view.batch_size, processing_time=view.processing_time,
                      **view.result.info)
    elif view.state is JobState.FAILED:
        fields.update(error=public_message(view.error),
                      processing_time=view.processing_time)
    else:
        fields.update(message="Job was cancelled")
    return JobStatus(job_id=view.id, status=view.state.value, position=view.position,
                     stage=view.stage, progress=view.progress, **fields)


def _result_file(view: JobView) -> Response:
    if view.state is JobState.FAILED:
        raise ApiError(view.error_status or 500, view.error, job_id=view.id)
    if view.state is not JobState.COMPLETED:
        raise ApiError(409, f"job is {view.state.value}, not completed", job_id=view.id,
                       status_url=f"/job/{view.id}")
    result = view.result
    try:
        return send_file(Path(result.path).resolve(), mimetype=result.media_type,
                         as_attachment=True, download_name=result.download_name, max_age=0)
    except FileNotFoundError:  # expired between the lookup and the read
        raise ApiError(410, "job results have expired", job_id=view.id) from None


def _inline_file(view: JobView) -> str:
    """A finished job's file in base64, for an answer that carries it; the job's error as
    JSON if it failed."""
    if view.state is not JobState.COMPLETED:
        _result_file(view)  # raises the job's error
    try:
        data = Path(view.result.path).read_bytes()
    except FileNotFoundError:  # expired between the wait and the read
        raise ApiError(410, "job results have expired", job_id=view.id) from None
    return base64.b64encode(data).decode()


def _map_result(view: JobView, endpoint: Endpoint) -> Response:
    """A finished job as its endpoint's JSON answer: the file inline (base64, in the
    endpoint's `inline_field`) and its info."""
    data = _inline_file(view)
    schema = answer_schema(endpoint.answer)
    return jsonify(schema(job_id=view.id, **{endpoint.inline_field: data}, **view.result.info,
                          file_path=view.result.path.name,
                          download_url=f"/job/{view.id}/download").model_dump())


def _wait(view: JobView) -> JobView:
    try:
        view = _queue().wait(view.id, _settings().sync_timeout_seconds)
    except (JobExpired, JobNotFound):  # finished and expired while this request waited
        raise ApiError(410, "job results have expired", job_id=view.id) from None
    if not view.state.finished:
        raise ApiError(504, f"job did not finish within {_settings().sync_timeout_seconds:g} s; "
                            "keep polling status_url", job_id=view.id,
                       status_url=f"/job/{view.id}")
    return view


@dataclass(frozen=True)
class _Reading:
    """One look at the server, each figure read once, for /health and /readyz."""

    pipelines: dict[str, str]
    workers: list[dict]
    stats: dict
    storage: str | None  # why results cannot be written now

    @classmethod
    def now(cls) -> "_Reading":
        queue = _queue()
        return cls(_registry().status(), queue.workers(), queue.stats(), queue.output_problem())


def _problems(reading: _Reading) -> dict[str, list[str]]:
    """What stops this server from serving, by the `state` it puts /health in."""
    queue, pipelines = _queue(), reading.pipelines
    unhealthy = []
    if queue.workers_alive() < queue.workers_expected():
        unhealthy.append("a queue worker is dead")
    if not queue.janitor_alive():
        unhealthy.append("the queue's janitor is dead")
    if reading.storage is not None:
        unhealthy.append(reading.storage)
    setup_failed = [f"model {name!r} failed to load" for name, state in pipelines.items()
                    if state == "failed"] or ([] if pipelines else ["no model to serve"])
    starting = [f"model {name!r} is loading" for name, state in pipelines.items()
                if state == "loading"]
    for name in [name for name, state in pipelines.items() if state == "ready"]:
        own = [worker for worker in reading.workers if worker["pipeline"] == name]
        if own and not any(worker["state"] in ("ready", "busy") for worker in own):
            starting.append(f"model {name!r} has no worker up: "
                            f"{own[0]['reason'] or own[0]['state']}")
    return {"unhealthy": unhealthy, "setup_failed": setup_failed, "starting": starting}


def _state(problems: dict[str, list[str]], stats: dict) -> str:
    """Cog's states, plus unhealthy: the first kind of problem found, else ready or busy."""
    for state in ("unhealthy", "setup_failed", "starting"):
        if problems[state]:
            return state
    return "busy" if stats["processing"] or stats["queued"] else "ready"


def _health_answer() -> Response:
    """/health, built and serialised anew only when one of its readings changed: a load
    balancer polling it costs a few reads, not a model validated and dumped each time.
    The open view (anyone, and everyone on a server without API_KEY) lists no job ids and
    no process ids (issue 31 item 13): a job id is what guards a result and a forced cancel."""
    reading, queue = _Reading.now(), _queue()
    view = "full" if _holds_key() else "open"
    key = repr((reading, queue.workers_alive(), queue.janitor_alive(), queue.journal_notice))
    answers = current_app.extensions.setdefault("health", {})
    cached = answers.get(view)
    if cached is None or cached[0] != key:
        body, status = _health(reading)
        cached = answers[view] = (key, body.model_dump_json(
            exclude=OPEN_HEALTH_HIDES if view == "open" else None), status)
    return Response(cached[1], cached[2], mimetype="application/json")


def _health(reading: _Reading) -> tuple[Health, int]:
    """Everything else in /health (models, capabilities, notices, GPUs) is fixed once the
    pipelines have loaded, which `reading.pipelines` tells."""
    registry, queue = _registry(), _queue()
    pipelines = reading.pipelines
    state = _state(_problems(reading), reading.stats)
    ready = bool(pipelines) and all(s == "ready" for s in pipelines.values()) and \
        state in ("ready", "busy")
    broken = state in ("unhealthy", "setup_failed")
    status = "unhealthy" if broken else "healthy" if ready else "loading"
    capabilities = {name: pipeline.capabilities for name, pipeline in registry.items()
                    if isinstance(pipeline, Capable)}
    for name, needed in NEEDS.items():  # e.g. segment.offered: /segment answers now
        capabilities[name] = {"offered": all(pipelines.get(each) == "ready"
                                             for each in (name, needed))}
    notices = {name: pipeline.notice for name, pipeline in registry.items()
               if isinstance(pipeline, Noticing) and pipeline.notice}
    models = {name: info for pipeline in registry.values() if isinstance(pipeline, ModelTable)
              for name, info in pipeline.model_table().items()}
    if queue.journal_notice:
        notices["journal"] = queue.journal_notice
    if reading.storage is not None:
        notices["storage"] = reading.storage
    body = Health(status=status, state=state, model_loaded=ready, **_gpus(),
                  queue=reading.stats, pipelines=pipelines,
                  pipeline_reasons=pipeline_reasons(_settings(), registry),
                  capabilities=capabilities,
                  models=models, workers_alive=queue.workers_alive(),
                  workers=[{**worker, "running": len(worker["jobs"])}
                           for worker in reading.workers],
                  notices=notices)
    return body, 503 if broken else 200


def _gpus() -> dict:
    """The GPUs the model workers run on, as the probe found them (this process never
    initialises CUDA); in-process pipelines (MODEL_PROCESS=0) ask torch here."""
    devices = current_app.extensions["devices"]
    if not devices:
        return gpu_info()
    gpus = [{"name": d.name, "vram_gb": d.memory_gib or 0.0} for d in devices
            if d.kind == "cuda"]
    return {"cuda": bool(gpus), "gpu": gpus[0] if gpus else None, "gpus": gpus}


# -- routes -----------------------------------------------------------------------------

def _add_routes(app: Flask) -> None:
    @app.get("/health")
    def health():
        return _health_answer()

    @app.get("/livez")
    def livez():
        return jsonify(alive=True)

    @app.get("/readyz")
    def readyz():
        reading = _Reading.now()
        problems = _problems(reading)
        state = _state(problems, reading.stats)
        reasons = [reason for kind in problems.values() for reason in kind]
        return jsonify(ready=not reasons, state=state, reasons=reasons), 503 if reasons else 200

    @app.get("/metrics")
    def metrics():
        return Response(current_app.extensions["metrics"].exposition(),
                        mimetype=METRICS_CONTENT_TYPE)

    @app.get("/")
    def web_page():
        return send_file(WEB / "static" / "index.html", max_age=0)

    @app.get("/vendor/<name>")
    def vendor(name):
        if name not in VENDOR_FILES:
            raise ApiError(404, "no such file")
        path = WEB / "node_modules" / VENDOR_FILES[name]
        if not path.is_file():
            raise ApiError(404, f"{name} is not installed: run `npm ci` in web/")
        return send_file(path, mimetype="text/javascript", max_age=3600)

    @app.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document(secured=_settings().required_api_key is not None))

    @app.get("/queue")
    def queue_stats():
        return jsonify(QueueStats(**_queue().stats()).model_dump())

    for endpoint in ENDPOINTS.values():  # the model table's endpoints, one loop
        _add_endpoint(app, endpoint)

    @app.get("/job/<job_id>")
    def job_status(job_id):
        return _json(_job_status(_find(job_id)), exclude_none=True)

    @app.delete("/job/<job_id>")
    def job_cancel(job_id):
        _find(job_id)
        try:
            view = _queue().cancel(job_id, force=request.args.get("force") == "true")
        except NotCancellable as exc:
            raise ApiError(409, str(exc), job_id=job_id) from None
        except (JobExpired, JobNotFound):  # expired between the lookup and the cancel
            raise ApiError(410, "job results have expired", job_id=job_id) from None
        return _json(_job_status(view), 200 if view.state.finished else 202, exclude_none=True)

    @app.get("/job/<job_id>/events")
    def job_events(job_id):
        _find(job_id)  # 404 or 410 before the stream starts
        # direct_passthrough: the front (front/asgi.py) sees JobEvents and streams it
        # without a thread; Flask's development server iterates it in its own.
        return Response(JobEvents(_queue(), job_id, _describe), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                        direct_passthrough=True)

    @app.get("/job/<job_id>/download")
    def job_download(job_id):
        return _result_file(_find(job_id))


def _add_endpoint(app: Flask, endpoint: Endpoint) -> None:
    """`POST /<path>` (a job to poll) and `/<path>/sync` (the answer), or, for an endpoint
    that is `sync` "only", `POST /<path>` answering at once."""
    path = endpoint.path
    if endpoint.sync == "only":
        app.add_url_rule(f"/{path}", path, methods=["POST"], view_func=lambda: _map_result(
            _wait(_submit(path, sync=True)[0]), endpoint))
        return
    app.add_url_rule(f"/{path}", path, methods=["POST"],
                     view_func=lambda: _accepted(_submit(path)))
    if endpoint.sync == "file":
        sync = lambda: _result_file(_wait(_submit(path)[0]))  # noqa: E731
    else:
        sync = lambda: _map_result(_wait(_submit(path, sync=True)[0]), endpoint)  # noqa: E731
    app.add_url_rule(f"/{path}/sync", f"{path}_sync", methods=["POST"], view_func=sync)


def __getattr__(name: str):
    """`app.app` for gunicorn: built once, in the process that first asks for it."""
    if name != "app":
        raise AttributeError(name)
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.exit(f"error: {exc}")
    try:
        globals()["app"] = application = create_app(settings)
    except (OutputDirInUse, OSError) as exc:  # another server, or a journal it cannot open
        log.error("%s", exc)
        sys.exit(3)  # gunicorn's "worker failed to boot": the master stops, not respawns
    return application


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        application = create_app(settings)
    except (SettingsError, OutputDirInUse, OSError) as exc:
        sys.exit(f"error: {exc}")
    application.run(host=settings.host, port=settings.port, threaded=True)  # logs its address


if __name__ == "__main__":
    main()
