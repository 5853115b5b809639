"""End to end with the real gunicorn server and its model processes: a worker per device,
a model process that dies between jobs, a second server on the same folder, and a disk that
fills up under the server."""

import base64
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from conftest import (ROOT, image_bytes, model_process, model_processes, running_server,
                      slow_depth_job, tmpfs, wait_until)
from stand_ins import brightness_onnx

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
PHOTO = base64.b64encode(image_bytes(width=64, height=48)).decode()


def health(base):
    return requests.get(f"{base}/health", timeout=5).json()


def status(base, job_id):
    return requests.get(f"{base}/job/{job_id}", timeout=5).json()


def finished(base, job_id, timeout=90):
    return wait_until(lambda: (lambda body: body if body["status"] in (
        "completed", "failed", "cancelled") else None)(status(base, job_id)),
        timeout=timeout, interval=0.1)


def children(pid):
    """The pids whose parent is `pid` (gunicorn's master -> its HTTP worker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def loads_torch(pid):
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def loads_onnxruntime(pid):
    return "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()


def depth(base, **body):
    answer = requests.post(f"{base}/depth", json={"image": PHOTO, **body}, timeout=30)
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


def test_two_devices_run_two_3d_jobs_at_once_and_a_killed_worker_fails_only_its_job(
        tmp_path, checkpoints):
    with running_server(tmp_path, checkpoints, GPUS="cpu,cpu",
                        SAM3D_STAND_IN_SECONDS="20") as started:
        base = started["url"]
        workers = health(base)["workers"]
        assert sorted((w["pipeline"], w["device"]) for w in workers) == [
            ("lotus", "cpu:0"), ("lotus", "cpu:1"), ("sam3d", "cpu:0"), ("sam3d", "cpu:1"),
            ("segment", "cpu:0")]  # masks: one CPU worker, whatever the devices
        assert sorted(model_processes(started["pid"]).values()) == [
            "lotus@cpu:0", "lotus@cpu:1", "sam3d@cpu:0", "sam3d@cpu:1", "segment@cpu:0"]

        jobs = [requests.post(f"{base}/generate", json={"image": PHOTO, "output_format": "ply"},
                              timeout=30).json()["job_id"] for _ in range(2)]
        both = wait_until(lambda: (lambda views: views if all(
            v["status"] == "processing" for v in views) else None)(
            [status(base, job) for job in jobs]), timeout=30, interval=0.05)
        assert {view["worker"] for view in both} == {"sam3d@cpu:0", "sam3d@cpu:1"}
        assert health(base)["queue"]["lanes"]["sam3d"]["processing"] == 2
        assert all(view["position"] == 0 for view in both)

        quick = depth(base)  # its own lane: done while both 3D jobs still run
        assert finished(base, quick)["status"] == "completed"
        assert all(status(base, job)["status"] == "processing" for job in jobs)

        os.kill(model_process(started["pid"], "sam3d@cpu:0"), signal.SIGKILL)
        ends = {job: finished(base, job) for job in jobs}
        killed = [view for view in ends.values() if view["status"] == "failed"]
        assert len(killed) == 1 and "killed" in killed[0]["error"]
        assert sum(view["status"] == "completed" for view in ends.values()) == 1
        wait_until(lambda: all(w["state"] == "ready" for w in health(base)["workers"]),
                   timeout=60, interval=0.2)
        again = requests.post(f"{base}/generate", json={"image": PHOTO, "output_format": "ply"},
                              timeout=30).json()["job_id"]
        assert finished(base, again)["status"] == "completed"


def test_a_mask_comes_from_its_own_cpu_worker_while_a_3d_job_runs(tmp_path, checkpoints):
    """rembg runs in the segment worker (and the 3D one), never in the HTTP process, and a
    mask does not wait for the minute a 3D job takes."""
    brightness_onnx(tmp_path / "u2net" / "u2net.onnx")
    with running_server(tmp_path, checkpoints, PIPELINES="sam3d", SAM3D_STAND_IN_SECONDS="120",
                        U2NET_HOME=str(tmp_path / "u2net")) as started:
        base = started["url"]
        assert health(base)["capabilities"]["segment"] == {"offered": True}
        job = requests.post(f"{base}/generate", json={"image": PHOTO, "output_format": "ply"},
                            timeout=30).json()["job_id"]
        wait_until(lambda: status(base, job)["status"] == "processing", timeout=30)
        photo = Image.new("RGB", (64, 48), (10, 10, 10))
        photo.paste((250, 250, 250), (16, 8, 48, 40))
        buffer = io.BytesIO()
        photo.save(buffer, format="PNG")
        answer = requests.post(f"{base}/segment", files={"image": ("photo.png", buffer.getvalue())},
                               timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["source"] == "rembg"
        assert status(base, job)["status"] == "processing"
        segment = model_process(started["pid"], "segment@")
        [http_worker] = children(started["pid"])
        assert loads_onnxruntime(segment) and not loads_onnxruntime(http_worker)
        requests.delete(f"{base}/job/{job}?force=true", timeout=5)


def test_a_model_process_that_dies_between_jobs_is_noticed_and_restarted(tmp_path,
                                                                          checkpoints):
    with running_server(tmp_path, checkpoints) as started:
        base = started["url"]
        lotus = model_process(started["pid"], "lotus@")
        os.kill(lotus, signal.SIGKILL)  # idle: no job is running
        not_ready = wait_until(lambda: (lambda answer: answer.json() if answer.status_code == 503
                                        else None)(requests.get(f"{base}/readyz", timeout=5)),
                               timeout=5, interval=0.05)
        assert any("lotus" in reason for reason in not_ready["reasons"])
        job = depth(base)  # waits for the worker instead of failing on the dead one
        assert finished(base, job)["status"] == "completed"
        restarted = model_process(started["pid"], "lotus@", other_than=lotus)
        assert next(w for w in health(base)["workers"] if w["pipeline"] == "lotus"
                    )["restarts"] == 1
        # torch (about 490 MB) lives in the model processes only, not in the HTTP worker
        # that validated, queued and answered the job.
        [http_worker] = children(started["pid"])
        assert loads_torch(restarted) and not loads_torch(http_worker)

        # Killed while loading again (a forced cancel, then another at once): it still
        # comes back, and jobs go on.
        slow = slow_depth_job(base)
        requests.delete(f"{base}/job/{slow}?force=true", timeout=5)
        wait_until(lambda: any(w["pipeline"] == "lotus" and w["state"] == "loading"
                               for w in health(base)["workers"]), timeout=30, interval=0.02)
        os.kill(model_process(started["pid"], "lotus@", other_than=restarted), signal.SIGKILL)
        after = depth(base)
        assert finished(base, slow)["status"] == "cancelled"
        assert finished(base, after, timeout=120)["status"] == "completed"
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200

        # A second server on the same OUTPUT_DIR refuses to start, saying why.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "PORT": str(port), "OUTPUT_DIR": str(tmp_path / "outputs"),
               "CHECKPOINTS_DIR": str(tmp_path / "checkpoints"), "PIPELINES": "lotus"}
        second = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert "in use by another server" in second.stdout + second.stderr
        assert finished(base, depth(base))["status"] == "completed"  # the first goes on


@pytest.fixture
def small_disk(tmp_path):
    """OUTPUT_DIR on an 8 MiB tmpfs of its own."""
    with tmpfs(tmp_path / "outputs", "size=8m") as folder:
        yield folder


def fill(folder):
    """Fill the file system to the last byte."""
    with open(folder / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


def test_a_full_disk_fails_clearly_and_recovers_by_itself(tmp_path, checkpoints,
                                                                        small_disk):
    with running_server(tmp_path, checkpoints, MIN_FREE_DISK_MB="1") as started:
        base = started["url"]
        done = finished(base, depth(base))
        assert done["status"] == "completed"

        slow = slow_depth_job(base)
        waiting = depth(base)
        fill(small_disk)
        refused = requests.post(f"{base}/depth", json={"image": PHOTO}, timeout=30)
        assert refused.status_code == 507 and "OUTPUT_DIR is full" in refused.json()["error"]
        assert refused.headers["Retry-After"]
        sick = requests.get(f"{base}/health", timeout=5)
        assert sick.status_code == 503 and sick.json()["state"] == "unhealthy"
        assert "OUTPUT_DIR is full" in sick.json()["notices"]["storage"]
        failed = finished(base, slow)
        assert failed["status"] == "failed" and "disk" in failed["error"].lower()
        assert "/" not in failed["error"]  # no server path
        time.sleep(1)
        assert status(base, waiting)["status"] == "queued"  # waits, does not fail
        assert requests.get(f"{base}/job/{done['job_id']}/download", timeout=5).ok

        (small_disk / "filler").unlink()  # space again: no restart needed
        assert finished(base, waiting)["status"] == "completed"
        wait_until(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200,
                   timeout=10)

        with ThreadPoolExecutor(4) as pool:
            jobs = list(pool.map(lambda _: depth(base), range(4)))
        assert all(finished(base, job)["status"] == "completed" for job in jobs)
