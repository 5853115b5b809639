"""Errors as the API answers them: one body, `{"error": ..., "job_id"?, "status_url"?}`
(`schemas.ErrorResponse` documents it), and one `Retry-After`, for the Flask app's answers
and for the ones the ASGI front gives itself (front/asgi.py `error_answer`).

This module imports no model, queue or settings: the front's module imports it in
gunicorn's master too."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from pipelines.base import public_message

log = logging.getLogger("server")

RETRY_AFTER_SECONDS = "10"


def retry_after() -> dict[str, str]:
    """The header a refusal that will pass (queue full, model loading, a busy front) sends."""
    return {"Retry-After": RETRY_AFTER_SECONDS}


def error_body(message: str, job_id: str | None = None,
               status_url: str | None = None) -> dict:
    """The error body, as `schemas.ErrorResponse(...).model_dump(exclude_none=True)` gives
    it: the message fit for a client (no server paths, bounded), fields in that order."""
    body = {"error": public_message(message), "job_id": job_id, "status_url": status_url}
    return {name: value for name, value in body.items() if value is not None}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, retry_after: bool = False, **extra):
        """`retry_after`: a 503 that will pass (queue full, model loading) says when to
        retry; one that will not (the model is not served here) says nothing of the kind."""
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra
        self.retry_after = retry_after


# -- the Flask app's handlers -----------------------------------------------------------

def register(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)


def error_response(status: int, message: str, headers: dict | None = None,
                   **extra) -> Response:
    response = jsonify(error_body(message, **extra))
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, retry_after() if exc.retry_after else None,
                          **exc.extra)


def _http_error(exc: HTTPException) -> Response:
    # werkzeug's 413s are bare (wrappers, sansio/multipart.py:194, formparser.py:398); the
    # one left to it here is a Content-Length over MAX_CONTENT_LENGTH: forms count their own
    # parts and bytes (front/forms.py) and say which (issue 31 item 10).
    limit = current_app.config["MAX_CONTENT_LENGTH"]  # settings.max_content_length
    message = {413: f"request body is larger than {limit} bytes"
               if (request.content_length or 0) > limit else "request is too large"}
    return error_response(exc.code or 500, message.get(exc.code, exc.description or exc.name))


def _unexpected_error(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal server error")
