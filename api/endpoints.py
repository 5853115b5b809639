"""The model table's endpoints (pipelines/table.py), one loop: `POST /<path>` queues a job
(202, or 200 with the job an Idempotency-Key found) and `/<path>/sync` answers with the
result, as a file or as JSON carrying it."""

from __future__ import annotations

from flask import Flask, Response, jsonify

from pipelines.spec import Endpoint
from queue_manager import JobView
from schemas import JobAccepted, answer_schema

from .job_routes import inline_file, result_file, wait
from .submission import ENDPOINTS, submit


def accepted(submitted: tuple[JobView, bool]) -> Response:
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


def map_result(view: JobView, endpoint: Endpoint) -> Response:
    """A finished job as its endpoint's JSON answer: the file inline (base64, in the
    endpoint's `inline_field`) and its info."""
    data = inline_file(view)
    schema = answer_schema(endpoint.answer)
    return jsonify(schema(job_id=view.id, **{endpoint.inline_field: data}, **view.result.info,
                          file_path=view.result.path.name,
                          download_url=f"/job/{view.id}/download").model_dump())


def add_endpoint(app: Flask, endpoint: Endpoint) -> None:
    """`POST /<path>` (a job to poll) and `/<path>/sync` (the answer), or, for an endpoint
    that is `sync` "only", `POST /<path>` answering at once."""
    path = endpoint.path
    if endpoint.sync == "only":
        app.add_url_rule(f"/{path}", path, methods=["POST"], view_func=lambda: map_result(
            wait(submit(path, sync=True)[0]), endpoint))
        return
    app.add_url_rule(f"/{path}", path, methods=["POST"],
                     view_func=lambda: accepted(submit(path)))
    if endpoint.sync == "file":
        sync = lambda: result_file(wait(submit(path)[0]))  # noqa: E731
    else:
        sync = lambda: map_result(wait(submit(path, sync=True)[0]), endpoint)  # noqa: E731
    app.add_url_rule(f"/{path}/sync", f"{path}_sync", methods=["POST"], view_func=sync)


def add_routes(app: Flask) -> None:
    for endpoint in ENDPOINTS.values():  # the model table's endpoints, one loop
        add_endpoint(app, endpoint)
