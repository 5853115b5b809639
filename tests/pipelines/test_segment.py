"""POST /segment with Flask's test client: the mask is the one a 3D job gives the model (held
to what the SAM 3D stand-in receives from a job, not to a copy of the rule), from every
source, for JSON and form uploads alike, with /generate's errors and its own 503."""

import base64
import io
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import SAM3D_STAND_IN, image_b64, image_bytes, sam3d_checkpoints
from jobs.journal import JOURNAL_NAME
from settings import load_settings
from pipelines.catalog import configured_pipelines, http_pipelines
from pipelines.sam3d_parts.masks import Masker
from pipelines.sam3d import Sam3DObjects
from pipelines.segment import Segmenter
from stand_ins import brightness_onnx

WIDTH, HEIGHT = 64, 48


def model_calls():
    """What the SAM 3D stand-in was given, one entry per object a job reconstructed."""
    return sys.modules["sam3d_objects.pipeline.inference_pipeline"].CALLS


def png_b64(array: np.ndarray, mode: str) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def soft_alpha_photo() -> str:
    """An RGBA photo whose alpha fades from 0 on the left to 255 on the right: half of it is
    faint haze, as a matting tool leaves around an object."""
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, WIDTH).round().astype(np.uint8)[None, :]
    return png_b64(rgba, "RGBA")


def bright_square_photo() -> str:
    """A dark photo with a bright square: the brightness u2net stand-in's object."""
    array = np.full((HEIGHT, WIDTH, 3), 10, dtype=np.uint8)
    array[8:40, 16:48] = 250
    return png_b64(array, "RGB")


def decoded(answer) -> np.ndarray:
    mask = Image.open(io.BytesIO(base64.b64decode(answer["mask"])), formats=["PNG"])
    assert mask.mode == "L"
    return np.asarray(mask)


def sam3d(tmp_path, masker=None, name="ck"):
    return Sam3DObjects(sam3d_checkpoints(tmp_path / name), SAM3D_STAND_IN, masker=masker,
                        vram_gib=40.0)


@pytest.fixture
def client(make_client, tmp_path):
    """SAM 3D Objects' stand-in and /segment, neither with a rembg model (the centre box)."""
    return make_client({"sam3d": sam3d(tmp_path, Masker(None)),
                        "segment": Segmenter(Masker(None))})


def job_alpha(client, **body) -> np.ndarray:
    """The alpha SAM 3D Objects received from a /generate job."""
    model_calls().clear()
    answer = client.post("/generate/sync", json={"output_format": "ply", **body})
    assert answer.status_code == 200, answer.get_json()
    [call] = model_calls()
    return call["alpha"]


def outputs_listing(tmp_path) -> list[str]:
    """Every file in OUTPUT_DIR (results, kept images), the journal's database aside."""
    return sorted(str(path.relative_to(tmp_path / "outputs"))
                  for path in (tmp_path / "outputs").rglob("*")
                  if not path.name.startswith(JOURNAL_NAME))


# -- the job's own mask ---------------------------------------------------------------

def test_a_soft_alpha_is_binarised_as_the_job_binarises_it(client):
    photo = soft_alpha_photo()
    answer = client.post("/segment", json={"image": photo})
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert (body["source"], body["width"], body["height"]) == ("alpha", WIDTH, HEIGHT)
    mask = decoded(body)
    assert set(np.unique(mask)) == {0, 255}
    assert not mask[:, :WIDTH // 4].any()  # the faint haze is not the object
    np.testing.assert_array_equal(mask, job_alpha(client, image=photo))
    # Sent back as the job's mask, the model gets the very same alpha.
    np.testing.assert_array_equal(job_alpha(client, image=photo, mask=body["mask"]), mask)


def test_without_a_rembg_model_the_mask_is_the_jobs_centre_box(client):
    photo = image_b64(width=WIDTH, height=HEIGHT)
    body = client.post("/segment", json={"image": photo}).get_json()
    assert body["source"] == "center"
    mask = decoded(body)
    np.testing.assert_array_equal(mask, job_alpha(client, image=photo))
    assert mask.any() and not mask.all()


def test_rembg_segments_with_the_model_the_job_uses(make_client, tmp_path, monkeypatch):
    brightness_onnx(tmp_path / "u2net" / "u2net.onnx")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))
    client = make_client({"sam3d": sam3d(tmp_path), "segment": Segmenter()})
    photo = bright_square_photo()
    body = client.post("/segment", json={"image": photo}).get_json()
    assert body["source"] == "rembg"
    mask = decoded(body)
    assert mask[24, 32] == 255 and mask[2, 2] == 0
    np.testing.assert_array_equal(mask, job_alpha(client, image=photo))
    # A photo in which background removal finds nothing: told now, not after a 3D job.
    dark = png_b64(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB")
    refused = client.post("/segment", json={"image": dark})
    assert refused.status_code == 400
    assert "no object found: background removal" in refused.get_json()["error"]


def test_a_form_upload_gives_the_same_mask_as_json(client):
    photo = soft_alpha_photo()
    form = client.post("/segment", content_type="multipart/form-data", data={
        "image": (io.BytesIO(base64.b64decode(photo)), "photo.png")})
    sent = client.post("/segment", json={"image": photo})
    assert form.status_code == sent.status_code == 200, form.get_json()
    assert form.get_json()["mask"] == sent.get_json()["mask"]


def test_an_exif_rotated_jpeg_gives_a_mask_of_the_upright_size(client):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.open(io.BytesIO(image_bytes(width=WIDTH, height=HEIGHT))).save(
        buffer, format="JPEG", exif=exif)
    photo = base64.b64encode(buffer.getvalue()).decode()
    body = client.post("/segment", json={"image": photo}).get_json()
    assert (body["width"], body["height"]) == (HEIGHT, WIDTH)
    mask = decoded(body)
    assert mask.shape == (WIDTH, HEIGHT)
    np.testing.assert_array_equal(mask, job_alpha(client, image=photo))


def test_a_mask_does_not_wait_behind_a_running_3d_job(make_client, tmp_path):
    class HeldMasker(Masker):
        """The 3D job's masker, held until the test lets it go: the job stays running."""
        started, release = threading.Event(), threading.Event()

        def mask(self, image):
            self.started.set()
            assert self.release.wait(30), "the test never released the 3D job"
            return super().mask(image)

    held = HeldMasker(None)
    client = make_client({"sam3d": sam3d(tmp_path, held), "segment": Segmenter(Masker(None))})
    try:
        job = client.post("/generate", json={"image": image_b64()}).get_json()["job_id"]
        assert held.started.wait(10)
        assert client.post("/segment", json={"image": image_b64()}).status_code == 200
        assert client.get(f"/job/{job}").get_json()["status"] == "processing"
    finally:
        held.release.set()


# -- the same errors as /generate -------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"image": base64.b64encode(b"hello, world").decode()},
    {"image": "not base64 !!!"},
    {"image": image_b64(width=80, height=20)},  # over max_image_side
    {"image_url": "http://127.0.0.1:9/photo.png"},  # a private address
    {},
    {"image": image_b64(), "colour": "red"},
], ids=["not-an-image", "bad-base64", "too-large", "private-url", "no-image", "unknown-field"])
def test_bad_input_gets_generates_400_and_leaves_nothing(make_client, tmp_path, body):
    client = make_client({"sam3d": sam3d(tmp_path, Masker(None)),
                          "segment": Segmenter(Masker(None))}, max_image_side=64)
    before = outputs_listing(tmp_path)
    segment, generate = client.post("/segment", json=body), client.post("/generate", json=body)
    assert segment.status_code == generate.status_code == 400
    assert segment.get_json() == generate.get_json()
    assert outputs_listing(tmp_path) == before
    assert client.post("/segment", json={"image": image_b64()}).status_code == 200


def test_an_oversized_body_is_413_as_for_generate(make_client, tmp_path):
    client = make_client({"sam3d": sam3d(tmp_path, Masker(None)),
                          "segment": Segmenter(Masker(None))}, max_content_length=2048)
    answers = [client.post(path, json={"image": "A" * 4096}) for path in ("/segment", "/generate")]
    assert [a.status_code for a in answers] == [413, 413]
    assert answers[0].get_json() == answers[1].get_json()


def test_the_api_key_is_required_as_for_generate(make_client, tmp_path):
    client = make_client({"sam3d": sam3d(tmp_path, Masker(None)),
                          "segment": Segmenter(Masker(None))}, api_key="s3cret-key")
    refused = client.post("/segment", json={"image": image_b64()})
    assert refused.status_code == 401
    assert refused.get_json() == client.post("/generate", json={"image": image_b64()}).get_json()
    accepted = client.post("/segment", json={"image": image_b64()},
                           headers={"Authorization": "Bearer s3cret-key"})
    assert accepted.status_code == 200


# -- offered only with 3D objects ---------------------------------------------------------

def test_the_http_server_serves_masks_wherever_it_serves_3d_objects(tmp_path, checkpoints):
    folder = sam3d_checkpoints(tmp_path / "ck")
    assert set(http_pipelines(load_settings(checkpoints_dir=folder))) == {"sam3d", "segment"}
    assert set(http_pipelines(load_settings(checkpoints_dir=folder, pipelines="sam3d"))) == {
        "sam3d", "segment"}
    assert set(http_pipelines(load_settings(checkpoints_dir=checkpoints))) == {"lotus"}
    # RunPod's handler has no /segment: it loads what is configured, and no mask model
    assert set(configured_pipelines(load_settings(checkpoints_dir=folder))) == {"sam3d"}


def test_health_offers_segment_when_3d_objects_are_served(client):
    assert client.get("/health").get_json()["capabilities"]["segment"] == {"offered": True}


def test_without_sam3d_it_is_a_501_naming_why_and_not_offered(make_client, scripted):
    client = make_client({"lotus": scripted, "segment": Segmenter(Masker(None))})
    answer = client.post("/segment", json={"image": image_b64()})
    assert answer.status_code == 501  # not served here: no retry helps
    assert "'segment' serves 'sam3d' jobs only" in answer.get_json()["error"]
    assert "model 'sam3d' is not loaded on this server" in answer.get_json()["error"]
    assert "Retry-After" not in answer.headers
    assert client.get("/health").get_json()["capabilities"]["segment"] == {"offered": False}


def test_a_sam3d_that_failed_to_load_is_named_in_the_503(make_client, tmp_path):
    broken = Sam3DObjects(tmp_path / "empty", SAM3D_STAND_IN, masker=Masker(None),
                          vram_gib=40.0)
    client = make_client({"sam3d": broken, "segment": Segmenter(Masker(None))})
    answer = client.post("/segment", json={"image": image_b64()})
    assert answer.status_code == 503
    assert "model 'sam3d' failed to load" in answer.get_json()["error"]
