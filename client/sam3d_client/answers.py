"""A server's answers, trusted for nothing: its errors, its JSON, its file names and why
it could not be reached, each in one plain line (the server may not be this one, or may lie).
"""

from __future__ import annotations

import mimetypes
import re
import socket
import ssl
from email.message import Message
from pathlib import Path

import requests


class ServerError(Exception):
    """The server said no (`status` is its HTTP status) or could not be reached (`status` is
    None); `str()` is its message."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


SAFE_CHARACTERS = re.compile(r"[^0-9A-Za-z._-]+")
MAX_NAME = 100


def served_name(response: requests.Response) -> str:
    """The file name the server gives its download (Content-Disposition), as it gives it."""
    header = Message()
    header["content-disposition"] = response.headers.get("Content-Disposition", "")
    try:
        return header.get_filename() or ""
    except (ValueError, LookupError):  # a malformed RFC 2231 name, an unknown charset
        return ""


def safe_name(response: requests.Response, job_id: str) -> str:
    """The served name as a plain file name for the current folder, whatever the server
    says: its last path part only (/ and \\ both), no leading dot (`.bashrc` would be a
    hidden file the user never asked for), letters, digits, `.`, `_` and `-` only, at most
    MAX_NAME characters; else `sam3d-<job>` with the suffix its Content-Type gives."""
    name = re.split(r"[/\\]", served_name(response))[-1]
    name = SAFE_CHARACTERS.sub("_", name).lstrip("._-")[:MAX_NAME].rstrip(".")
    stem, _, suffix = name.rpartition(".")
    if not name or not stem or not suffix:  # empty, or no name before its suffix
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        guessed = mimetypes.guess_extension(media_type) if media_type else None
        suffix = Path(name).suffix if "." in name else (guessed or ".bin")
        name = f"sam3d-{SAFE_CHARACTERS.sub('_', job_id)[:64]}{suffix}"
    return name


# Why a connection failed, from the innermost cause: (exception type, sentence)
UNREACHABLE = (
    (ConnectionRefusedError, "connection refused — is the server running?"),
    (socket.gaierror, "the host name was not found — is the URL right?"),
    (ssl.SSLError, "the TLS handshake failed — http:// or https://?"),
    (ConnectionResetError, "the connection was reset — is it this server, and up?"),
    (requests.exceptions.ChunkedEncodingError, "the server closed the connection mid-answer"),
    (requests.exceptions.InvalidURL, "the URL is not valid"),
    (requests.exceptions.MissingSchema, "the URL needs http:// or https://"),
    (requests.exceptions.InvalidSchema, "the URL needs http:// or https://"),
)


def unreachable(url: str, exc: requests.RequestException) -> str:
    """One plain sentence for a failed connection, never urllib3's text."""
    if isinstance(exc, requests.Timeout):
        return f"cannot reach {url}: no answer in time — is the server overloaded or down?"
    causes, seen = [exc], []
    while causes:  # requests wraps urllib3 wraps socket errors: look at each layer
        cause = causes.pop()
        if cause is None or any(cause is old for old in seen):
            continue
        seen.append(cause)
        causes += [cause.__cause__, cause.__context__, getattr(cause, "reason", None),
                   *(arg for arg in cause.args if isinstance(arg, BaseException))]
    for kind, sentence in UNREACHABLE:
        if any(isinstance(cause, kind) for cause in seen):
            return f"cannot reach {url}: {sentence}"
    return f"cannot reach {url}: the connection failed ({type(exc).__name__})"


def retry_after(response: requests.Response) -> float:
    try:
        return min(max(float(response.headers["Retry-After"]), 0.5), 300)
    except ValueError:  # an HTTP date: not what this server sends
        return 10.0


def error_message(response: requests.Response) -> str:
    """`404: job not found`: the server's own error; what a server that is not this one
    answers, in one line naming its URL."""
    try:
        error = response.json()["error"]
        if isinstance(error, str):
            return f"{response.status_code}: {error}"
    except (ValueError, KeyError, TypeError):
        pass
    return f"{response.status_code}: {not_this_server(response)}"


def is_html(response: requests.Response) -> bool:
    kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return kind in ("text/html", "application/xhtml+xml") or \
        response.content[:64].lstrip().lower().startswith((b"<!doctype", b"<html"))


def not_this_server(response: requests.Response) -> str:
    """One line for an answer that is not this API's JSON."""
    if is_html(response):
        return (f"got an HTML {response.status_code} from {response.url}: is this the "
                "server? (check --url or SAM3D_URL)")
    text = " ".join(response.text[:120].split()) or response.reason or "nothing"
    return (f"{response.url} answered with something other than this server's JSON "
            f"({text!r}): is this the server?")


def json_object(response: requests.Response, *required: str) -> dict:
    """The answer's JSON object, with `required` keys; ServerError in one line naming the
    URL for anything else (HTML, a list, `{}`, a cut-off body)."""
    try:
        answer = response.json()
    except (ValueError, requests.RequestException):
        answer = None
    if answer is None:
        raise ServerError(not_this_server(response), response.status_code)
    missing = [key for key in required if not isinstance(answer, dict) or key not in answer]
    if not isinstance(answer, dict) or missing:
        what = (f"a JSON {type(answer).__name__}" if not isinstance(answer, dict)
                else f"JSON without {', '.join(repr(key) for key in missing)}")
        raise ServerError(f"{response.url} answered with {what}, not what this server sends: "
                          "is this the server?", response.status_code)
    return answer
