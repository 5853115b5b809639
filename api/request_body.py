"""A request's body as its endpoint's model: a JSON body, or a multipart/form-data upload
(read by front/forms.py) as the JSON body it stands for. 400 for what does not validate,
413 past MAX_CONTENT_LENGTH, counted here for a chunked body."""

from __future__ import annotations

import hashlib
import json
from typing import Literal, get_args, get_origin

from flask import request
from pydantic import BaseModel, ValidationError

from front.forms import FormError, read_parts
from pipelines.base import validation_message

from . import context
from .errors import ApiError


def parse_json(model: type[BaseModel], raw: bytes) -> BaseModel:
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


def read_body() -> bytes:
    """The request body. A chunked one (no Content-Length) is read here up to one byte past
    MAX_CONTENT_LENGTH: werkzeug would cut it at the limit without a word."""
    if request.content_length is not None:
        return request.get_data(cache=False)  # over the limit: werkzeug's own 413
    limit = context.settings().max_content_length
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


def form(model: type[BaseModel]) -> tuple[BaseModel, bytes]:
    """A multipart/form-data upload (`curl -F image=@photo.jpg -F output_format=ply`) as the
    JSON body it stands for: each file as its bytes (within MAX_CONTENT_LENGTH, as a JSON
    body's), a repeated field as a list in the order sent, text typed by the model. Also what
    identifies its content for an Idempotency-Key: the boundary differs on every retry."""
    lists = {name for name, field in model.model_fields.items() if _is_list(field.annotation)}
    body: dict = {}
    for name, values in form_parts().items():
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


def form_parts() -> dict[str, list[str | bytes]]:
    """The form's values by field name, each field's in the order sent, text and file parts
    alike (`masks`: objects[i] is the i-th mask sent). Read by front/forms.py rather than
    request.form/files: a non-UTF-8 file name no longer drops the form, and a 413 says
    whether the form had too many parts or too many bytes (issue 31 items 9-11)."""
    # a chunked body (no Content-Length) is read as read_body() reads it: read_parts counts it
    stream = (request.stream if request.content_length is not None
              else request.environ["wsgi.input"])
    try:
        parts = read_parts(stream.read, request.mimetype_params.get("boundary"),
                           context.settings().max_content_length)
    except FormError as exc:
        raise ApiError(exc.status, exc.message) from None
    fields: dict[str, list[str | bytes]] = {}
    for part in parts:
        fields.setdefault(part.name, []).append(part.value)
    return fields
