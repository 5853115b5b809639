#!/usr/bin/env python3
"""Peak RSS of the HTTP process (gunicorn's worker) under 8 concurrent bombs of each kind,
this tree's code beside a baseline tree's (main's), in the same run (issue 31, items 1-2):

- download bomb: `image_url` answering `Content-Encoding: br`, ~100 bytes that inflate to
  128 MiB (the fetch cap is URL_MAX_BYTES);
- video bomb: a 421 KB `.mov` whose track says 64x48 and whose first frame is a
  12000x12000 PNG, sent as `video`.

    python bench/bombs.py [--baseline /work/main] [--clients 8]

Each tree's server is started as the tests start it (gunicorn -c gunicorn.conf.py, tiny
Lotus-D, loopback, ALLOW_PRIVATE_URLS=1 for the loopback bomb server). The peak is the
worker's VmHWM, reset before each kind (`echo 5 > /proc/PID/clear_refs`, Linux 4.0+), less
its RSS just before: what the bombs cost beyond the idle server.
"""

from __future__ import annotations

import argparse
import base64
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import brotli
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tests", ROOT / "scripts"):
    sys.path.insert(0, str(folder))

from conftest import image_b64, sam3d_checkpoints  # noqa: E402
from make_tiny_checkpoints import make_lotus  # noqa: E402
from test_video import png_mov, png_of_zeros  # noqa: E402

ANSWER_SECONDS = 120  # a request unanswered by then is counted as such (main's took minutes)
BROTLI_BOMB = brotli.compress(bytes(128 << 20), quality=11)


class BombServer(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Encoding", "br")
        self.send_header("Content-Length", str(len(BROTLI_BOMB)))
        self.end_headers()
        self.wfile.write(BROTLI_BOMB)


def kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def start(tree: Path, work: Path, checkpoints: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PORT": str(port), "CHECKPOINTS_DIR": str(checkpoints),
           "OUTPUT_DIR": str(work / "outputs"), "PIPELINES": "lotus", "MAX_QUEUE_SIZE": "20",
           "ALLOW_PRIVATE_URLS": "1", "PYTHONPATH": f"{tree}:{tree / 'client'}",
           "U2NET_HOME": str(work / "no-u2net")}
    env.pop("API_KEY", None)
    log = open(work / "server.log", "w")
    master = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
                              cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert master.poll() is None, (work / "server.log").read_text()[-2000:]
        try:
            if requests.get(f"{base}/health", timeout=1).json().get("model_loaded"):
                break
        except requests.RequestException:
            pass
        time.sleep(0.3)
    [worker] = psutil.Process(master.pid).children()
    return master, worker.pid, base


def peak_mib(worker: int, send, clients: int) -> tuple[float, set, float]:
    """(MiB over the idle RSS at the peak, statuses, seconds) for `clients` sends at once."""
    Path(f"/proc/{worker}/clear_refs").write_text("5")
    idle = kib(worker, "VmRSS")
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        statuses = set(map(str, pool.map(lambda _: send(), range(clients))))
    return (kib(worker, "VmHWM") - idle) / 1024, statuses, time.monotonic() - started


def measure(tree: Path, folder: Path, checkpoints: Path, bomb_url: str, video: str,
            clients: int) -> dict:
    master, worker, base = start(tree, folder, checkpoints)
    try:
        def post(body):
            try:
                return requests.post(f"{base}/depth", json=body, timeout=ANSWER_SECONDS
                                     ).status_code
            except requests.Timeout:
                return f"none in {ANSWER_SECONDS}s"

        def download():
            return post({"image_url": bomb_url})

        def video_bomb():
            return post({"video": video})

        return {"idle RSS MiB": kib(worker, "VmRSS") / 1024,
                "download bombs": peak_mib(worker, download, clients),
                "video bombs": peak_mib(worker, video_bomb, clients)}
    finally:
        master.terminate()
        try:
            master.wait(60)
        except subprocess.TimeoutExpired:
            for process in psutil.Process(master.pid).children(recursive=True) + [master]:
                process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, default=Path("/work/main"))
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    video = base64.b64encode(png_mov(png_of_zeros(12000, 12000))).decode()
    bombs = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BombServer)
    threading.Thread(target=bombs.serve_forever, daemon=True).start()
    bomb_url = f"http://127.0.0.1:{bombs.server_port}/photo.png"
    print(f"{args.clients} concurrent bombs of each kind: a {len(BROTLI_BOMB)}-byte br body "
          f"inflating to 128 MiB; a {len(base64.b64decode(video))}-byte mov, 64x48 declared, "
          "first frame 12000x12000")
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = Path(folder) / "ck"
        make_lotus(checkpoints)
        sam3d_checkpoints(checkpoints)
        results = {}
        for name, tree in (("baseline " + str(args.baseline), args.baseline),
                           ("this tree " + str(ROOT), ROOT)):
            work = Path(folder) / name.split()[0]
            work.mkdir()
            results[name] = measure(tree, work, checkpoints, bomb_url, video, args.clients)
    print(f"{'':44} {'idle RSS':>9} {'download bombs':>26} {'video bombs':>26}")
    for name, result in results.items():
        cells = [f"+{mib:7.0f} MiB {sorted(codes)} {seconds:4.1f}s"
                 for mib, codes, seconds in (result["download bombs"], result["video bombs"])]
        print(f"{name:44} {result['idle RSS MiB']:6.0f} MiB {cells[0]:>26} {cells[1]:>26}")
    bombs.shutdown()


if __name__ == "__main__":
    main()
