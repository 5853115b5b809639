#!/usr/bin/env python3
"""/health latency while slow and many clients hold connections: 300 open event streams,
170 clients dripping a 100,000-byte body and 64 dripping their headers, a byte a second
each, beside a running job. The same run measures the old configuration (gunicorn's
gthread worker, queue + 16 + 128 spare threads) as the baseline.

    python bench/slow_clients.py [--seconds 8]

Starts the real gunicorn server on a fresh tiny Lotus-D on a loopback port (the tests'
helper), once per configuration. A /health that takes longer than 2 s counts as a timeout.
The figures are for the load in place: /health is first asked SETTLE_SECONDS after the 534
clients have connected (while they arrive, on a shared 2-core machine, one /health took
0.3-1 s with the front: the streams' first requests run in the app).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tests", ROOT / "scripts"):
    sys.path.insert(0, str(folder))

from conftest import running_server, slow_depth_job  # noqa: E402
from make_tiny_checkpoints import make_lotus  # noqa: E402

STREAMS, SLOW_BODIES, SLOW_HEADERS = 300, 170, 64
HEALTH_TIMEOUT = 2.0
SETTLE_SECONDS = 1.0
OLD_THREADS = 10 + 1 + 16 + 128  # the old gunicorn.conf.py at the default settings
CONFIGURATIONS = {
    "front (uvicorn, budgets)": {},
    "baseline (gthread)": {"GUNICORN_CMD_ARGS": f"--worker-class gthread --threads {OLD_THREADS}"},
}


def open_load(port: int, job: str) -> tuple[list[socket.socket], list[socket.socket]]:
    """The streams, and the slow clients (who go on dripping)."""
    def connect(first: bytes) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", port))
        connection.sendall(first)
        return connection

    streams = [connect(f"GET /job/{job}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
               for _ in range(STREAMS)]
    slow = [connect(b"POST /depth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n{") for _ in range(SLOW_BODIES)]
    slow += [connect(b"GET /health HTTP/1.1\r\n") for _ in range(SLOW_HEADERS)]
    return streams, slow


def drip(slow: list[socket.socket], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        for connection in slow:
            try:
                connection.sendall(b"X")
            except OSError:  # refused or timed out by the server
                pass


def health_latencies(base: str, seconds: float) -> tuple[list[float], int]:
    latencies, timeouts = [], 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        started = time.monotonic()
        try:
            requests.get(f"{base}/health", timeout=HEALTH_TIMEOUT).raise_for_status()
            latencies.append(time.monotonic() - started)
        except requests.RequestException:
            timeouts += 1
        time.sleep(0.05)
    return latencies, timeouts


def measure(work: Path, checkpoint: Path, env: dict, seconds: float) -> dict:
    with running_server(work, checkpoint, OMP_NUM_THREADS="1", **env) as started:
        base = started["url"]
        job = slow_depth_job(base, 3072, timeout=60)
        streams, slow = open_load(int(base.rsplit(":", 1)[1]), job)
        stop = threading.Event()
        dripping = threading.Thread(target=drip, args=(slow, stop), daemon=True)
        dripping.start()
        time.sleep(SETTLE_SECONDS)
        try:
            latencies, timeouts = health_latencies(base, seconds)
        finally:
            stop.set()
            dripping.join()
            for connection in streams + slow:
                connection.close()
        closed = time.monotonic()
        after, _ = health_latencies(base, 0.01)  # the first /health once they have all gone
        while not after and time.monotonic() - closed < 30:
            after, _ = health_latencies(base, 0.01)
        recovered = time.monotonic() - closed
        # the job's end ends the streams a gthread worker may still be writing to
        requests.delete(f"{base}/job/{job}?force=true", timeout=30)
        return {"latencies": latencies, "timeouts": timeouts, "recovered": recovered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "checkpoints"
        make_lotus(checkpoint)
        print(f"/health under {STREAMS} event streams + {SLOW_BODIES} slow bodies + "
              f"{SLOW_HEADERS} slow headers, {args.seconds:g} s, loopback:")
        for index, (name, env) in enumerate(CONFIGURATIONS.items()):
            figures = measure(Path(folder) / f"run{index}", checkpoint, env, args.seconds)
            ms = sorted(1000 * value for value in figures["latencies"])
            if len(ms) >= 2:
                p50, p99 = statistics.median(ms), statistics.quantiles(ms, n=100)[98]
                summary = f"p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  max {ms[-1]:7.1f} ms"
            else:
                summary = "p50       -     p99       -     max       -   "
            print(f"  {name:26s} {summary}  answered {len(ms):3d}, timed out (>"
                  f"{HEALTH_TIMEOUT:g} s) {figures['timeouts']:2d}; answers again "
                  f"{figures['recovered']:5.2f} s after the clients close")


if __name__ == "__main__":
    main()
