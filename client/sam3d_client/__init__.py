"""A small client of the server's HTTP API: submit, follow, download.

Used by the `sam3d-client` command (cli.py) and importable on its own:

    client = Client("http://localhost:8000", api_key="...")
    job = client.submit("generate", {"image": encode_file("photo.jpg")})
    final = client.follow(job["job_id"], print)
    client.download(job["job_id"], "model.glb")
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import requests

__all__ = ["Client", "ServerError", "encode_file"]
FINISHED = ("completed", "failed", "cancelled")


class ServerError(Exception):
    """The server said no (or could not be reached); `str()` is its message."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def encode_file(path: str | os.PathLike) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


class Client:
    def __init__(self, url: str, api_key: str | None = None, *, retries: int = 5,
                 timeout: float = 60, poll_seconds: float = 1.0):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.retries, self.timeout, self.poll_seconds = retries, timeout, poll_seconds

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """One call; a 503 with a Retry-After (queue full, model loading) is retried after
        it. A 503 without one (the model is not served there) is an answer, not a wait."""
        timeout = kwargs.pop("timeout", self.timeout)
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(method, self.url + path, timeout=timeout,
                                                **kwargs)
            except requests.RequestException as exc:
                raise ServerError(f"cannot reach {self.url}: {exc}") from None
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
            return self.session.get(self.url + "/health", timeout=self.timeout).json()
        except (requests.RequestException, ValueError) as exc:
            raise ServerError(f"cannot reach {self.url}: {exc}") from None

    def status(self, job_id: str) -> dict:
        return self.request("GET", f"/job/{job_id}").json()

    def submit(self, endpoint: str, body: dict) -> dict:
        """POST /generate or /depth: the job's id, position and status URL."""
        return self.request("POST", f"/{endpoint}", json=body).json()

    def follow(self, job_id: str, on_update: Callable[[dict], Any]) -> dict:
        """Call `on_update` with each new status until the job finishes; the last status.
        Uses the server's event stream where it has one, else polls."""
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
                    yield json.loads(line[5:])

    def download(self, job_id: str, path: str | os.PathLike) -> Path:
        """The job's result file, written whole or not at all."""
        path = Path(path)
        partial = path.with_name(path.name + ".part")
        with self.request("GET", f"/job/{job_id}/download", stream=True) as response:
            with open(partial, "wb") as file:
                for chunk in response.iter_content(1 << 20):
                    file.write(chunk)
        os.replace(partial, path)
        return path


def retry_after(response: requests.Response) -> float:
    try:
        return min(max(float(response.headers["Retry-After"]), 0.5), 300)
    except ValueError:  # an HTTP date: not what this server sends
        return 10.0


def error_message(response: requests.Response) -> str:
    try:
        return f"{response.status_code}: {response.json()['error']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:300] or response.reason}"
