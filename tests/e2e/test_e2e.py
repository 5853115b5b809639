"""End to end: the real gunicorn server on a loopback port, driven by the guide's curl commands.

Lotus-D runs on the tiny checkpoint; SAM 3D Objects is the stand-in source tree loaded
through the server's real import path (SAM3D_SOURCE_DIR).
"""

import base64
import functools
import http.server
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image
import requests

from conftest import image_bytes, model_process, running_server, wait_until

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@pytest.fixture(scope="module")
def image_host(tmp_path_factory):
    """A loopback web server with a photo on it, standing in for the guide's image_url."""
    folder = tmp_path_factory.mktemp("www")
    (folder / "cat.png").write_bytes(image_bytes(width=96, height=64))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoints):
    with running_server(tmp_path_factory.mktemp("server"), checkpoints,
                        ALLOW_PRIVATE_URLS="true", MAX_QUEUE_SIZE="50") as started:
        yield started


def curl(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, cwd=cwd, timeout=120)


def curl_json(*args, cwd=None) -> dict:
    done = curl(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def poll(base, job_id, timeout=60):
    return wait_until(lambda: (lambda b: b if b["status"] in ("completed", "failed") else None)(
        curl_json(f"{base}/job/{job_id}")), timeout=timeout, interval=0.1)


def test_guide_async_flow_submit_poll_download(server, image_host, tmp_path):
    base = server["url"]
    job = curl_json("-X", "POST", f"{base}/generate", "-H", "Content-Type: application/json",
                    "-d", json.dumps({"image_url": f"{image_host}/cat.png",
                                      "output_format": "glb", "with_texture": True}))
    assert job["status"] == "queued" and job["status_url"] == f"/job/{job['job_id']}"
    status = poll(base, job["job_id"])
    assert status["status"] == "completed" and status["position"] == 0
    done = curl(f"{base}/job/{job['job_id']}/download", "--output", "cat.glb", cwd=tmp_path)
    assert done.returncode == 0
    assert (tmp_path / "cat.glb").read_bytes()[:4] == b"glTF"
    assert "Using center mask (rembg not available)" in server["log"].read_text()


@pytest.mark.parametrize("body, name, magic", [
    ({"output_format": "glb", "with_texture": True}, "cat.glb", b"glTF"),
    ({"output_format": "glb", "with_texture": False}, "shoe.glb", b"glTF"),
    ({"output_format": "ply"}, "burger.ply", b"ply\n"),
])
def test_guide_sync_flows_write_real_files(server, image_host, tmp_path, body, name, magic):
    done = curl("-X", "POST", f"{server['url']}/generate/sync", "-H",
                "Content-Type: application/json", "-d",
                json.dumps({"image_url": f"{image_host}/cat.png", **body}),
                "--output", name, cwd=tmp_path)
    assert done.returncode == 0
    assert (tmp_path / name).read_bytes()[:len(magic)] == magic


def test_guide_git_bash_base64_recipe_verbatim(server, tmp_path):
    (tmp_path / "image.jpg").write_bytes(image_bytes(width=80, height=60, fmt="JPEG"))
    request = tmp_path / "req.json"
    script = f"""
echo '{{"image": "' > {request}
base64 -w 0 {tmp_path / "image.jpg"} >> {request}
echo '", "output_format": "glb", "with_texture": true}}' >> {request}

curl -X POST {server['url']}/generate/sync \\
  -H "Content-Type: application/json" \\
  -d @{request} \\
  --output model.glb
"""
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.glb").read_bytes()[:4] == b"glTF"


def test_powershell_shaped_body(server, tmp_path):
    """What `@{...} | ConvertTo-Json` sends: indented, True as true, BOM-free UTF-8."""
    b64 = base64.b64encode(image_bytes()).decode()
    body = '{\n    "image":  "%s",\n    "output_format":  "glb",\n    "with_texture":  true\n}' % b64
    (tmp_path / "body.json").write_text(body)
    done = curl("-X", "POST", f"{server['url']}/generate/sync", "-H",
                "Content-Type: application/json", "--data-binary", "@body.json",
                "--output", "model.glb", cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "model.glb").read_bytes()[:4] == b"glTF"


def test_depth_sync_over_http(server):
    body = curl_json("-X", "POST", f"{server['url']}/depth/sync", "-H",
                     "Content-Type: application/json", "-d",
                     json.dumps({"image_base64": base64.b64encode(image_bytes()).decode(),
                                 "processing_res": 64}))
    assert base64.b64decode(body["image_base64"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0 <= body["min"] <= body["max"] <= 1


def test_fifty_pollers_get_fast_consistent_answers_while_jobs_run(server):
    """The guide's original server deadlocked on its first GET /job/<id>; ours must not."""
    base = server["url"]
    photo = base64.b64encode(image_bytes(width=600, height=450)).decode()
    jobs = [requests.post(f"{base}/depth", json={"image": photo, "processing_res": 768},
                          timeout=10).json()["job_id"] for _ in range(6)]
    slowest, problems = 0.0, []
    stop = time.monotonic() + 3.0

    def poller(index):
        nonlocal slowest
        session = requests.Session()
        last_position = {}
        while time.monotonic() < stop:
            for path in (f"/job/{jobs[index % len(jobs)]}", "/health", "/queue"):
                started = time.monotonic()
                response = session.get(base + path, timeout=10)
                slowest = max(slowest, time.monotonic() - started)
                body = response.json()
                if response.status_code != 200:
                    problems.append((path, response.status_code, body))
                if path.startswith("/job/"):
                    previous = last_position.get(path, 10**6)
                    if body["position"] > previous:
                        problems.append(("position went up", body))
                    last_position[path] = body["position"]
                if path == "/queue" and body["processing"] > body["max_concurrent"]:
                    problems.append(("over max_concurrent", body))

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(poller, range(50)))
    assert not problems, problems[:5]
    assert slowest < 2.0, f"slowest poll took {slowest:.2f} s"
    for job_id in jobs:
        assert poll(base, job_id)["status"] == "completed"


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc: no ps needed)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (ValueError, OSError, IndexError):
            continue
    return found


def loaded(base: str) -> bool:
    try:
        return requests.get(f"{base}/health", timeout=2).json()["model_loaded"]
    except requests.RequestException:  # the new worker is still starting
        return False


def test_a_worker_killed_like_the_oom_killer_does_loses_no_job(tmp_path, checkpoints):
    """kill -9 of the gunicorn worker mid-queue: after gunicorn starts a new one, every id
    still answers, finished results download, waiting jobs run, the running one says why."""
    photo = base64.b64encode(image_bytes(width=640, height=480)).decode()
    with running_server(tmp_path, checkpoints, MAX_QUEUE_SIZE="20") as started:
        base = started["url"]
        first = requests.post(f"{base}/depth", json={"image": photo, "processing_res": 64},
                              timeout=30).json()["job_id"]
        assert poll(base, first)["status"] == "completed"
        ids = [requests.post(f"{base}/depth", json={"image": photo}, timeout=30).json()["job_id"]
               for _ in range(4)]
        [worker] = children(started["pid"])
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: children(started["pid"]) not in ([], [worker]), timeout=60)
        wait_until(lambda: loaded(base), timeout=120, interval=0.2)
        finished = [poll(base, job_id) for job_id in ids]
        assert all(job["status"] == "completed" or "interrupted" in job["error"]
                   for job in finished), finished
        assert any(job["status"] == "completed" for job in finished)
        download = requests.get(f"{base}/job/{first}/download", timeout=30)
        assert download.status_code == 200 and download.content.startswith(b"\x89PNG")


def slow_then_quick(base: str, slow_res: int) -> tuple[str, str]:
    """Two depth jobs: a slow one (a photo processed at `slow_res`, twice its size: the most
    upscaling served), running when this returns, and a quick one waiting behind it."""
    small = base64.b64encode(image_bytes(width=64, height=48)).decode()
    photo = base64.b64encode(image_bytes(width=slow_res // 2, height=slow_res * 3 // 8)).decode()
    slow = requests.post(f"{base}/depth", json={"image": photo, "processing_res": slow_res},
                         timeout=30).json()["job_id"]
    quick = requests.post(f"{base}/depth", json={"image": small, "processing_res": 32},
                          timeout=30).json()["job_id"]
    # running in the model process: a stage it reported, not the queue's "starting" (a
    # process lost before it took the job retries the job, by design: workers/dispatch.py's
    # Dispatch._settle)
    wait_until(lambda: (lambda status: status["status"] == "processing"
                        and status["stage"] != "starting")(
        requests.get(f"{base}/job/{slow}", timeout=5).json()), timeout=30)
    return slow, quick


def test_sigterm_lets_the_running_job_finish_and_waiting_jobs_run_at_the_next_start(
        tmp_path, checkpoints):
    with running_server(tmp_path, checkpoints) as started:
        slow, waiting = slow_then_quick(started["url"], 1536)
        started["process"].send_signal(signal.SIGTERM)  # docker stop
        started["process"].wait(60)
        log = started["log"].read_text()
    assert "interrupted" not in log
    with running_server(tmp_path, checkpoints) as again:
        base = again["url"]
        assert poll(base, slow)["status"] == "completed"  # finished in the graceful period
        assert requests.get(f"{base}/job/{slow}/download", timeout=30).status_code == 200
        assert poll(base, waiting)["status"] == "completed"  # ran at this start


def test_a_killed_model_process_fails_only_its_job_and_the_server_goes_on(tmp_path,
                                                                         checkpoints):
    """The out-of-memory killer takes the model process, not the HTTP server: the running job
    fails saying why, the queue keeps its other jobs, and the models come back."""
    with running_server(tmp_path, checkpoints) as started:
        base = started["url"]
        [worker] = children(started["pid"])
        models = model_process(started["pid"], "lotus@")
        slow, after = slow_then_quick(base, 1536)
        os.kill(models, signal.SIGKILL)
        failed = poll(base, slow)
        assert failed["status"] == "failed" and "killed" in failed["error"]
        assert "out of memory" in failed["error"]
        assert poll(base, after)["status"] == "completed"  # the queue went on
        assert children(started["pid"]) == [worker]  # the HTTP process never went away
        assert model_process(started["pid"], "lotus@", other_than=models) != models


def test_a_job_over_job_timeout_seconds_is_stopped_and_the_next_one_runs(tmp_path,
                                                                         checkpoints):
    with running_server(tmp_path, checkpoints, JOB_TIMEOUT_SECONDS="3") as started:
        base = started["url"]
        slow, quick = slow_then_quick(base, 2048)  # tens of seconds on a CPU
        stopped = poll(base, slow)
        assert stopped["status"] == "failed" and "JOB_TIMEOUT_SECONDS" in stopped["error"]
        assert poll(base, quick)["status"] == "completed"


def test_a_forced_cancel_stops_a_running_job_at_once(tmp_path, checkpoints):
    with running_server(tmp_path, checkpoints) as started:
        base = started["url"]
        slow, after = slow_then_quick(base, 2048)
        answer = requests.delete(f"{base}/job/{slow}?force=true", timeout=5)
        assert answer.status_code == 202
        assert wait_until(lambda: requests.get(f"{base}/job/{slow}", timeout=5).json()[
            "status"] == "cancelled", timeout=2)  # not after the job's own run time
        assert poll(base, after)["status"] == "completed"


def test_sixty_four_clients_dripping_headers_do_not_stall_health(tmp_path, checkpoints):
    """Slowloris: each connection sends its request line and then a byte a second."""
    with running_server(tmp_path, checkpoints) as started:
        port = int(started["url"].rsplit(":", 1)[1])
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        try:
            for connection in slow:
                connection.sendall(b"GET /health HTTP/1.1\r\n")
            for _ in range(3):
                time.sleep(1)
                for connection in slow:
                    connection.sendall(b"X")
                assert requests.get(f"{started['url']}/health", timeout=1).status_code == 200
        finally:
            for connection in slow:
                connection.close()


def test_a_malformed_header_line_carrying_the_key_never_reaches_the_log(tmp_path, checkpoints):
    key = "k3y-that-must-not-be-logged"
    with running_server(tmp_path, checkpoints, API_KEY=key) as started:
        port = int(started["url"].rsplit(":", 1)[1])
        for line in (f"Authorization Bearer {key}", f"X-API-Key {key}"):  # no colon
            with socket.create_connection(("127.0.0.1", port)) as connection:
                connection.sendall(f"GET /queue HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n".encode())
                assert connection.recv(100).startswith(b"HTTP/1.1 400")
        time.sleep(0.5)
        log = started["log"].read_text()
    assert "Invalid HTTP request" in log and key not in log


def chunked_post(port: int, body: bytes) -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                      for i in range(0, len(body), 1000))
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"POST /depth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                           b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                           + chunks + b"0\r\n\r\n")
        return connection.recv(300)


def test_a_chunked_body_over_the_limit_is_413_not_cut_and_processed(tmp_path, checkpoints):
    small = json.dumps({"image": base64.b64encode(image_bytes(width=8, height=8)).decode()})
    big = json.dumps({"image": base64.b64encode(image_bytes(width=64, height=48)).decode()})
    with running_server(tmp_path, checkpoints, MAX_CONTENT_LENGTH="2048") as started:
        port = int(started["url"].rsplit(":", 1)[1])
        assert len(small) < 2048 < len(big)
        assert chunked_post(port, small.encode()).startswith(b"HTTP/1.1 202")
        assert chunked_post(port, big.encode()).startswith(b"HTTP/1.1 413")


def test_curl_uploads_a_photo_and_masks_as_files(server, tmp_path):
    """`curl -F image=@photo.jpg`: the file itself, no base64, on the async, sync and
    masked paths; a JPEG's depth map is the photo's size."""
    base = server["url"]
    (tmp_path / "photo.jpg").write_bytes(image_bytes(width=80, height=60, fmt="JPEG"))
    body = curl_json("-F", "image=@photo.jpg", "-F", "processing_res=64", "-F", "output=png16",
                     f"{base}/depth/sync", cwd=tmp_path)
    depth = Image.open(io.BytesIO(base64.b64decode(body["image_base64"])))
    assert depth.size == (80, 60) and depth.mode.startswith("I;16")

    mask = Image.new("L", (80, 60))
    mask.paste(255, (20, 10, 60, 50))
    mask.save(tmp_path / "mask.png")
    done = curl("-F", "image=@photo.jpg", "-F", "mask=@mask.png", "-F", "output_format=ply",
                f"{base}/generate/sync", "--output", "model.ply", cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "model.ply").read_bytes()[:3] == b"ply"

    job = curl_json("-F", "image=@photo.jpg", "-F", "output_format=stl", f"{base}/generate",
                    cwd=tmp_path)
    assert poll(base, job["job_id"])["status"] == "completed"
    mask.resize((40, 30)).save(tmp_path / "small.png")
    refused = curl("-F", "image=@photo.jpg", "-F", "mask=@small.png", "-w", "%{http_code}",
                   f"{base}/generate", cwd=tmp_path).stdout.decode()
    assert refused.endswith("400") and "mask is 40x30 pixels" in refused
