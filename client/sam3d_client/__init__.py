"""A client of the server's HTTP API that never loses a job: a submission answers with the
job's id at once, and `Client.job(id)` comes back to it later, from any process.

    client = Client("http://localhost:8000", api_key="...")
    job = client.generate("photo.jpg", output_format="glb", with_texture=False)
    print(job.id)                # keep it: `client.job(job.id)` finds the job again
    job.wait()                   # the final status (completed, failed or cancelled)
    job.download("model.glb")    # the file; a failed job raises its error here

Used by the `sam3d-client` command (cli.py); documented in client/README.md.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
import socket
import ssl
import tempfile
import time
from email.message import Message
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import requests

__version__ = "0.1.0"
__all__ = ["Client", "Job", "ServerError", "OutputPathError", "check_output_path",
           "encode_file", "GENERATE_SUFFIXES", "DEPTH_SUFFIXES", "NORMAL_SUFFIXES",
           "VIDEO_SUFFIXES"]
FINISHED = ("completed", "failed", "cancelled")
# The suffix of the file the server sends for each output (its download name):
# /generate's output_format, /depth's and /normal's output.
GENERATE_SUFFIXES = {"glb": ".glb", "ply": ".ply", "obj": ".zip", "stl": ".stl",
                     "usdz": ".usdz"}
DEPTH_SUFFIXES = {"png": ".png", "png16": ".png", "color": ".png", "npy": ".npy",
                  "glb": ".glb", "ply": ".ply"}
NORMAL_SUFFIXES = {"png": ".png", "png16": ".png", "npy": ".npy"}
# The videos /depth and /normal take; their result is a zip (<task>.mp4 and <task>.npz).
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm")

ImageSource = Union[str, os.PathLike, bytes]


class ServerError(Exception):
    """The server said no (`status` is its HTTP status) or could not be reached (`status` is
    None); `str()` is its message."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class OutputPathError(ValueError):
    """The file to write cannot be written there, or would get the wrong suffix."""


class InputFileError(OSError):
    """A file to send cannot be read; `str()` says which and why, in a few words."""


def encode_file(source: ImageSource) -> str:
    """Base64 of a file (a path) or of bytes."""
    return base64.b64encode(source if isinstance(source, bytes) else read_file(source)).decode()


def read_file(path: str | os.PathLike) -> bytes:
    """A file's bytes; InputFileError saying `photo.jpg: no such file`, not `[Errno 2] ...`."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{path} is a folder, not a file") from None
    except PermissionError:
        raise InputFileError(f"{path}: not allowed to read it (permission denied)") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def check_output_path(path: str | os.PathLike, suffix: str | None = None,
                      what: str = "the result") -> Path:
    """Refuse, before any work, a file that could not be written (no such folder, not
    writable, a folder) or, with `suffix`, that would carry another format's suffix."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder: name the file, e.g. "
                              f"{path / ('result' + (suffix or ''))}")
    if not folder.is_dir():
        raise OutputPathError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputPathError(f"{path}: folder {folder} is not writable")
    if suffix is not None and path.suffix.lower() != suffix:
        raise OutputPathError(f"{path}: {what} is a {suffix} file; name it "
                              f"{path.with_name(path.stem + suffix)}")
    return path


class Client:
    def __init__(self, url: str, api_key: str | None = None, *, retries: int = 5,
                 timeout: float = 60, poll_seconds: float = 1.0):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.retries, self.timeout, self.poll_seconds = retries, timeout, poll_seconds

    # -- jobs -----------------------------------------------------------------------

    def generate(self, image: ImageSource | None = None, *, image_url: str | None = None,
                 mask: ImageSource | None = None, masks: list[ImageSource] | None = None,
                 **options) -> "Job":
        """Submit an image-to-3D job (POST /generate): a photo (path or bytes) or an
        `image_url`; one `mask` or several `masks` (one object each); `options` are the
        server's fields (output_format, with_texture, seed, texture_size, ...)."""
        body = {**image_fields(image, image_url), **options}
        if mask is not None:
            body["mask"] = encode_file(mask)
        if masks:
            body["masks"] = [encode_file(each) for each in masks]
        return Job(self, self.submit("generate", body))

    def depth(self, image: ImageSource | None = None, *, image_url: str | None = None,
              video: ImageSource | None = None, video_url: str | None = None,
              **options) -> "Job":
        """Submit a depth job (POST /depth) for a photo, or a short `video` (path or bytes:
        mp4, mov, webm) or `video_url`, whose result is a zip of depth.mp4 and depth.npz;
        `options` are the server's fields (output, model, processing_res, ...)."""
        return Job(self, self.submit("depth", {
            **image_fields(image, image_url, video, video_url), **options}))

    def normal(self, image: ImageSource | None = None, *, image_url: str | None = None,
               video: ImageSource | None = None, video_url: str | None = None,
               **options) -> "Job":
        """Submit a surface-normal job (POST /normal) for a photo or a video, as `depth`;
        `options` are the server's fields (output, model, processing_res, ...). The
        completed status says the convention (`frame`, `range`)."""
        return Job(self, self.submit("normal", {
            **image_fields(image, image_url, video, video_url), **options}))

    def segment(self, image: ImageSource | None = None, *,
                image_url: str | None = None) -> dict:
        """The mask a 3D job would use for the photo (POST /segment, answered at once):
        `mask` (PNG bytes, 255 = the object), `source` (alpha, rembg or center), `width`,
        `height`. Look at it first, then send it: `generate(photo, mask=answer["mask"])`."""
        response = self.request("POST", "/segment", json=image_fields(image, image_url))
        answer = json_object(response, "mask")
        try:
            return {**answer, "mask": base64.b64decode(answer["mask"], validate=True)}
        except (ValueError, TypeError):
            raise ServerError(f"{response.url} answered with a mask that is not base64: is "
                              "this the server?", response.status_code) from None

    def job(self, job_id: str) -> "Job":
        """A handle on a job submitted earlier (by this process or another)."""
        return Job(self, {"job_id": job_id})

    # -- the API, by job id ------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """One call; a 503 with a Retry-After (queue full, model loading) is retried after
        it. A 503 without one (the model is not served there) is an answer, not a wait."""
        timeout = kwargs.pop("timeout", self.timeout)
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(method, self.url + path, timeout=timeout,
                                                **kwargs)
            except requests.RequestException as exc:
                raise ServerError(unreachable(self.url, exc)) from None
            if (response.status_code == 503 and "Retry-After" in response.headers
                    and attempt < self.retries):
                time.sleep(retry_after(response))
                continue
            if response.status_code >= 400:
                raise ServerError(error_message(response), response.status_code)
            return response
        raise AssertionError("unreachable")

    def health(self) -> dict:
        """GET /health, unhealthy (503) included: its body says why."""
        try:
            response = self.session.get(self.url + "/health", timeout=self.timeout)
        except requests.RequestException as exc:
            raise ServerError(unreachable(self.url, exc)) from None
        return json_object(response)

    def status(self, job_id: str) -> dict:
        return json_object(self.request("GET", f"/job/{job_id}"), "status")

    def submit(self, endpoint: str, body: dict) -> dict:
        """POST /generate, /depth or /normal: the job's id, position and status URL."""
        answer = json_object(self.request("POST", f"/{endpoint}", json=body), "job_id")
        if not isinstance(answer["job_id"], str) or not JOB_ID.fullmatch(answer["job_id"]):
            raise ServerError(f"{self.url}/{endpoint} answered with a job id that is not one "
                              f"({str(answer['job_id'])[:40]!r}): is this the server?", 200)
        return answer

    def cancel(self, job_id: str) -> dict:
        """DELETE /job/<id>: a waiting job is cancelled at once; a running one stops at
        its next stage (its status says "Cancelling")."""
        return json_object(self.request("DELETE", f"/job/{job_id}"))

    def follow(self, job_id: str, on_update: Callable[[dict], Any] | None = None) -> dict:
        """Call `on_update` with each new status until the job finishes; the last status.
        Uses the server's event stream where it has one, else polls."""
        on_update = on_update or (lambda status: None)
        try:
            for status in self._events(job_id):
                on_update(status)
                if status.get("status") in FINISHED:
                    return self.status(job_id)
        except ServerError as exc:
            if exc.status != 404:  # 404: a server without the stream; poll instead
                raise
        except requests.RequestException:  # the stream broke off: poll from here
            pass
        while True:
            status = self.status(job_id)
            on_update(status)
            if status["status"] in FINISHED:
                return status
            time.sleep(self.poll_seconds)

    def _events(self, job_id: str) -> Iterator[dict]:
        """GET /job/<id>/events (text/event-stream): one JSON status per `data:` line."""
        # the server sends a keep-alive line every 15 s: a minute of silence is a dead stream
        response = self.request("GET", f"/job/{job_id}/events", stream=True,
                                timeout=(self.timeout, 60))
        with response:
            for line in response.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    try:
                        event = json.loads(line[5:])
                    except ValueError:
                        event = None
                    if not isinstance(event, dict) or not isinstance(event.get("status"), str):
                        raise ServerError(f"{response.url} sent an event that is not a job's "
                                          f"status ({line[5:45].strip()!r}): is this the "
                                          "server?", response.status_code)
                    yield event

    def download(self, job_id: str, path: str | os.PathLike | None = None) -> Path:
        """The job's result file, written whole or not at all: at `path` (whose suffix must
        be the file's), else in the current folder under the server's name made safe
        (`safe_name`), never replacing a file already there (OutputPathError: name one)."""
        with self.request("GET", f"/job/{job_id}/download", stream=True) as response:
            served = safe_name(response, job_id)
            if path is None:
                target = check_output_path(served)
                if target.exists() or target.is_symlink():
                    raise OutputPathError(f"{target} already exists here; nothing was "
                                          "replaced: choose where to write it with -o FILE")
            else:
                target = check_output_path(path, Path(served).suffix.lower() or None,
                                           f"the job's file ({served})")
            # a new file of its own beside the target (never an existing `<name>.part`)
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                                        dir=target.parent)
            partial = Path(name)
            try:
                with os.fdopen(fd, "wb") as file:
                    written = 0
                    for chunk in response.iter_content(1 << 20):
                        file.write(chunk)
                        written += len(chunk)
                expected = response.headers.get("Content-Length", "")
                if expected.isdigit() and written != int(expected) and \
                        "Content-Encoding" not in response.headers:
                    raise ServerError(f"the download from {response.url} stopped after "
                                      f"{written} of {expected} bytes; nothing was written: "
                                      "try again", response.status_code)
                if path is None:
                    os.link(partial, target)  # fails if a file appeared there meanwhile
                    partial.unlink()
                else:
                    os.replace(partial, target)
            except FileExistsError:
                partial.unlink(missing_ok=True)
                raise OutputPathError(f"{target} already exists here; nothing was replaced: "
                                      "choose where to write it with -o FILE") from None
            except requests.RequestException as exc:  # cut off mid-file
                partial.unlink(missing_ok=True)
                raise ServerError(f"the download from {response.url} broke off "
                                  f"({unreachable(self.url, exc).split(': ', 1)[1]}); nothing "
                                  "was written: try again", None) from None
            except BaseException:  # Ctrl-C: no half file left
                partial.unlink(missing_ok=True)
                raise
        return target


JOB_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what may go into a URL path and a file name


class Job:
    """A submitted job: `id`, and what can be done with it. `accepted` is the server's
    answer to the submission (position, status URL), or just the id for `Client.job`."""

    def __init__(self, client: Client, accepted: dict):
        self.client, self.accepted, self.id = client, accepted, accepted["job_id"]

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self) -> dict:
        """GET /job/<id>: status (queued, processing, completed, failed, cancelled),
        position, stage, progress, and the result's figures once completed."""
        return self.client.status(self.id)

    def wait(self, on_update: Callable[[dict], Any] | None = None) -> dict:
        """Block until the job finishes (calling `on_update` with each new status); the
        final status. A failed job's `error` says why; nothing is raised for it."""
        return self.client.follow(self.id, on_update)

    def download(self, path: str | os.PathLike | None = None) -> Path:
        """The result file (see `Client.download`); ServerError if the job did not
        complete (409 while it runs, the job's own error if it failed)."""
        return self.client.download(self.id, path)

    def cancel(self) -> dict:
        return self.client.cancel(self.id)


def image_fields(image: ImageSource | None, image_url: str | None,
                 video: ImageSource | None = None, video_url: str | None = None) -> dict:
    """The job's source, as the server's fields: files in base64, URLs as they are."""
    given = {name: value for name, value in (("image", image), ("image_url", image_url),
                                             ("video", video), ("video_url", video_url))
             if value is not None}
    if len(given) != 1:
        raise ValueError("give exactly one source: a file (a path or bytes) or a URL, not "
                         f"{' and '.join(given) or 'none'}")
    (name, value), = given.items()
    return {name: value if name.endswith("_url") else encode_file(value)}


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
