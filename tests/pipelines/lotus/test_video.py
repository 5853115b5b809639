"""Video through /depth and /normal: a zip of the colourised mp4 and the raw frames, each
Lotus-D frame the map its own image request gives, Lotus-G's frames with upstream's latent
carried from frame to frame; limits refused from the container's metadata; cancellable."""

from __future__ import annotations

import base64
import io
import threading
import zipfile
from unittest import mock

import av
import numpy as np
import pytest

from conftest import VIDEO_FPS as FPS, VIDEO_FRAMES as FRAMES, VIDEO_HEIGHT as HEIGHT, \
    VIDEO_WIDTH as WIDTH, QuietHandler, image_b64, local_http_server, make_video, wait_until
from lotus_reference import upstream_lotus_g_video
from pipelines.base import JobCancelled
from pipelines.lotus.catalog import LOTUS_MODELS
from pipelines.lotus import DepthRequest, Lotus
from pipelines.video import VideoLimits, probe_video
from test_app import poll
from test_lotus_models import parts, photo

def decoded_frames(data: bytes) -> list:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


def png_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def submit_video(client, data: bytes, **fields):
    return client.post("/depth", json={"video": base64.b64encode(data).decode(),
                                       "processing_res": 64, **fields})


def test_video_gives_one_depth_frame_per_input_frame_equal_to_each_frames_image(
        make_client, checkpoints):
    client = make_client({"lotus": Lotus(checkpoints)})
    data = make_video()
    accepted = submit_video(client, data, seed=7)
    assert accepted.status_code == 202, accepted.get_json()
    status = poll(client, accepted.get_json()["job_id"], timeout=120)
    assert status["status"] == "completed", status
    assert status["frames"] == FRAMES and (status["width"], status["height"]) == (WIDTH, HEIGHT)
    download = client.get(status["download_url"])
    assert download.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.data)) as archive:
        assert sorted(archive.namelist()) == ["depth.mp4", "depth.npz"]
        raw = np.load(io.BytesIO(archive.read("depth.npz")))
        movie = archive.read("depth.mp4")
    assert raw["frames"].shape == (FRAMES, HEIGHT, WIDTH) and raw["frames"].dtype == np.float32
    assert float(raw["fps"]) == FPS
    colour = decoded_frames(movie)
    assert len(colour) == FRAMES and colour[0].size == (WIDTH, HEIGHT)
    # Each frame against /depth/sync on that frame alone (the same decoded pixels, the same
    # seed): batched CPU convolutions differ from single ones in the last float32 bits.
    for index, frame in enumerate(decoded_frames(data)):
        single = client.post("/depth/sync", json={"image": png_b64(frame), "output": "npy",
                                                  "processing_res": 64, "seed": 7}).get_json()
        expected = np.load(io.BytesIO(base64.b64decode(single["image_base64"])))
        np.testing.assert_allclose(raw["frames"][index], expected, atol=1e-5, rtol=0,
                                   err_msg=f"frame {index}")


@pytest.mark.parametrize("limit, words", [
    ({"video_max_frames": FRAMES - 1}, f"has {FRAMES} frames; the limit is {FRAMES - 1}"),
    ({"video_max_seconds": 0.25}, "s long; the limit is 0.25 s"),
    ({"video_max_side": WIDTH - 1}, f"is {WIDTH}x{HEIGHT} pixels"),
    ({"video_max_bytes": 1024}, "bytes; the limit is 1024"),
])
def test_a_video_over_a_limit_is_a_400_before_any_frame_is_decoded(
        make_client, checkpoints, tmp_path, monkeypatch, limit, words):
    import pipelines.lotus.pipeline

    def no_decoding(*args):
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(pipelines.lotus.pipeline, "decode_frames", no_decoding)
    client = make_client({"lotus": Lotus(checkpoints)}, **limit)
    data = make_video() if "video_max_bytes" not in limit else make_video(frames=FRAMES * 4)
    response = submit_video(client, data)
    assert response.status_code == 400 and words in response.get_json()["error"], \
        response.get_json()
    stats = client.get("/queue").get_json()
    assert stats["queued"] == stats["processing"] == 0
    server_files = {".server.lock", ".jobs.sqlite3", ".jobs.sqlite3-wal", ".jobs.sqlite3-shm"}
    assert not [path for path in (tmp_path / "outputs").rglob("*") if path.is_file()
                and path.name not in server_files]  # no result, no kept input


@pytest.mark.parametrize("data", [base64.b64decode(image_b64()), b"\x00\x00\x00\x18ftypmp42junk"])
def test_what_is_not_a_video_is_a_400(make_client, checkpoints, data):
    client = make_client({"lotus": Lotus(checkpoints)})
    response = submit_video(client, data)
    assert response.status_code == 400
    assert "not a supported video" in response.get_json()["error"]


def test_video_that_is_not_base64_is_a_400_naming_the_video(make_client, checkpoints):
    client = make_client({"lotus": Lotus(checkpoints)})
    response = client.post("/depth", json={"video": "not base64!"})
    assert response.status_code == 400 and response.get_json()["error"] == \
        "video is not valid base64"


def test_the_sync_form_refuses_a_video_and_names_the_async_one(make_client, checkpoints):
    client = make_client({"lotus": Lotus(checkpoints)})
    response = client.post("/depth/sync", json={"video": base64.b64encode(make_video()).decode()})
    assert response.status_code == 400 and response.get_json()["error"] == (
        "video: POST /depth takes videos (a job to poll, then /job/<id>/download); "
        "/depth/sync answers images only")


def test_webm_is_served(make_client, checkpoints):
    client = make_client({"lotus": Lotus(checkpoints)})
    accepted = submit_video(client, make_video(frames=3, container="webm"))
    assert accepted.status_code == 202, accepted.get_json()
    status = poll(client, accepted.get_json()["job_id"], timeout=120)
    assert status["status"] == "completed" and status["frames"] == 3, status


def test_a_webm_cut_short_is_a_400_not_a_shorter_video(make_client, checkpoints):
    """FFmpeg decodes a truncated webm up to the cut without an error (a truncated mp4 fails
    to open or to decode): the missing end is told from the size its Segment declares."""
    client = make_client({"lotus": Lotus(checkpoints)})
    data = make_video(frames=FRAMES * 4, container="webm")
    response = submit_video(client, data[:len(data) // 2])
    assert response.status_code == 400 and response.get_json()["error"] == (
        f"video is cut short: {len(data) // 2} of the {len(data)} bytes its container declares")


def test_a_webm_recorded_live_with_no_length_in_its_header_is_served(make_client, checkpoints):
    """A browser's MediaRecorder writes no Duration (nor any frame count): its frames are
    counted from the packets, still before decoding."""
    client = make_client({"lotus": Lotus(checkpoints)})
    accepted = submit_video(client, make_video(frames=5, container="webm", live=True))
    assert accepted.status_code == 202, accepted.get_json()
    status = poll(client, accepted.get_json()["job_id"], timeout=120)
    assert status["status"] == "completed" and status["frames"] == 5, status


def test_a_live_webm_over_the_frame_limit_is_a_400_before_decoding(make_client, checkpoints,
                                                                  monkeypatch):
    import pipelines.lotus.pipeline

    monkeypatch.setattr(pipelines.lotus.pipeline, "decode_frames", mock.Mock(side_effect=AssertionError))
    client = make_client({"lotus": Lotus(checkpoints)}, video_max_frames=4)
    response = submit_video(client, make_video(frames=5, container="webm", live=True))
    assert response.status_code == 400
    assert response.get_json()["error"] == "video has more than 4 frames; the limit is 4"


class VideoHost(QuietHandler):
    def do_GET(self):
        body = make_video(frames=FRAMES * 4)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("path, words", [
    ("/clip.mp4", "video_url body is larger than 1024 bytes"),
    (None, "video_url must be an http or https URL"),
])
def test_a_video_url_that_fails_names_video_url(make_client, checkpoints, path, words):
    client = make_client({"lotus": Lotus(checkpoints)}, video_max_bytes=1024,
                         allow_private_urls=True)
    with local_http_server(VideoHost) as host:
        url = f"{host}{path}" if path else "ftp://example.com/clip.mp4"
        response = client.post("/depth", json={"video_url": url, "processing_res": 64})
    assert response.status_code == 400 and response.get_json()["error"] == words


class HeldAtSecondBatch(Lotus):
    """Lotus-D whose second forward pass waits until the test has cancelled the job."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls, self.reached, self.release = 0, threading.Event(), threading.Event()

    def _predict(self, jobs, progress):
        self.calls += 1
        if self.calls == 2:
            self.reached.set()
            self.release.wait(30)
        return super()._predict(jobs, progress)


def test_cancelling_mid_video_stops_it_between_batches(make_client, checkpoints, tmp_path):
    pipeline = HeldAtSecondBatch(checkpoints)
    client = make_client({"lotus": pipeline}, model_process=False)
    job_id = submit_video(client, make_video()).get_json()["job_id"]
    assert pipeline.reached.wait(60)
    running = client.get(f"/job/{job_id}").get_json()
    assert running["stage"] == "frame 4 of 12", running
    assert client.delete(f"/job/{job_id}").status_code == 202
    pipeline.release.set()
    assert poll(client, job_id)["status"] == "cancelled"
    wait_until(lambda: not any((tmp_path / "outputs").glob(f"*{job_id}*")))
    assert pipeline.calls == 2  # 12 frames in batches of 4: the third never ran


@pytest.fixture(scope="module")
def lotus_g(tmp_path_factory):
    """The two tiny Lotus-G checkpoints, loaded."""
    from make_tiny_checkpoints import make_lotus

    folder = tmp_path_factory.mktemp("lotus-g")
    for seed, name in enumerate(("depth-g-v2-1-disparity", "normal-g-v1-1")):
        make_lotus(folder, seed + 2, name)
    lotus = Lotus(folder)
    lotus.load()
    return lotus


@pytest.mark.parametrize("name", ["depth-g-v2-1-disparity", "normal-g-v1-1"])
def test_a_lotus_g_video_equals_upstreams_loop_with_the_latent_carried(make_client, lotus_g,
                                                                       name):
    """Each frame's map, bit for bit, as upstream's lotus_video computes it frame after
    frame (tests/lotus_reference.py), on the frames PyAV decodes, with the request's seed."""
    task = LOTUS_MODELS[name].task
    client = make_client({"lotus": Lotus(lotus_g.checkpoints_dir)})
    data = make_video(frames=5)
    accepted = client.post(f"/{task}", json={"video": base64.b64encode(data).decode(),
                                             "processing_res": 64, "model": name, "seed": 7})
    assert accepted.status_code == 202, accepted.get_json()
    status = poll(client, accepted.get_json()["job_id"], timeout=120)
    assert status["status"] == "completed" and status["frames"] == 5, status
    with zipfile.ZipFile(io.BytesIO(client.get(status["download_url"]).data)) as archive:
        raw = np.load(io.BytesIO(archive.read(f"{task}.npz")))["frames"]
        assert len(decoded_frames(archive.read(f"{task}.mp4"))) == 5
    expected = upstream_lotus_g_video(*parts(lotus_g.checkpoints_dir, name),
                                      decoded_frames(data), processing_res=64, seed=7, task=task)
    np.testing.assert_array_equal(raw, np.stack(expected))


def test_a_lotus_g_frame_depends_on_the_frame_before_it(lotus_g):
    """The carry cannot silently be dropped: another first frame changes the second frame's
    map, and the second frame differs from that frame run alone; the first frame is the
    image request of that frame (the same seed rule)."""
    first, other_first, second = photo(64, 48, 0), photo(64, 48, 1), photo(64, 48, 2)
    model = lotus_g.models["depth-g-v2-1-disparity"]
    video = list(model.video([first, second], seed=3, processing_res=64))
    other = list(model.video([other_first, second], seed=3, processing_res=64))
    assert not np.allclose(video[1], other[1], atol=1e-4)
    alone = model([second], processing_res=64, generator=model.generators([3]),
                  noise_generator=model.generators([3]))[0]
    assert not np.allclose(video[1], alone, atol=1e-4)
    request = DepthRequest(image="x", model="depth-g-v2-1-disparity", processing_res=64, seed=3)
    np.testing.assert_array_equal(video[0].mean(axis=-1), lotus_g.predict(request, first))


def test_a_lotus_g_video_reports_each_frame_and_stops_between_frames(lotus_g, tmp_path):
    """Cancelled at frame 2 of 5 (the progress callback raises, as the queue's does): no
    third frame goes through the model."""
    video = probe_video(make_video(frames=5), VideoLimits())
    request = DepthRequest(image="x", model="depth-g-v2-1-disparity", processing_res=64)
    model = lotus_g.models[request.model]
    stages = []

    def progress(stage, fraction):
        stages.append(stage)
        if stage == "frame 2 of 5":
            raise JobCancelled()

    with mock.patch.object(model, "annotate", wraps=model.annotate) as annotate:
        with pytest.raises(JobCancelled):
            lotus_g.run_video(request, video, tmp_path / "out", progress)
        calls = annotate.call_count
    assert stages == ["decoding", "frame 1 of 5", "frame 2 of 5"] and calls == 2
    assert not list(tmp_path.iterdir())


def test_normals_of_a_video_are_a_zip_of_an_mp4_and_the_rgb_frames(make_client, tmp_path):
    from make_tiny_checkpoints import make_lotus

    make_lotus(tmp_path / "n", name="normal-d-v1-1")
    client = make_client({"lotus": Lotus(tmp_path / "n")})
    accepted = client.post("/normal", json={"video": base64.b64encode(make_video(frames=3))
                                            .decode(), "processing_res": 64})
    assert accepted.status_code == 202, accepted.get_json()
    status = poll(client, accepted.get_json()["job_id"], timeout=120)
    assert status["status"] == "completed" and status["frame"].startswith("camera"), status
    with zipfile.ZipFile(io.BytesIO(client.get(status["download_url"]).data)) as archive:
        assert sorted(archive.namelist()) == ["normal.mp4", "normal.npz"]
        frames = np.load(io.BytesIO(archive.read("normal.npz")))["frames"]
        assert len(decoded_frames(archive.read("normal.mp4"))) == 3
    assert frames.shape == (3, HEIGHT, WIDTH, 3) and 0 <= frames.min() <= frames.max() <= 1


def test_a_video_cannot_ask_for_a_relief(make_client, checkpoints):
    """Nor for one lit by a normal model: told so at once, not first to ask for a glb."""
    client = make_client({"lotus": Lotus(checkpoints)})
    for fields in ({"output": "glb"}, {"output": "ply"}, {"normal_model": "normal-d-v1-1"},
                   {"output": "glb", "normal_model": "normal-d-v1-1"}):
        refused = submit_video(client, make_video(frames=3), **fields)
        assert refused.status_code == 400 and "a video's result is a zip" in refused.get_json()[
            "error"], (fields, refused.get_json())
    assert client.get("/queue").get_json()["queued"] == 0


# --- videos as phones make them, and videos made to hurt (issue 31, items 2, 7 and 8) ---

def faststart_mp4(frames=FRAMES, width=WIDTH, height=HEIGHT) -> bytes:
    """make_video's gradient with the index (moov) before the data, so a file cut short
    still opens and declares every frame."""
    return make_video(frames, width, height, faststart=True)


def sample_offsets(data: bytes) -> list[int]:
    with av.open(io.BytesIO(data)) as container:
        return [packet.pos for packet in container.demux(video=0) if packet.size]


def test_an_mp4_cut_at_a_sample_boundary_is_a_400_not_a_shorter_video(make_client,
                                                                      checkpoints):
    data = faststart_mp4()
    assert data.index(b"moov") < data.index(b"mdat")
    cut = data[:sample_offsets(data)[6]]  # six whole frames of twelve
    client = make_client({"lotus": Lotus(checkpoints)})
    response = submit_video(client, cut)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == (
        f"video is cut short: 6 of the {FRAMES} frames its container declares")
    stats = client.get("/queue").get_json()
    assert stats["queued"] == stats["processing"] == 0
    # inside a sample: the last one comes back short; only whole ones count
    inside = submit_video(client, data[:sample_offsets(data)[1] + 9])
    assert inside.status_code == 400
    assert "cut short: 1 of the" in inside.get_json()["error"]
    assert submit_video(client, data).status_code == 202  # the whole file is served


def test_the_runpod_handler_refuses_a_cut_mp4_too(tmp_path, checkpoints, monkeypatch):
    from handler import Handler
    from settings import load_settings

    monkeypatch.setenv("LOTUS_API_KEY", "worker-key-0123456789")
    lotus = Lotus(checkpoints)
    worker = Handler(load_settings(output_dir=tmp_path / "out"), {"lotus": lotus})
    data = faststart_mp4()
    answer = worker.handle({"id": "cut", "input": {
        "api_key": "worker-key-0123456789", "processing_res": 64,
        "video": base64.b64encode(data[:sample_offsets(data)[3]]).decode()}})
    assert answer["status"] == 400, answer
    assert "cut short: 3 of the" in answer["error"]


def test_frames_short_of_the_declared_count_fail_at_decoding_with_a_clear_error():
    """The decoding iterator's own check, for a stream that ends early though every packet
    is whole (what the probe cannot see without decoding)."""
    from dataclasses import replace

    from pipelines.video import InvalidVideo, decode_frames

    video = probe_video(faststart_mp4(), VideoLimits())
    assert len(list(decode_frames(video))) == FRAMES
    with pytest.raises(InvalidVideo, match=f"ended after {FRAMES} of the {FRAMES + 2} frames"):
        list(decode_frames(replace(video, frames=FRAMES + 2)))


def rotated(data: bytes, degrees: int) -> bytes:
    """`data` (an mp4) with its track's display matrix set as a phone sets it: "rotate 90"
    is the tkhd matrix {0, 1, -1, 0} (ISO/IEC 14496-12 8.3.2; what ffprobe shows as
    rotation -90 and a player turns clockwise)."""
    import struct

    one = 1 << 16
    matrix = {90: (0, one, 0, -one, 0, 0, HEIGHT * one, 0, 1 << 30),
              270: (0, -one, 0, one, 0, 0, 0, WIDTH * one, 1 << 30),
              180: (-one, 0, 0, 0, -one, 0, WIDTH * one, HEIGHT * one, 1 << 30)}[degrees]
    box = data.index(b"tkhd")
    assert data[box + 4] == 0  # version 0: the matrix is 40 bytes into the box's fields
    start = box + 4 + 40
    return data[:start] + struct.pack(">9i", *matrix) + data[start + 36:]


@pytest.mark.parametrize("degrees, turn", [(90, -1), (270, 1), (180, 2)])
def test_a_phones_rotation_is_applied_to_every_frame(degrees, turn):
    """As a player shows it: "rotate 90" turned clockwise (np.rot90 with k=-1)."""
    from pipelines.video import decode_frames

    data = faststart_mp4(frames=3)
    plain = [np.asarray(frame) for frame in decode_frames(probe_video(data, VideoLimits()))]
    turned = [np.asarray(frame)
              for frame in decode_frames(probe_video(rotated(data, degrees), VideoLimits()))]
    assert len(turned) == 3
    for upright, frame in zip(plain, turned):
        np.testing.assert_array_equal(frame, np.rot90(upright, k=turn))


def test_a_portrait_phone_video_comes_back_upright(make_client, checkpoints):
    client = make_client({"lotus": Lotus(checkpoints)})
    accepted = submit_video(client, rotated(faststart_mp4(frames=3), 90))
    assert accepted.status_code == 202, accepted.get_json()
    status = poll(client, accepted.get_json()["job_id"], timeout=120)
    assert status["status"] == "completed", status
    assert (status["width"], status["height"]) == (HEIGHT, WIDTH)  # portrait, as shown
    with zipfile.ZipFile(io.BytesIO(client.get(status["download_url"]).data)) as archive:
        raw = np.load(io.BytesIO(archive.read("depth.npz")))
    assert raw["frames"].shape == (3, WIDTH, HEIGHT)


def png_of_zeros(width: int, height: int) -> bytes:
    """A black RGB PNG, written a row at a time: 12000x12000 (432 MB of pixels) deflates to
    about 420 KB."""
    import struct
    import zlib

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    packer, row = zlib.compressobj(9), b"\0" + bytes(width * 3)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                             0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def png_mov(*frames: bytes) -> bytes:
    """A QuickTime file whose track says 64x48 PNG and whose samples are `frames` (PNG
    files of any size): the adversarial run's video bomb."""
    from fractions import Fraction

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mov") as out:
        stream = out.add_stream("png", rate=12)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "rgb24"
        for index, frame in enumerate(frames):
            packet = av.Packet(frame)
            packet.stream, packet.pts, packet.dts = stream, index, index
            packet.time_base, packet.is_keyframe = Fraction(1, 12), True
            out.mux(packet)
    return buffer.getvalue()


# VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across fork and exec
VIDEO_BOMB_CHILD = """
import sys
sys.path[:0] = {paths!r}
from pipelines.video import InvalidVideo, VideoLimits, decode_frames, probe_video
def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
data = open(sys.argv[1], "rb").read()
before = peak_kib()
try:
    video = probe_video(data, VideoLimits())
    for _ in decode_frames(video):
        pass
    print("accepted")
except InvalidVideo as exc:
    print(exc)
print((peak_kib() - before) // 1024)
"""


@pytest.mark.parametrize("which", ["first", "second"])
def test_a_video_bomb_is_refused_without_decoding_its_huge_frame(tmp_path, which):
    """A 64x48 track whose first (or, past the probe, second) sample is a 12000x12000 PNG:
    refused, and the process grows by a few MiB, not the 400+ MiB FFmpeg's probe used to
    allocate for the frame (measured in a fresh interpreter: its peak RSS is its own)."""
    import subprocess
    import sys

    huge = png_of_zeros(12000, 12000)
    small = png_of_zeros(WIDTH, HEIGHT)
    data = png_mov(huge) if which == "first" else png_mov(small, huge)
    assert len(data) < 500_000
    (tmp_path / "bomb.mov").write_bytes(data)
    child = subprocess.run(
        [sys.executable, "-c", VIDEO_BOMB_CHILD.format(paths=sys.path), tmp_path / "bomb.mov"],
        capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    message, grown = child.stdout.splitlines()
    assert "accepted" not in message and ("1280x1280" in message or "could not be decoded"
                                          in message), message
    assert int(grown) < 60, f"{grown} MiB for a {len(data)}-byte video"


def test_the_api_answers_a_video_bomb_with_400(make_client, checkpoints):
    client = make_client({"lotus": Lotus(checkpoints)})
    response = submit_video(client, png_mov(png_of_zeros(12000, 12000)))
    assert response.status_code == 400
    assert "at most 1280x1280 pixels" in response.get_json()["error"]
