"""A request -> a queued job: the body read as its endpoint's model, the model's family
served and ready here, the webhook allowed, the Idempotency-Key honoured; what the queue or
the pipeline refuses as the API's error."""

from __future__ import annotations

from flask import current_app, request

from jobs.idempotency import MAX_KEY_LENGTH, IdempotencyKeys, KeyReused
from pipelines import PipelineState
from pipelines.errors import STATUS_OF, PipelineError
from pipelines.fetch import check_url
from pipelines.spec import Endpoint
from pipelines.table import endpoints, pipeline_for, serving
from queue_manager import JobView, QueueFull, StorageUnavailable

from . import context, request_body
from .job_routes import find
from .errors import ApiError
from .health import NEEDS, pipeline_reasons

# POST /<path> -> its row of the model table (pipelines/table.py)
ENDPOINTS: dict[str, Endpoint] = endpoints()


def submit(endpoint: str, sync: bool = False) -> tuple[JobView, bool]:
    """Validate and queue a job; the job, and whether it is one an Idempotency-Key found."""
    model = ENDPOINTS[endpoint].request
    if request.mimetype == "multipart/form-data":
        payload, raw = request_body.form(model)
    else:
        raw = request_body.read_body()
        payload = request_body.parse_json(model, raw)
    pipeline = pipeline_for(endpoint, payload)
    if pipeline not in context.registry().status() and len(serving(endpoint)) > 1:
        # a model of another family than the ones this server runs: the request's fault
        raise ApiError(400, f"model {getattr(payload, 'model', None)} is not served here: "
                            f"{pipeline!r} is not loaded on this server (loaded: "
                            f"{', '.join(context.registry()) or 'none'}; "
                            "/health lists the models)")
    if sync and getattr(payload, "is_video", False):
        raise ApiError(400, f"video: POST /{endpoint} takes videos (a job to poll, then "
                            f"/job/<id>/download); /{endpoint}/sync answers images only")
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    require_ready(pipeline)

    def enqueue() -> JobView:
        context.registry()[pipeline].check(payload)
        if getattr(payload, "webhook", None) is not None:
            check_webhook(payload.webhook)
        # The image is fetched and decoded holding a queue slot: a full queue says 503 first.
        limits = context.settings().image_limits
        return context.queue().submit(pipeline, lambda: payload.load(limits))

    try:
        if key is None:
            return enqueue(), False
        keys: IdempotencyKeys = current_app.extensions["idempotency"]
        return keys.submit(key, keys.fingerprint(endpoint, raw), enqueue, find)
    except PipelineError as exc:
        raise ApiError(STATUS_OF[exc.kind], str(exc)) from None
    except QueueFull as exc:
        raise ApiError(503, f"{exc}; retry later", retry_after=True) from None
    except StorageUnavailable as exc:
        raise ApiError(507, f"{exc}; the server takes jobs again once it has room",
                       retry_after=True) from None
    except KeyReused as exc:
        raise ApiError(422, str(exc)) from None


def check_webhook(url: str) -> None:
    if context.settings().webhook_secret is None:
        raise ApiError(400, "webhook: this server has no WEBHOOK_SECRET to sign webhooks with, "
                            "so it sends none; poll the job or follow /job/<id>/events")
    check_url(url, "webhook", context.settings().allow_private_urls)


def require_ready(pipeline: str) -> None:
    if pipeline in NEEDS:
        try:
            require_ready(NEEDS[pipeline])
        except ApiError as exc:
            raise ApiError(exc.status, f"{pipeline!r} serves {NEEDS[pipeline]!r} jobs only: "
                           f"{exc.message}", retry_after=exc.retry_after) from None
    status = context.registry().status().get(pipeline)
    if status is PipelineState.READY:
        return
    if status is PipelineState.LOADING:
        raise ApiError(503, f"model {pipeline!r} is still loading; retry shortly",
                       retry_after=True)
    if status is PipelineState.FAILED:
        raise ApiError(503, f"model {pipeline!r} failed to load: "
                            f"{context.registry().error(pipeline)}")
    # Not served here: no retry brings it, so not a 503 ("retry later") but 501, the
    # server does not do this (RFC 9110 15.6.2), with why and what to do.
    reason = pipeline_reasons(context.settings(), context.registry()).get(
        pipeline, "not served here")
    raise ApiError(501, f"model {pipeline!r} is not loaded on this server: {reason} "
                        f"(loaded: {', '.join(context.registry()) or 'none'})")
