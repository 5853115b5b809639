#!/usr/bin/env python3
"""Server figures: status polls and /health per second while a job runs, beside a bare Flask
app under the same gunicorn settings and the same CPU load; a 512 px depth job's time outside
the model; idle submit-to-start latency.

    python bench/server.py [--seconds 5] [--clients 16]

Starts the real gunicorn server on a fresh tiny Lotus-D, on a loopback port (the tests'
helper). The baseline is a Flask app that answers the same status and /health JSON from
memory, while a process runs the same depth model; the target is at least 0.9x its
throughput. The load comes from wrk (Debian's package) where present: a Python client
saturates near 900 requests/s and would hide the server's own cost.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tests", ROOT / "scripts"):
    sys.path.insert(0, str(folder))

from conftest import image_b64, running_server, wait_until  # noqa: E402
from make_tiny_checkpoints import make_lotus  # noqa: E402
from pipelines.base import Result  # noqa: E402
from pipelines.lotus import DepthRequest  # noqa: E402
from queue_manager import JobQueue  # noqa: E402

BARE_APP = """
import json
from pathlib import Path
from flask import Flask, jsonify
app = Flask(__name__)
ANSWERS = json.loads(Path(__file__).with_name("answers.json").read_text())

@app.get("/job/<job_id>")
def job(job_id):
    return jsonify(ANSWERS["status"])

@app.get("/health")
def health():
    return jsonify(ANSWERS["health"])
"""
CPU_LOAD = """
import sys, time
from pathlib import Path
from PIL import Image
from pipelines.lotus.model import LotusDPipeline
model = LotusDPipeline.from_pretrained(Path(sys.argv[1]))
photo = Image.new("RGB", (1600, 1200), (90, 120, 150))
stop = time.monotonic() + float(sys.argv[2])
while time.monotonic() < stop:
    model([photo], processing_res=0)
"""


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


def running_job(base: str) -> str:
    """Start one long depth job (native resolution on a large photo); its id once it runs."""
    big = image_b64(width=1600, height=1200)
    job = requests.post(f"{base}/depth", json={"image": big, "processing_res": 0},
                        timeout=30).json()["job_id"]
    while requests.get(f"{base}/job/{job}", timeout=5).json()["status"] == "queued":
        time.sleep(0.01)
    return job


def requests_per_second(url: str, seconds: float, clients: int) -> tuple[float, float]:
    """(requests/s, p99 ms) of GETs of `url` from `clients` connections for `seconds`."""
    if shutil.which("wrk"):
        return wrk(url, seconds, clients)
    return python_client(url, seconds, clients)


def wrk(url: str, seconds: float, clients: int) -> tuple[float, float]:
    done = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{seconds:g}s", "--latency", url],
                          capture_output=True, text=True, check=True)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", done.stdout).groups()
    return rate, float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def python_client(url: str, seconds: float, clients: int) -> tuple[float, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def poll(_):
        session, mine = requests.Session(), []
        while time.monotonic() < stop:
            started = time.perf_counter()
            session.get(url, timeout=10).raise_for_status()
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(poll, range(clients)))
    return len(latencies) / seconds, statistics.quantiles(latencies, n=100)[98] * 1000


def depth_overhead(base: str, jobs: int = 20) -> tuple[float, float]:
    """Median (wall ms, ms outside the model) of a 512 px `/depth/sync`: the client's round
    trip less the job's processing_time (decoding, validation, journal, queue, answer)."""
    photo = io.BytesIO()
    Image.effect_noise((512, 512), 60).convert("RGB").save(photo, "JPEG", quality=90)
    body = {"image": base64.b64encode(photo.getvalue()).decode(), "processing_res": 512}
    session, walls, outside = requests.Session(), [], []
    for _ in range(jobs):
        started = time.perf_counter()
        answer = session.post(f"{base}/depth/sync", json=body, timeout=120)
        wall = time.perf_counter() - started
        answer.raise_for_status()
        status = session.get(f"{base}/job/{answer.json()['job_id']}", timeout=5).json()
        walls.append(wall * 1000)
        outside.append((wall - status["processing_time"]) * 1000)
    return statistics.median(walls), statistics.median(outside)


def bare_flask(folder: Path, checkpoint: Path, answers: dict, seconds: float,
               clients: int) -> dict[str, tuple[float, float]]:
    """The baseline: a bare Flask app under gunicorn.conf.py answering the same JSON, while a
    process runs the same model on the same photo (the CPU load the model process puts
    beside the server)."""
    (folder / "bare.py").write_text(BARE_APP)
    (folder / "answers.json").write_text(json.dumps(answers))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PORT": str(port), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c",
                               str(ROOT / "gunicorn.conf.py"), "--chdir", str(folder),
                               "bare:app"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    load = subprocess.Popen([sys.executable, "-c", CPU_LOAD, str(checkpoint),
                             str(seconds + 30)], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(base), timeout=60, interval=0.2)
        time.sleep(10)  # the load process is past its model loading, computing
        return {path: requests_per_second(f"{base}{path}", seconds, clients)
                for path in (f"/job/{'0' * 32}", "/health")}
    finally:
        server.terminate(), load.terminate()
        server.wait(30), load.wait(30)


def _answers(base: str) -> bool:
    try:
        return requests.get(f"{base}/job/{'0' * 32}", timeout=1).ok
    except requests.RequestException:
        return False


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
        self.started[options.seed] = time.perf_counter()
        path = Path(f"{output_stem}.txt")
        path.write_text("x")
        return Result(path, "text/plain", "x.txt")


def submit_to_start_latency(jobs: int = 200) -> list[float]:
    pipeline = Timestamps()
    with tempfile.TemporaryDirectory() as out:
        queue = JobQueue({"bench": pipeline}, Path(out), max_queue_size=jobs)
        queue.start()
        delays = []
        photo = Image.new("RGB", (8, 8))
        for index in range(jobs):
            submitted = time.perf_counter()
            view = queue.submit("bench", (DepthRequest(image="x", seed=index), photo))
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
        checkpoint = make_lotus(Path(folder) / "ck")
        with running_server(Path(folder) / "w", Path(folder) / "ck", PIPELINES="lotus",
                            MAX_QUEUE_SIZE="100") as server:
            base = server["url"]
            submits = http_submit_latency(base)
            wall, outside = depth_overhead(base)
            job = running_job(base)
            ours = {path: requests_per_second(f"{base}{path}", args.seconds, args.clients)
                    for path in (f"/job/{job}", "/health")}
            answers = {"status": requests.get(f"{base}/job/{job}", timeout=5).json(),
                       "health": requests.get(f"{base}/health", timeout=5).json()}
            running = answers["status"]["status"] == "processing"
        bare = bare_flask(Path(folder), checkpoint, answers, args.seconds, args.clients)
    print(f"idle HTTP submit (POST /depth, 64x48 PNG): median "
          f"{statistics.median(submits) * 1000:.1f} ms over {len(submits)} jobs")
    print(f"512 px JPEG /depth/sync (tiny model): median {wall:.1f} ms, of which {outside:.1f} "
          "ms outside the job's processing time (HTTP, decoding, validation, journal, queue, "
          "answer)")
    tool = "wrk" if shutil.which("wrk") else "a Python client (install wrk for true figures)"
    print(f"{args.clients} connections from {tool}, {args.seconds:g} s each, the depth model "
          f"busy beside the server (job still running at the end: {running}):")
    print(f"  {'':14}{'this server':>24}{'bare Flask':>24}{'ratio':>8}")
    for (path, (rate, p99)), (bare_rate, bare_p99) in zip(ours.items(), bare.values()):
        name = "GET /job/<id>" if path.startswith("/job/") else f"GET {path}"
        print(f"  {name:14}{rate:10.0f} req/s p99 {p99:5.1f} ms{bare_rate:10.0f} req/s p99 "
              f"{bare_p99:5.1f} ms{rate / bare_rate:7.2f}x")
    print("  target: at least 0.9x")


if __name__ == "__main__":
    main()
