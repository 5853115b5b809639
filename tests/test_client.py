"""`sam3d-client` against the real server (tiny Lotus-D, SAM 3D stand-in), installed on its own
in a venv without torch, as a user on any machine would install it."""

import json
import os
import subprocess
import venv

import numpy as np
import pytest
import trimesh
from PIL import Image

from conftest import ROOT, QuietHandler, image_bytes, local_http_server, running_server

KEY = "client-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoints):
    with running_server(tmp_path_factory.mktemp("client"), checkpoints, API_KEY=KEY) as started:
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


def sam3d_client(client_venv, server, *args, key=KEY, cwd=None):
    env = {**os.environ, "SAM3D_URL": server["url"], "SAM3D_API_KEY": key}
    return subprocess.run([client_venv / "bin" / "sam3d-client", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=cwd)


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
    assert "100%" in done.stderr and str(out) in done.stdout  # the bar, then the file


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


def test_depth_writes_the_depth_file(client_venv, server, photo, tmp_path):
    out = tmp_path / "depth.npy"
    done = sam3d_client(client_venv, server, "depth", photo, "-o", out)
    assert done.returncode == 0, done.stderr
    assert np.load(out).shape == (60, 80)
    assert '"min"' in done.stdout


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
    nowhere = subprocess.run([client_venv / "bin" / "sam3d-client", "--url",
                              "http://127.0.0.1:9", "health"], capture_output=True, text=True)
    assert nowhere.returncode == 2 and "cannot reach" in nowhere.stderr


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
