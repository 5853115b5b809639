#!/usr/bin/env python3
"""Load on loopback: 20 clients submit 200 depth jobs against MAX_QUEUE_SIZE=10 while 20
more poll. Every submission must be accepted (and later complete) or refused with 503.

    python bench/load.py [URL]     # without URL, starts a server on the tiny checkpoint
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tests", ROOT / "scripts"):
    sys.path.insert(0, str(folder))

from conftest import image_b64, running_server  # noqa: E402
from make_tiny_checkpoints import make_lotus  # noqa: E402


def run_load(url: str, jobs: int = 200, submitters: int = 20, pollers: int = 20,
             timeout: float = 300) -> dict:
    body = {"image": image_b64(width=64, height=48), "processing_res": 64}
    accepted: list[str] = []
    codes: Counter = Counter()
    lock = threading.Lock()
    submitting = threading.Event()
    submitting.set()
    poll_count, poll_errors = Counter(), []

    def submit(_):
        session = requests.Session()
        response = session.post(f"{url}/depth", json=body, timeout=60)
        with lock:
            codes[response.status_code] += 1
            if response.status_code == 202:
                accepted.append(response.json()["job_id"])
            elif response.status_code == 503 and not response.headers.get("Retry-After"):
                poll_errors.append("503 without Retry-After")

    def poll(index):
        session = requests.Session()
        while submitting.is_set():
            with lock:
                job = accepted[index % len(accepted)] if accepted else None
            path = f"/job/{job}" if job else "/queue"
            response = session.get(url + path, timeout=30)
            with lock:
                poll_count[response.status_code] += 1
                if response.status_code != 200:
                    poll_errors.append(f"{path}: {response.status_code}")

    started = time.monotonic()
    with ThreadPoolExecutor(pollers) as poll_pool:
        poll_futures = [poll_pool.submit(poll, index) for index in range(pollers)]
        with ThreadPoolExecutor(submitters) as submit_pool:
            list(submit_pool.map(submit, range(jobs)))
        submit_seconds = time.monotonic() - started
        finished: Counter = Counter()
        deadline = time.monotonic() + timeout
        for job_id in accepted:
            while time.monotonic() < deadline:
                state = requests.get(f"{url}/job/{job_id}", timeout=30).json()["status"]
                if state not in ("queued", "processing"):
                    finished[state] += 1
                    break
                time.sleep(0.05)
        submitting.clear()
        for future in poll_futures:
            future.result()
    return {"sent": jobs, "accepted": len(accepted), "refused": codes[503],
            "other_codes": {code: n for code, n in codes.items() if code not in (202, 503)},
            "finished": dict(finished), "polls": sum(poll_count.values()),
            "poll_errors": poll_errors, "submit_seconds": round(submit_seconds, 2),
            "total_seconds": round(time.monotonic() - started, 2)}


def main() -> None:
    if len(sys.argv) > 1:
        print(run_load(sys.argv[1].rstrip("/")))
        return
    with tempfile.TemporaryDirectory() as folder:
        make_lotus(Path(folder) / "ck")
        with running_server(Path(folder) / "w", Path(folder) / "ck", MAX_QUEUE_SIZE="10",
                            PIPELINES="lotus") as server:
            print(run_load(server["url"]))


if __name__ == "__main__":
    main()
