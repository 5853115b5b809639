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
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import requests

from .answers import (ServerError, error_message, json_object, retry_after, safe_name,
                      unreachable)
from .files import (DEPTH_SUFFIXES, GENERATE_SUFFIXES, NORMAL_SUFFIXES, VIDEO_SUFFIXES,
                    ImageSource, InputFileError, OutputPathError, check_output_path,
                    encode_file, image_fields, read_file)

__version__ = "0.1.0"
__all__ = ["Client", "Job", "ServerError", "OutputPathError", "check_output_path",
           "encode_file", "GENERATE_SUFFIXES", "DEPTH_SUFFIXES", "NORMAL_SUFFIXES",
           "VIDEO_SUFFIXES", "InputFileError", "read_file"]
FINISHED = ("completed", "failed", "cancelled")
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
