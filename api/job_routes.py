"""A job once accepted: `GET /job/<id>` (its status), `DELETE` (cancel), `/events` (a
stream of its status) and `/download` (its file); a finished job's file as the answer of a
sync endpoint, and the wait for it."""

from __future__ import annotations

import base64
from pathlib import Path

from flask import Flask, Response, request, send_file
from pydantic import BaseModel

from front.events import JobEvents
from pipelines.errors import STATUS_OF, FailureKind
from queue_manager import JobExpired, JobNotFound, JobState, JobView, NotCancellable

from . import context, views
from .errors import ApiError


def find(job_id: str) -> JobView:
    try:
        return context.queue().get(job_id)
    except JobNotFound:
        raise ApiError(404, "job not found") from None
    except JobExpired:
        raise ApiError(410, "job results have expired", job_id=job_id) from None


def json_answer(model: BaseModel, status: int = 200, **dump) -> Response:
    """A model as a JSON answer, serialised by pydantic in one step (the dict ->
    json.dumps round cost a status poll more than its own work)."""
    return Response(model.model_dump_json(**dump), status, mimetype="application/json")


def result_file(view: JobView) -> Response:
    if view.state is JobState.FAILED:
        status = STATUS_OF[view.error_kind or FailureKind.INTERNAL]
        raise ApiError(status, view.error, job_id=view.id)
    if view.state is not JobState.COMPLETED:
        raise ApiError(409, f"job is {view.state.value}, not completed", job_id=view.id,
                       status_url=f"/job/{view.id}")
    result = view.result
    try:
        return send_file(Path(result.path).resolve(), mimetype=result.media_type,
                         as_attachment=True, download_name=result.download_name, max_age=0)
    except FileNotFoundError:  # expired between the lookup and the read
        raise ApiError(410, "job results have expired", job_id=view.id) from None


def inline_file(view: JobView) -> str:
    """A finished job's file in base64, for an answer that carries it; the job's error as
    JSON if it failed."""
    if view.state is not JobState.COMPLETED:
        result_file(view)  # raises the job's error
    try:
        data = Path(view.result.path).read_bytes()
    except FileNotFoundError:  # expired between the wait and the read
        raise ApiError(410, "job results have expired", job_id=view.id) from None
    return base64.b64encode(data).decode()


def wait(view: JobView) -> JobView:
    try:
        view = context.queue().wait(view.id, context.settings().sync_timeout_seconds)
    except (JobExpired, JobNotFound):  # finished and expired while this request waited
        raise ApiError(410, "job results have expired", job_id=view.id) from None
    if not view.state.finished:
        raise ApiError(504, f"job did not finish within "
                            f"{context.settings().sync_timeout_seconds:g} s; "
                            "keep polling status_url", job_id=view.id,
                       status_url=f"/job/{view.id}")
    return view


def add_routes(app: Flask) -> None:
    @app.get("/job/<job_id>")
    def job_status(job_id):
        return json_answer(views.job_status(find(job_id)), exclude_none=True)

    @app.delete("/job/<job_id>")
    def job_cancel(job_id):
        find(job_id)
        try:
            view = context.queue().cancel(job_id, force=request.args.get("force") == "true")
        except NotCancellable as exc:
            raise ApiError(409, str(exc), job_id=job_id) from None
        except (JobExpired, JobNotFound):  # expired between the lookup and the cancel
            raise ApiError(410, "job results have expired", job_id=job_id) from None
        return json_answer(views.job_status(view), 200 if view.state.finished else 202,
                           exclude_none=True)

    @app.get("/job/<job_id>/events")
    def job_events(job_id):
        find(job_id)  # 404 or 410 before the stream starts
        # direct_passthrough: the front (front/asgi.py) sees JobEvents and streams it
        # without a thread; Flask's development server iterates it in its own.
        return Response(JobEvents(context.queue(), job_id), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                        direct_passthrough=True)

    @app.get("/job/<job_id>/download")
    def job_download(job_id):
        return result_file(find(job_id))
