"""`sam3d-client` against the real server (tiny Lotus-D depth and normals, SAM 3D stand-in),
installed on its own in a venv without torch, as a user on any machine would install it; its
Python API in-process."""

import argparse
import base64
import fcntl
import io
import json
import os
import pty
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import termios
import tty
import venv
import zipfile

import numpy as np
import pytest
import requests
import trimesh
from PIL import Image

from conftest import (ROOT, VIDEO_FRAMES, VIDEO_HEIGHT, VIDEO_WIDTH, QuietHandler, image_bytes,
                      local_http_server, make_video, running_server, wait_until)

sys.path.insert(0, str(ROOT / "client"))  # this checkout's client, not an installed one

from sam3d_client import Client, OutputPathError, ServerError  # noqa: E402

KEY = "client-test-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
STAND_IN_SECONDS = 3  # each 3D job on the slow server: long enough to queue one behind it


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoints_with_normals):
    with running_server(tmp_path_factory.mktemp("client"), checkpoints_with_normals,
                        API_KEY=KEY,
                        ALLOW_PRIVATE_URLS="true") as started:  # --image-url from loopback
        yield started


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, checkpoints):
    """SAM 3D stand-in alone, each job taking STAND_IN_SECONDS: a job waits behind another."""
    with running_server(tmp_path_factory.mktemp("client-slow"), checkpoints, API_KEY=KEY,
                        PIPELINES="sam3d",
                        SAM3D_STAND_IN_SECONDS=str(STAND_IN_SECONDS)) as started:
        yield started


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory):
    """A venv with only the client package (`pip install ./client`): no torch, no server."""
    folder = tmp_path_factory.mktemp("client-venv")
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(ROOT / "client")], check=True,
                   timeout=600)
    return folder


def client_env(server, key=KEY):
    return {**os.environ, "SAM3D_URL": server["url"], "SAM3D_API_KEY": key}


def sam3d_client(client_venv, server, *args, key=KEY, cwd=None):
    return subprocess.run([client_venv / "bin" / "sam3d-client", *map(str, args)],
                          env=client_env(server, key), capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def started_client(client_venv, server, *args):
    """`sam3d-client` running, its job accepted and followed: the process, the job's id and
    the resume command it printed."""
    process = subprocess.Popen([client_venv / "bin" / "sam3d-client", *map(str, args)],
                               env=client_env(server), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    accepted = re.fullmatch(r"job ([0-9a-f]{32}) queued \(position \d+\); resume with: (.+)\n",
                            process.stderr.readline())
    assert accepted, process.communicate(timeout=30)
    job_id, resume = accepted.groups()
    assert process.stderr.readline().startswith(f"job {job_id}: queued, position")  # following
    return process, job_id, resume


def blocking_job(server, photo) -> str:
    """A 3D job running on the slow server (the next one waits behind it)."""
    job = requests.post(f"{server['url']}/generate", headers=HEADERS, timeout=30, json={
        "image": base64.b64encode(photo.read_bytes()).decode(), "with_texture": False}).json()
    wait_until(lambda: job_status(server, job["job_id"]) == "processing", timeout=30)
    return job["job_id"]


def job_status(server, job_id) -> str:
    return requests.get(f"{server['url']}/job/{job_id}", headers=HEADERS,
                        timeout=10).json()["status"]


def posts(server) -> float:
    """POST requests the server has answered, from its /metrics."""
    text = requests.get(f"{server['url']}/metrics", headers=HEADERS, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("sam3d_http_requests_total{") and 'method="POST"' in line)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(image_bytes(width=80, height=60))
    return path


def test_the_client_installs_alone_without_torch(client_venv):
    done = subprocess.run([client_venv / "bin" / "python", "-c", "import torch"],
                          capture_output=True)
    assert done.returncode != 0
    assert (client_venv / "bin" / "sam3d-client").is_file()


def test_generate_downloads_the_model_and_shows_progress(client_venv, server, photo, tmp_path):
    out = tmp_path / "model.glb"
    done = sam3d_client(client_venv, server, "generate", photo, "-o", out, "--no-texture",
                        "--seed", 3)
    assert done.returncode == 0, done.stderr
    mesh = trimesh.load(out, file_type="glb", force="mesh")
    assert mesh.visual.kind == "vertex" and len(mesh.faces) > 0
    lines = done.stderr.splitlines()
    job_id = re.fullmatch(r"job ([0-9a-f]{32}) queued \(position \d\); resume with: "
                          r"sam3d-client wait \1 -o (.+)", lines[0])[1]  # the id, first
    assert lines[0].endswith(f" -o {out}")
    # not a terminal: plain lines, one per change, up to 100%, never a carriage return
    assert "\r" not in done.stderr and len(lines) >= 3
    assert all(line.startswith(f"job {job_id}: ") for line in lines[1:])
    assert all(a != b for a, b in zip(lines, lines[1:])) and lines[-1].endswith(" 100%")
    assert str(out) in done.stdout and job_id in done.stdout


def test_on_a_terminal_the_progress_is_a_bar(client_venv, server, photo, tmp_path):
    controller, terminal = pty.openpty()
    tty.setraw(terminal)  # no newline translation: each carriage return is the client's
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen([client_venv / "bin" / "sam3d-client", "generate", photo, "-o",
                                tmp_path / "model.glb", "--no-texture"], env=client_env(server),
                               stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    shown = b""
    while chunk := read_terminal(controller):
        shown += chunk
    os.close(controller)
    assert process.wait(60) == 0
    assert shown.count(b"\r") >= 2 and b"100%|" in shown  # tqdm's bar, redrawn in place


def read_terminal(fd) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the other end closed
        return b""


def test_the_format_follows_the_output_files_suffix(client_venv, server, photo, tmp_path):
    out = tmp_path / "scan.stl"
    done = sam3d_client(client_venv, server, "generate", photo, "-o", out)
    assert done.returncode == 0, done.stderr
    assert len(trimesh.load(out, file_type="stl").faces) > 0


def test_masks_make_a_scene(client_venv, server, photo, tmp_path):
    masks = []
    for index, (left, right) in enumerate(((0, 30), (50, 80))):
        mask = np.zeros((60, 80), dtype=np.uint8)
        mask[:, left:right] = 255
        masks += ["--mask", tmp_path / f"mask{index}.png"]
        Image.fromarray(mask).save(masks[-1])
    out = tmp_path / "scene.glb"
    done = sam3d_client(client_venv, server, "generate", photo, "-o", out, "--no-texture",
                        *masks)
    assert done.returncode == 0, done.stderr
    assert len(trimesh.load(out, file_type="glb").geometry) == 2


def test_segment_writes_the_mask_that_generate_mask_then_sends(client_venv, server, photo,
                                                              tmp_path):
    out = tmp_path / "mask.png"
    done = sam3d_client(client_venv, server, "segment", photo, "-o", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{out} (80x60, from center)"  # no rembg model there
    mask = Image.open(out)
    assert (mask.mode, mask.size) == ("L", (80, 60))
    assert set(np.unique(np.asarray(mask))) == {0, 255}
    model = tmp_path / "model.ply"
    sent = sam3d_client(client_venv, server, "generate", photo, "--mask", out, "-o", model)
    assert sent.returncode == 0, sent.stderr
    refused = sam3d_client(client_venv, server, "segment", photo, "-o", tmp_path / "mask.jpg")
    assert refused.returncode == 2 and "the mask is a .png file" in refused.stderr


def test_depth_writes_the_depth_file(client_venv, server, photo, tmp_path):
    out = tmp_path / "depth.npy"
    done = sam3d_client(client_venv, server, "depth", photo, "-o", out)
    assert done.returncode == 0, done.stderr
    assert np.load(out).shape == (60, 80)
    assert '"min"' in done.stdout


def test_depth_to_a_glb_file_asks_for_the_relief_mesh(client_venv, server, photo, tmp_path):
    out = tmp_path / "relief.glb"
    done = sam3d_client(client_venv, server, "depth", photo, "-o", out, "--fov-degrees", "75",
                        "--processing-res", "32")
    assert done.returncode == 0, done.stderr
    (mesh,) = trimesh.load(out, file_type="glb").geometry.values()
    assert len(mesh.vertices) == 80 * 60 and '"fov_degrees": 75' in done.stdout
    lit_out = tmp_path / "lit.glb"
    lit = sam3d_client(client_venv, server, "depth", photo, "-o", lit_out, "--normal-model",
                       "normal-d-v1-1", "--processing-res", "32")
    assert lit.returncode == 0, lit.stderr
    assert "normal-d-v1-1's normal map" in lit.stdout
    (lit_mesh,) = trimesh.load(lit_out, file_type="glb").geometry.values()
    assert not np.allclose(lit_mesh.vertex_normals, mesh.vertex_normals)
    typo = sam3d_client(client_venv, server, "depth", photo, "-o", tmp_path / "x.glb",
                        "--normal-model", "normal-x")
    assert typo.returncode != 0 and "normal_model" in typo.stderr


def test_normal_writes_the_normal_map_and_prints_its_convention(client_venv, server, photo,
                                                                tmp_path):
    out = tmp_path / "normals.png"
    done = sam3d_client(client_venv, server, "normal", photo, "-o", out, "--model",
                        "normal-d-v1-1", "--processing-res", 64, "--seed", 3)
    assert done.returncode == 0, done.stderr
    written = Image.open(out)
    assert (written.mode, written.size) == ("RGB", (80, 60))
    assert "z toward the camera" in done.stdout and '"model": "normal-d-v1-1"' in done.stdout
    wrong = sam3d_client(client_venv, server, "normal", photo, "-o", tmp_path / "normals.jpg")
    assert wrong.returncode == 2 and "name it" in wrong.stderr and "normals.png" in wrong.stderr
    unserved = sam3d_client(client_venv, server, "depth", photo, "-o", tmp_path / "depth.png",
                            "--model", "depth-g-v1-0")
    assert unserved.returncode == 1
    assert "model depth-g-v1-0 is not served here" in unserved.stderr


def test_status_and_health_print_the_servers_json(client_venv, server, photo, tmp_path):
    health = sam3d_client(client_venv, server, "health")
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "healthy"
    missing = sam3d_client(client_venv, server, "status", "0" * 32)
    assert missing.returncode == 1 and "404: job not found" in missing.stderr


def test_every_error_exits_non_zero_with_the_servers_message(client_venv, server, photo,
                                                              tmp_path):
    wrong_key = sam3d_client(client_venv, server, "health", key="")
    assert wrong_key.returncode == 0  # health is open
    refused = sam3d_client(client_venv, server, "depth", photo, key="wrong")
    assert refused.returncode == 1 and "401: Unauthorized" in refused.stderr
    empty = tmp_path / "empty.png"
    Image.new("L", (80, 60)).save(empty)
    bad_mask = sam3d_client(client_venv, server, "generate", photo, "--mask", empty,
                            cwd=tmp_path)
    assert bad_mask.returncode == 1 and "mask is empty" in bad_mask.stderr
    assert not (tmp_path / "model.glb").exists()
    not_served = sam3d_client(client_venv, server, "generate", photo, "--format", "ply",
                              "--seed", 2**33)  # a 400 from the server, at once
    assert not_served.returncode == 1 and "seed" in not_served.stderr


def test_a_refused_connection_is_one_plain_sentence(client_venv, photo):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for command in (["health"], ["depth", photo, "-o", photo.with_name("d.png")]):
        nowhere = subprocess.run([client_venv / "bin" / "sam3d-client", "--url", url,
                                  *command], capture_output=True, text=True, timeout=60)
        assert nowhere.returncode == 2
        assert nowhere.stderr == (f"error: cannot reach {url}: connection refused — "
                                  "is the server running?\n")


def test_the_key_and_version_options(client_venv, server):
    missing = "0" * 32
    with_option = sam3d_client(client_venv, server, "--api-key", KEY, "status", missing,
                               key="")
    assert with_option.returncode == 1 and "404: job not found" in with_option.stderr
    without = sam3d_client(client_venv, server, "status", missing, key="")
    assert without.returncode == 1 and "401: Unauthorized" in without.stderr
    version = subprocess.run([client_venv / "bin" / "sam3d-client", "--version"],
                             capture_output=True, text=True)
    installed = subprocess.run([client_venv / "bin" / "python", "-c", "from importlib.metadata "
                                "import version; print(version('sam3d-client'))"],
                               capture_output=True, text=True).stdout.strip()
    assert version.returncode == 0 and version.stdout == f"sam3d-client {installed}\n"


@pytest.mark.parametrize("command, out, message", [
    (["depth"], "depth.jpg", "a depth map (output png) is a .png file; name it {dir}/depth.png"),
    (["depth", "--output", "npy"], "depth.png", "is a .npy file; name it {dir}/depth.npy"),
    (["generate"], "model.obj", "(a zip of the mesh, its material and texture) is a .zip file; "
                                "name it {dir}/model.zip"),
    (["generate", "--format", "ply"], "model.glb", "is a .ply file; name it {dir}/model.ply"),
    (["generate"], "missing/model.glb", "folder {dir}/missing does not exist"),
    (["depth"], "", "is a folder: name the file"),
])
def test_an_unusable_output_path_is_refused_before_submitting(client_venv, server, photo,
                                                              tmp_path, command, out, message):
    before = posts(server)
    done = sam3d_client(client_venv, server, *command, photo, "-o", tmp_path / out)
    assert done.returncode == 2 and done.stderr.startswith("error: ")
    assert message.format(dir=tmp_path) in done.stderr and len(done.stderr.splitlines()) == 1
    assert posts(server) == before  # nothing was sent
    assert sorted(path.name for path in tmp_path.iterdir()) == ["photo.png"]


def test_image_url_sends_the_url_not_a_file(client_venv, server, tmp_path):
    photo = image_bytes(width=48, height=32)

    class Photo(QuietHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

    out = tmp_path / "depth.npy"
    with local_http_server(Photo) as url:
        done = sam3d_client(client_venv, server, "depth", "--image-url", f"{url}/photo.png",
                            "--processing-res", 64, "-o", out)
    assert done.returncode == 0, done.stderr
    assert np.load(out).shape == (32, 48)  # the served photo's size


def test_ctrl_c_while_queued_leaves_the_job_and_says_how_to_resume(client_venv, slow_server,
                                                                    photo, tmp_path):
    blocking_job(slow_server, photo)
    out = tmp_path / "model.glb"
    process, job_id, resume = started_client(client_venv, slow_server, "generate", photo,
                                             "-o", out, "--no-texture")
    assert resume == f"sam3d-client wait {job_id} -o {out}"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (f"interrupted: job {job_id} is queued on the server; "
                                       f"resume with: {resume}")
    assert job_status(slow_server, job_id) == "queued" and not out.exists()

    resumed = sam3d_client(client_venv, slow_server, *shlex.split(resume)[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert len(trimesh.load(out, file_type="glb", force="mesh").faces) > 0
    assert f"job {job_id}" in resumed.stdout


def test_ctrl_c_cancels_the_job_only_when_asked(client_venv, slow_server, photo, tmp_path):
    blocking_job(slow_server, photo)
    process, job_id, _ = started_client(client_venv, slow_server, "generate", photo, "-o",
                                        tmp_path / "model.glb", "--cancel-on-interrupt")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and "Traceback" not in stderr
    assert stderr.splitlines()[-1] == f"interrupted: job {job_id} cancelled"
    assert job_status(slow_server, job_id) == "cancelled"


def test_download_and_cancel_come_back_to_a_job(client_venv, slow_server, photo, tmp_path):
    client = Client(slow_server["url"], KEY)
    done = client.generate(photo, with_texture=False, output_format="stl")
    assert done.wait()["status"] == "completed"
    waiting = [blocking_job(slow_server, photo),
               client.generate(photo, with_texture=False).id]

    wrong = sam3d_client(client_venv, slow_server, "download", done.id, "-o",
                         tmp_path / "model.glb")
    assert wrong.returncode == 2 and f"name it {tmp_path}/model.stl" in wrong.stderr
    assert not (tmp_path / "model.glb").exists()
    fetched = sam3d_client(client_venv, slow_server, "download", done.id, cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    assert len(trimesh.load(tmp_path / "model.stl", file_type="stl").faces) > 0  # its name

    cancelled = sam3d_client(client_venv, slow_server, "cancel", waiting[1])
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert job_status(slow_server, waiting[1]) == "cancelled"
    again = sam3d_client(client_venv, slow_server, "cancel", done.id)
    assert again.returncode == 1 and "409: job is already completed" in again.stderr


def test_the_python_api_comes_back_to_a_job_by_its_id(server, photo, tmp_path, monkeypatch):
    client = Client(server["url"], api_key=KEY)
    job = client.depth(photo.read_bytes(), output="npy", processing_res=64)
    again = Client(server["url"], api_key=KEY).job(job.id)  # as another process would
    assert again.status()["job_id"] == job.id
    seen = []
    final = again.wait(on_update=seen.append)
    assert final["status"] == "completed" and seen[-1]["status"] == "completed"
    with pytest.raises(OutputPathError, match=r"is a \.npy file; name it .*depth\.npy"):
        again.download(tmp_path / "depth.png")
    assert np.load(again.download(tmp_path / "mine.npy")).shape == (60, 80)
    monkeypatch.chdir(tmp_path)
    assert again.download().name == "depth.npy"  # the server's name
    with pytest.raises(ServerError, match="409: job is already completed") as refused:
        job.cancel()
    assert refused.value.status == 409
    with pytest.raises(ValueError, match="exactly one"):
        client.depth(photo, image_url="http://example.com/photo.png")


def test_the_python_api_shows_the_mask_then_sends_it(server, photo):
    client = Client(server["url"], api_key=KEY)
    answer = client.segment(photo)
    assert (answer["source"], answer["width"], answer["height"]) == ("center", 80, 60)
    assert Image.open(io.BytesIO(answer["mask"])).size == (80, 60)
    assert client.generate(photo, mask=answer["mask"], output_format="ply").wait()[
        "status"] == "completed"


def video_zip(path, task):
    """The frames of a video job's zip: its <task>.npz, beside a <task>.mp4 that decodes."""
    import av

    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == [f"{task}.mp4", f"{task}.npz"]
        with av.open(io.BytesIO(archive.read(f"{task}.mp4"))) as movie:
            decoded = sum(1 for _ in movie.decode(video=0))
        frames = np.load(io.BytesIO(archive.read(f"{task}.npz")))["frames"]
    assert decoded == len(frames)
    return frames


def test_depth_of_a_video_file_writes_the_zip_of_its_maps(client_venv, server, tmp_path):
    clip = tmp_path / "clip.MP4"  # a video by its suffix, whatever its case
    clip.write_bytes(make_video())
    done = sam3d_client(client_venv, server, "depth", clip, "--processing-res", "32",
                        cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert video_zip(tmp_path / "depth_video.zip", "depth").shape == (
        VIDEO_FRAMES, VIDEO_HEIGHT, VIDEO_WIDTH)
    assert f'"frames": {VIDEO_FRAMES}' in done.stdout
    for refused, says in ((["--output", "npy"], "--output does not apply to a video"),
                          (["-o", tmp_path / "depth.png"],
                           f"{tmp_path / 'depth.png'}: a video's result (its depth maps as mp4 "
                           f"and npz, zipped) is a .zip file; name it {tmp_path / 'depth.zip'}")):
        answer = sam3d_client(client_venv, server, "depth", clip, *refused)
        assert answer.returncode == 2 and says in answer.stderr, answer.stderr


def test_the_python_api_submits_a_normal_job(server, photo, tmp_path):
    job = Client(server["url"], api_key=KEY).normal(photo, output="npy", processing_res=64)
    final = job.wait()
    assert final["status"] == "completed" and final["range"].startswith("each channel in [0, 1]")
    normals = np.load(job.download(tmp_path / "normals.npy"))
    assert normals.shape == (60, 80, 3) and normals.dtype == np.float32


def test_the_python_api_submits_a_video_job(server, tmp_path):
    job = Client(server["url"], api_key=KEY).normal(video=make_video(), processing_res=32)
    assert job.wait()["frames"] == VIDEO_FRAMES
    assert video_zip(job.download(tmp_path / "normal_video.zip"), "normal").shape[0] == \
        VIDEO_FRAMES
    with pytest.raises(ValueError, match="exactly one source"):
        Client(server["url"]).depth(b"photo", video=b"clip")


@pytest.fixture
def stub():
    """A server answering POSTs with scripted (status, headers); the statuses it gave."""
    answers, seen = [], []

    class Handler(QuietHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            status, headers = answers.pop(0)
            seen.append(status)
            self.send_response(status)
            for name, value in {**headers, "Content-Type": "application/json"}.items():
                self.send_header(name, value)
            self.end_headers()
            body = {"error": "no room"} if status == 503 else {"job_id": "x"}
            self.wfile.write(json.dumps(body).encode())

    with local_http_server(Handler) as url:
        yield url, answers, seen


def test_a_full_queue_is_retried_after_its_retry_after(stub, monkeypatch):
    """503 twice, then accepted: the client waits Retry-After between tries."""
    from sam3d_client import Client

    url, answers, seen = stub
    answers += [(503, {"Retry-After": "1"}), (503, {"Retry-After": "1"}), (202, {})]
    sleeps = []
    monkeypatch.setattr("sam3d_client.time.sleep", sleeps.append)
    assert Client(url).submit("depth", {"image": "x"}) == {"job_id": "x"}
    assert seen == [503, 503, 202] and sleeps == [1.0, 1.0]


def test_a_503_without_retry_after_is_an_answer_not_a_wait(stub, monkeypatch):
    """The model is not served there: waiting would not help."""
    from sam3d_client import Client, ServerError

    url, answers, seen = stub
    answers += [(503, {}), (202, {})]
    monkeypatch.setattr("sam3d_client.time.sleep", pytest.fail)
    with pytest.raises(ServerError, match="503: no room"):
        Client(url).submit("generate", {"image": "x"})
    assert seen == [503]


def test_the_readme_documents_every_command_and_option():
    """client/README.md names each subcommand and option the parser has, and each method of
    the Python API's job handle."""
    from sam3d_client import Job
    from sam3d_client.cli import parser

    readme = (ROOT / "client" / "README.md").read_text()
    main_parser = parser()
    commands = next(action for action in main_parser._actions
                    if isinstance(action, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        assert f"sam3d-client {name}" in readme
        for action in command._actions:
            assert all(option in readme for option in action.option_strings
                       if option.startswith("--") and option != "--help"), action
    assert all(option in readme for option in ("--url", "--api-key", "--version"))
    for method in ("status", "wait", "download", "cancel"):
        assert f".{method}(" in readme and callable(getattr(Job, method))
    assert all(f"client.{name}(" in readme for name in ("generate", "depth", "normal", "segment",
                                                   "job"))


# -- a client that trusts no server (issue 31 items 14-15, issue 32 item 6) ---------------

JOB = "a" * 32


@pytest.fixture
def liar(monkeypatch, tmp_path):
    """A loopback server answering each (method, path) as scripted: (status, headers, body)
    or a function of the handler. Runs the CLI in-process, in tmp_path/cwd."""
    routes: dict = {}

    class Handler(QuietHandler):
        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            route = routes.get((self.command, self.path.split("?")[0]))
            if callable(route):
                return route(self)
            status, headers, body = route or (404, {"Content-Type": "text/html"},
                                              b"<html><body>Not Found</body></html>")
            self.send_response(status)
            headers = {"Content-Type": "application/json", **headers}
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = answer

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("SAM3D_API_KEY", raising=False)
    with local_http_server(Handler) as url:
        def run(*args):
            from sam3d_client.cli import main
            return main(["--url", url, *map(str, args)])
        yield {"url": url, "routes": routes, "run": run, "cwd": cwd}


def one_line_error(capsys, url) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert url in err, err
    return err


def result_route(liar, headers, body=b"glTF-bytes"):
    liar["routes"][("GET", f"/job/{JOB}/download")] = (
        200, {"Content-Type": "application/octet-stream", **headers}, body)


@pytest.mark.parametrize("disposition, written", [
    ("attachment; filename=.bashrc", "sam3d-" + JOB + ".bin"),
    ("attachment; filename=.model.glb", "model.glb"),
    ('attachment; filename="../../etc/evil.glb"', "evil.glb"),
    ('attachment; filename="..\\\\..\\\\evil.glb"', "evil.glb"),
    ("attachment; filename*=UTF-8''%2E%2E%2Fbad%20name%3B.ply", "bad_name_.ply"),
    ("attachment; filename=\"$(reboot)`x`.glb\"", "reboot_x_.glb"),
    (None, "sam3d-" + JOB + ".bin"),
])
def test_download_without_o_writes_only_a_safe_name_here(liar, capsys, disposition, written):
    """Issue 31 item 14: a server answering `filename=.bashrc` replaced the user's .bashrc."""
    bashrc = liar["cwd"] / ".bashrc"
    bashrc.write_text("mine")
    result_route(liar, {"Content-Disposition": disposition} if disposition else {})
    assert liar["run"]("download", JOB) == 0, capsys.readouterr().err
    assert sorted(path.name for path in liar["cwd"].iterdir()) == sorted([".bashrc", written])
    assert (liar["cwd"] / written).read_bytes() == b"glTF-bytes"
    assert bashrc.read_text() == "mine"


def test_download_without_o_never_replaces_a_file(liar, capsys):
    mine = liar["cwd"] / "model.glb"
    mine.write_text("mine")
    result_route(liar, {"Content-Disposition": "attachment; filename=model.glb"})
    assert liar["run"]("download", JOB) == 2
    err = capsys.readouterr().err
    assert "model.glb already exists" in err and "-o" in err and "Traceback" not in err
    assert mine.read_text() == "mine" and [p.name for p in liar["cwd"].iterdir()] == ["model.glb"]
    assert liar["run"]("download", JOB, "-o", "model.glb") == 0  # named: the user's choice
    assert mine.read_bytes() == b"glTF-bytes"


def test_a_download_cut_short_is_one_line_and_leaves_no_file(liar, capsys):
    def cut(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.send_header("Content-Disposition", "attachment; filename=model.glb")
        handler.end_headers()
        handler.wfile.write(b"x" * 10)
        handler.wfile.flush()
        handler.close_connection = True

    liar["routes"][("GET", f"/job/{JOB}/download")] = cut
    assert liar["run"]("download", JOB) != 0
    err = one_line_error(capsys, liar["url"])
    assert "nothing was written" in err
    assert list(liar["cwd"].iterdir()) == []


@pytest.mark.parametrize("route, answer, command, words", [
    (("POST", "/depth"), (202, {}, b"{}"), ["depth", "photo.png"], "without 'job_id'"),
    (("POST", "/depth"), (202, {}, b'{"job_id": "../../x"}'), ["depth", "photo.png"],
     "job id that is not one"),
    (("GET", f"/job/{JOB}"), (200, {}, b"[1, 2]"), ["status", JOB], "a JSON list"),
    (("GET", f"/job/{JOB}"), (200, {}, b"{\"status\": "), ["status", JOB],
     "something other than this server's JSON"),
    (("GET", f"/job/{JOB}"), (404, {"Content-Type": "text/html"}, b"<!DOCTYPE html><p>nope"),
     ["status", JOB], "got an HTML 404 from"),
    (("GET", "/health"), (200, {"Content-Type": "text/html"}, b"<html>router</html>"),
     ["health"], "got an HTML 200 from"),
    (("GET", "/health"), (200, {}, b'"ok"'), ["health"], "a JSON str"),
    (("DELETE", f"/job/{JOB}"), (200, {}, b"null"), ["cancel", JOB], "other than this"),
    (("GET", f"/job/{JOB}/events"), (200, {"Content-Type": "text/event-stream"},
                                     b"data: {not json\n\n"), ["wait", JOB], "sent an event"),
])
def test_every_malformed_answer_is_one_line_naming_the_url(liar, capsys, route, answer,
                                                           command, words):
    """Issue 31 item 15 and issue 32 item 6: never a traceback, always where it came from."""
    image_bytes_path = liar["cwd"] / "photo.png"
    image_bytes_path.write_bytes(image_bytes())
    liar["routes"][route] = answer
    assert liar["run"](*command) in (1, 2)
    err = one_line_error(capsys, liar["url"])
    assert words in err, err


def test_a_missing_photo_is_named_plainly(liar, capsys):
    assert liar["run"]("depth", "nothere.jpg") == 2
    assert capsys.readouterr().err == "error: nothere.jpg: no such file\n"
    assert liar["run"]("generate", "--mask", "nomask.png", "nothere.jpg") == 2
    assert capsys.readouterr().err == "error: nothere.jpg: no such file\n"


def test_a_401_says_where_the_key_goes(liar, capsys, monkeypatch):
    (liar["cwd"] / "photo.png").write_bytes(image_bytes())
    liar["routes"][("POST", "/depth")] = (401, {}, b'{"error": "Unauthorized: send the key"}')
    assert liar["run"]("depth", "photo.png") == 1
    err = capsys.readouterr().err
    assert "401: Unauthorized" in err and "SAM3D_API_KEY" in err and "--api-key" in err
    monkeypatch.setenv("SAM3D_API_KEY", "wrong")
    assert liar["run"]("depth", "photo.png") == 1
    assert "was refused" in capsys.readouterr().err


def test_health_notices_are_printed_after_the_result(liar, capsys):
    """Issue 32 item 6: a depth map from test weights is noise; the user is told so."""
    (liar["cwd"] / "photo.png").write_bytes(image_bytes())
    routes = liar["routes"]
    routes[("POST", "/depth")] = (202, {}, json.dumps({"job_id": JOB, "position": 0}).encode())
    routes[("GET", f"/job/{JOB}")] = (200, {}, json.dumps(
        {"job_id": JOB, "status": "completed", "processing_time": 0.5}).encode())
    result_route(liar, {"Content-Disposition": "attachment; filename=depth.png"}, b"png")
    routes[("GET", "/health")] = (200, {}, json.dumps({"notices": {
        "lotus": "lotus: test weights (tiny checkpoints): the maps are noise",
        "sam3d": "not this job's model", "journal": "not about this result"}}).encode())
    assert liar["run"]("depth", "photo.png", "-o", "out.png") == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("out.png (3 bytes")
    assert captured.err.splitlines()[-1] == \
        "note (lotus): lotus: test weights (tiny checkpoints): the maps are noise"
    assert "not this job's model" not in captured.err and "journal" not in captured.err


def test_the_clients_output_choices_are_the_model_tables():
    """The client is a package of its own (installed without the server, so it cannot import
    the table); its `--format`/`--output` choices and the suffix it saves each as must be
    the model table's (pipelines/table.py): a format added to a model without the client
    learning it fails here, not in a user's hands."""
    import typing

    from pipelines.table import SPECS, endpoints
    from sam3d_client import DEPTH_SUFFIXES, GENERATE_SUFFIXES, NORMAL_SUFFIXES

    for path, field, client in (("generate", "output_format", GENERATE_SUFFIXES),
                                ("depth", "output", DEPTH_SUFFIXES),
                                ("normal", "output", NORMAL_SUFFIXES)):
        choices = typing.get_args(endpoints()[path].request.model_fields[field].annotation)
        prefix = "" if path == "generate" else f"{path} "
        served = {fmt.name: fmt.suffix for spec in SPECS.values() for fmt in spec.outputs}
        assert client == {choice: served[prefix + choice] for choice in choices}, path
