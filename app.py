"""The HTTP API of the SAM 3D Objects deployment guide, plus Lotus depth and normals.

HTTP only: parse and validate a request, hand a job to the queue, shape the answer.
Route -> `queue_manager.JobQueue.submit` -> `pipelines.<model>.run` -> result file.
This module builds the app; each concern has its module in `api/` (api/__init__.py lists
them): errors, auth, request bodies, submission, the model table's endpoints, job routes,
the status JSON (views), health, and the page.

`gunicorn app:app` and `python app.py` serve the same app. The module-level `app` is
built on first access (PEP 562), so importing this module (tests, gunicorn's master)
never loads a model or touches CUDA.
"""

from __future__ import annotations

import logging
import sys

try:
    from flask import Flask, Response, current_app, jsonify, request
    from PIL import Image  # noqa: F401  (the first package a bare `python app.py` misses)
except ModuleNotFoundError as exc:
    if __name__ != "__main__":
        raise
    sys.exit(f"{exc}: this Python lacks the server's packages; run `make serve`, or "
             f"activate .venv (`. .venv/bin/activate`) and run `python app.py` again")

from api import context, endpoints, errors, health, job_routes, page
from api.auth import OPEN_PATHS, OPEN_PREFIXES, check_api_key  # noqa: F401  (re-exported)
from api.errors import ApiError  # noqa: F401
from api.health import pipeline_reasons  # noqa: F401
from api.submission import ENDPOINTS  # noqa: F401
from jobs.idempotency import IdempotencyKeys
from jobs.storage import OutputDirInUse
from metrics import Metrics
from pipelines import PipelineRegistry
from queue_manager import JobQueue, QueueConfig
from schemas import QueueStats, openapi_document
from settings import Settings, SettingsError, load_settings
from webhooks import WebhookSender
from workers.pool import serving_pipelines

log = logging.getLogger("server")


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
        observers.append(WebhookSender(settings.webhook_secret.get_secret_value(),
                                       allow_private=settings.allow_private_urls).observe)
    queue = JobQueue(registry, settings.output_dir, QueueConfig.from_settings(settings),
                     workers=workers, observers=observers)
    metrics.watch(queue.stats, lambda: dict(registry.load_seconds))
    queue.start()
    registry.load_in_background()
    if not registry.status():
        log.error("no pipeline to serve: no checkpoint found in %s and PIPELINES is empty",
                  settings.checkpoints_dir)
    if settings.required_api_key is None:
        log.warning("API_KEY is not set: every endpoint is open to anyone who can reach it")

    app = Flask(__name__, static_folder=page.WEB / "static", static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    # a base64 image sent as a form's text field is held to the body's limit, not 500 kB
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_content_length
    app.json.sort_keys = False
    app.extensions.update(settings=settings, registry=registry, queue=queue, metrics=metrics,
                          devices=sorted({w.device for ws in workers.values() for w in ws},
                                         key=lambda d: (d.kind, d.index)),
                          idempotency=IdempotencyKeys(settings.result_ttl_seconds))
    app.before_request(check_api_key)
    app.after_request(_count_request)
    errors.register(app)
    _add_routes(app)
    return app


def _count_request(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    current_app.extensions["metrics"].request(request.method, route, response.status_code)
    return response


def _add_routes(app: Flask) -> None:
    health.add_routes(app)  # /health, /livez, /readyz, /metrics
    page.add_routes(app)  # /, /vendor/<name>

    @app.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document(secured=context.settings().required_api_key is not None))

    @app.get("/queue")
    def queue_stats():
        return jsonify(QueueStats(**context.queue().stats()).model_dump())

    endpoints.add_routes(app)  # the model table's endpoints, one loop
    job_routes.add_routes(app)  # /job/<id>, its events and download


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
