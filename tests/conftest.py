import base64
import contextlib
import http.server
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_tiny_checkpoints import make_lotus  # noqa: E402

from app import create_app  # noqa: E402
from pipelines import PipelineRegistry  # noqa: E402
from settings import load_settings  # noqa: E402
from stand_ins import ScriptedPipeline  # noqa: E402

SAM3D_STAND_IN = Path(__file__).resolve().parent / "sam3d_stand_in"
# What a real checkpoint's pipeline.yaml says where the stand-in reads it.
SAM3D_CONFIG = """_target_: sam3d_objects.pipeline.inference_pipeline_pointmap.InferencePipelinePointMap
decode_formats: [gaussian, mesh]
ss_inference_steps: 25
slat_inference_steps: 25
"""


def sam3d_checkpoints(folder: Path) -> Path:
    """A checkpoints folder whose pipeline.yaml the SAM 3D stand-in loads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline.yaml").write_text(SAM3D_CONFIG)
    return folder


def image_bytes(width=64, height=48, mode="RGB", fmt="PNG", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def image_b64(**kwargs) -> str:
    return base64.b64encode(image_bytes(**kwargs)).decode()


VIDEO_FRAMES, VIDEO_WIDTH, VIDEO_HEIGHT, VIDEO_FPS = 12, 64, 48, 24


class Unseekable(io.RawIOBase):
    """Where a recorder writes as it goes (a browser's MediaRecorder, a pipe): FFmpeg cannot
    go back to put the length in the header."""

    def __init__(self):
        super().__init__()
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, chunk):
        self.data += chunk
        return len(chunk)

    def getvalue(self) -> bytes:
        return bytes(self.data)


def make_video(frames=VIDEO_FRAMES, width=VIDEO_WIDTH, height=VIDEO_HEIGHT,
               container="mp4", live=False, faststart=False) -> bytes:
    """A moving gradient, H.264 (mp4) or VP9 (webm), at VIDEO_FPS; `live`: written as it is
    recorded; `faststart`: an mp4 with its index (moov) before the data, as a camera or a
    web export writes it (FFmpeg moves it in a second pass over a real file)."""
    import tempfile

    import av  # the server's; a conftest without it still serves the other tests

    if faststart:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "video.mp4"
            with av.open(str(path), "w", format="mp4",
                         options={"movflags": "faststart"}) as out:
                _gradient(out, "libx264", frames, width, height)
            return path.read_bytes()
    buffer = Unseekable() if live else io.BytesIO()
    codec = "libx264" if container == "mp4" else "libvpx-vp9"
    with av.open(buffer, mode="w", format=container) as out:
        _gradient(out, codec, frames, width, height)
    return buffer.getvalue()


def _gradient(out, codec: str, frames: int, width: int, height: int) -> None:
    import av

    stream = out.add_stream(codec, rate=Fraction(VIDEO_FPS))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    y, x = np.mgrid[0:height, 0:width]
    for index in range(frames):
        rgb = np.stack([(x * 4 + index * 9) % 256, (y * 5) % 256,
                        np.full_like(x, index * 20 % 256)], -1).astype(np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Path:
    """A checkpoints folder with the tiny Lotus-D (real architecture, random weights)."""
    root = tmp_path_factory.mktemp("checkpoints")
    make_lotus(root)
    return root


@pytest.fixture(scope="session")
def checkpoints_with_normals(tmp_path_factory, checkpoints) -> Path:
    """`checkpoints` and the tiny Lotus-D normal model (normal-d-v1-1): a server that serves
    depth and surface normals."""
    root = tmp_path_factory.mktemp("checkpoints-normals")
    shutil.copytree(checkpoints, root, dirs_exist_ok=True)
    make_lotus(root, 1, "normal-d-v1-1")
    return root


def wait_until(predicate, timeout=30.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def model_processes(root: int) -> dict[int, str]:
    """The live model processes under `root` (a gunicorn master or its HTTP worker): pid ->
    the name each gives itself (`lotus@cpu:0`, its /proc/PID/comm). The open /health does not
    list their pids (issue 31 item 13); an operator's `ps -o comm` tells them apart so."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z":  # a killed one not yet reaped keeps its name
            parents[int(stat.parent.name)] = int(fields[1])
    found = {}
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor is not None and ancestor != root:
            ancestor = parents.get(ancestor)
        if ancestor == root:
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if "@" in name:
                found[pid] = name
    return found


def model_process(root: int, prefix: str, other_than: int | None = None,
                  timeout: float = 60.0) -> int:
    """The pid of the model process named `prefix...` (`lotus@`, `sam3d@cpu:0`) under
    `root`, once there is one (other than `other_than`: the one that replaced it)."""
    return wait_until(lambda: next((pid for pid, name in model_processes(root).items()
                                    if name.startswith(prefix) and pid != other_than), None),
                      timeout=timeout, interval=0.05)


@pytest.fixture
def make_client(tmp_path):
    """make_client(pipelines={name: pipeline}, **settings) -> Flask test client, models ready."""
    apps = []

    def factory(pipelines=None, wait=True, **overrides):
        overrides.setdefault("output_dir", tmp_path / "outputs")
        settings = load_settings(**overrides)
        registry = PipelineRegistry(pipelines if pipelines is not None else {})
        app = create_app(settings, registry=registry)
        apps.append(app)
        client = app.test_client()
        if wait:
            wait_until(lambda: not registry.loading)
        return client

    yield factory
    for app in apps:
        app.extensions["queue"].stop()


@pytest.fixture
def scripted():
    pipeline = ScriptedPipeline()
    yield pipeline
    pipeline.release.set()


@contextlib.contextmanager
def running_server(work: Path, checkpoints: Path, new_session: bool = False, **env):
    """The real server as the image starts it (gunicorn -c gunicorn.conf.py) on a loopback
    port (PORT in `env`: that one), with the tiny Lotus checkpoints in `checkpoints` and the
    SAM 3D stand-in. Yields url, log path, folder and the gunicorn master (its pid and
    process); `new_session`: in a process group of its own, as a terminal starts it."""
    for folder in (path for path in checkpoints.iterdir() if path.is_dir()):
        shutil.copytree(folder, work / "checkpoints" / folder.name,
                        dirs_exist_ok=True)  # a second start on the same folder is a restart
    sam3d_checkpoints(work / "checkpoints")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(env.get("PORT") or sock.getsockname()[1])
    environment = {**os.environ, "PORT": str(port), "CHECKPOINTS_DIR": str(work / "checkpoints"),
                   "OUTPUT_DIR": str(work / "outputs"), "SAM3D_SOURCE_DIR": str(SAM3D_STAND_IN),
                   "SAM3D_VRAM_GIB": "40", "U2NET_HOME": str(work / "no-u2net"),
                   "PYTHONUNBUFFERED": "1", **env}
    if "API_KEY" not in env:
        environment.pop("API_KEY", None)
    log_path = work / "server.log"
    with open(log_path, "w+") as log:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
                                   cwd=ROOT, env=environment, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=new_session)
        url = f"http://127.0.0.1:{port}"

        def ready():
            assert process.poll() is None, log_path.read_text()
            try:
                return requests.get(f"{url}/health", timeout=1).json()["model_loaded"]
            except requests.RequestException:
                return False

        try:
            wait_until(ready, timeout=120, interval=0.2)
            yield {"url": url, "log": log_path, "work": work, "pid": process.pid,
                   "process": process}
        finally:
            process.terminate()
            process.wait(30)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A test server's handler: subclasses add do_GET / do_POST; nothing is logged."""

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def local_http_server(handler: type[QuietHandler]):
    """A loopback HTTP server with `handler`, in a thread: yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs of its own at `folder` (root only: skips the test otherwise), unmounted after:
    a small disk to fill, or a read-only one."""
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs (the fallback, MIN_FREE_DISK_MB, is tested "
                    "in test_operations.py)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def slow_depth_job(base: str, processing_res: int = 1536, timeout: float = 30) -> str:
    """A depth job that runs a while on a CPU (seconds at 1536, minutes at 3072 on one
    thread): a photo processed at twice its size, the most upscaling served. Its id, once
    it is running."""
    photo = base64.b64encode(image_bytes(width=processing_res // 2,
                                         height=processing_res * 3 // 8)).decode()
    job = requests.post(f"{base}/depth", json={"image": photo, "processing_res": processing_res},
                        timeout=60).json()["job_id"]
    wait_until(lambda: requests.get(f"{base}/job/{job}", timeout=5).json()["status"]
               == "processing", timeout=timeout)
    return job
