"""The API key: every path but the open ones needs it, checked in constant time."""

from __future__ import annotations

import hmac

from flask import request

from . import context
from .errors import ApiError

OPEN_PATHS = {"/health", "/livez", "/readyz", "/"}
OPEN_PREFIXES = ("/static/", "/vendor/")  # the web page: public, the API behind it is not


def check_api_key() -> None:
    """The app's `before_request`: 401 for a request without the key, where one is set."""
    expected = context.settings().required_api_key
    if expected is None or request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
        return
    if not holds_key():
        raise ApiError(401, "Unauthorized: send the API key as 'Authorization: Bearer <key>' "
                            "or 'X-API-Key: <key>'")


def holds_key() -> bool:
    """Whether this request carries the server's API key (constant-time); never on a server
    without one: there nobody is known, so nobody sees what only the key's holder may."""
    expected = context.settings().required_api_key
    if expected is None:
        return False
    supplied = (bearer_token(request.headers.get("Authorization", ""))
                or request.headers.get("X-API-Key") or request.headers.get("lotus-api-key") or "")
    return hmac.compare_digest(supplied.encode(), expected.encode())


def bearer_token(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
