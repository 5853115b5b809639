#!/usr/bin/env python3
"""Server figures: status polls per second while one job runs, and idle submit-to-start latency.

    python bench/server.py [--seconds 5] [--clients 16]

Starts the real gunicorn server on a fresh tiny Lotus-D, on a loopback port (the tests' helper).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tests", ROOT / "scripts"):
    sys.path.insert(0, str(folder))

from conftest import image_b64, running_server  # noqa: E402
from make_tiny_checkpoints import make_lotus  # noqa: E402
from pipelines.base import Result  # noqa: E402
from queue_manager import JobQueue  # noqa: E402


def http_submit_latency(base: str, jobs: int = 50) -> list[float]:
    """POST /depth round trips on an idle server (validation, decoding, queueing)."""
    small = image_b64(width=64, height=48)
    session, times = requests.Session(), []
    for _ in range(jobs):
        started = time.perf_counter()
        job = session.post(f"{base}/depth", json={"image": small, "processing_res": 32},
                           timeout=30).json()["job_id"]
        times.append(time.perf_counter() - started)
        while session.get(f"{base}/job/{job}", timeout=5).json()["status"] != "completed":
            time.sleep(0.005)
    return sorted(times)


def polls_per_second(base: str, seconds: float, clients: int) -> tuple[float, float, int]:
    """Keep one depth job running (native resolution on a large photo) and poll its status."""
    big = image_b64(width=1600, height=1200)
    job = requests.post(f"{base}/depth", json={"image": big, "processing_res": 0},
                        timeout=30).json()["job_id"]
    while requests.get(f"{base}/job/{job}", timeout=5).json()["status"] == "queued":
        time.sleep(0.01)
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def poll(_):
        session, mine = requests.Session(), []
        while time.monotonic() < stop:
            started = time.perf_counter()
            session.get(f"{base}/job/{job}", timeout=10).raise_for_status()
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(poll, range(clients)))
    still_running = requests.get(f"{base}/job/{job}", timeout=5).json()["status"] == "processing"
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    return len(latencies) / seconds, p99, still_running


class Timestamps:
    """A pipeline that only records when each job started."""

    name, oom_advice = "bench", ""

    def __init__(self):
        self.started: dict[int, float] = {}

    def check(self, options):
        pass

    def load(self):
        pass

    def run(self, options, image, output_stem, progress):
        self.started[options] = time.perf_counter()
        path = Path(f"{output_stem}.txt")
        path.write_text("x")
        return Result(path, "text/plain", "x.txt")


def submit_to_start_latency(jobs: int = 200) -> list[float]:
    pipeline = Timestamps()
    with tempfile.TemporaryDirectory() as out:
        queue = JobQueue({"bench": pipeline}, Path(out), max_queue_size=jobs)
        queue.start()
        delays = []
        for index in range(jobs):
            submitted = time.perf_counter()
            view = queue.submit("bench", index, None)
            queue.wait(view.id, 10)
            delays.append(pipeline.started[index] - submitted)
        queue.stop()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()

    delays = sorted(submit_to_start_latency())
    print(f"idle submit-to-start latency: median {statistics.median(delays) * 1e6:.0f} us, "
          f"p99 {delays[int(len(delays) * 0.99) - 1] * 1e6:.0f} us over {len(delays)} jobs")

    with tempfile.TemporaryDirectory() as folder:
        make_lotus(Path(folder) / "ck")
        with running_server(Path(folder) / "w", Path(folder) / "ck", PIPELINES="lotus",
                            MAX_QUEUE_SIZE="100") as server:
            submits = http_submit_latency(server["url"])
            rate, p99, running = polls_per_second(server["url"], args.seconds, args.clients)
    print(f"idle HTTP submit (POST /depth, 64x48 PNG): median "
          f"{statistics.median(submits) * 1000:.1f} ms over {len(submits)} jobs")
    print(f"status polls with one job running: {rate:.0f} requests/s, p99 {p99:.1f} ms "
          f"({args.clients} clients, {args.seconds:g} s; job still running at the end: {running})")


if __name__ == "__main__":
    main()
