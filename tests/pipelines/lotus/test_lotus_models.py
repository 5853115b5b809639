"""Every upstream Lotus checkpoint: normals, Lotus-G, and the model table, on tiny random
checkpoints with the real architectures (scripts/make_tiny_checkpoints.py), held to
tests/lotus_reference.py (upstream's pipeline.py and infer.py, not our code)."""

import base64
import io
import json
import queue
import shutil

import numpy as np
import png
import pytest
import requests
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from standardwebhooks.webhooks import Webhook
from transformers import CLIPTextModel, CLIPTokenizer

from conftest import QuietHandler, image_b64, local_http_server, running_server
from handler import Handler
from lotus_reference import upstream_lotus_d, upstream_lotus_g
from make_tiny_checkpoints import make_lotus
from pipelines.lotus.catalog import LOTUS_MODELS
from pipelines.lotus import DepthRequest, Lotus, NormalRequest
from pipelines.lotus.model import LotusGPipeline

# Each with its own random weights; the default depth model is the shared fixture's.
TINY = {"depth-d-v2-0-disparity": 0, "normal-d-v1-1": 1, "depth-g-v2-1-disparity": 2,
        "normal-g-v1-1": 3}
KEY = "worker-key-0123456789"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("lotus-models")
    for name, seed in TINY.items():
        make_lotus(root, seed, name)
    return root


@pytest.fixture(scope="module")
def lotus(folder):
    model = Lotus(folder)
    model.load()
    return model


def parts(folder, name):
    """A checkpoint's parts, loaded as upstream's from_pretrained loads them; Lotus-G's with
    the scheduler its model_index.json names (DDIMScheduler)."""
    path = folder / LOTUS_MODELS[name].folder
    loaded = (UNet2DConditionModel.from_pretrained(path / "unet").eval(),
              AutoencoderKL.from_pretrained(path / "vae").eval(),
              CLIPTextModel.from_pretrained(path / "text_encoder").eval(),
              CLIPTokenizer.from_pretrained(path / "tokenizer"))
    if LOTUS_MODELS[name].mode == "generation":
        loaded += (DDIMScheduler.from_pretrained(path / "scheduler"),)
    return loaded


def reference(folder, name, image, **options):
    model = LOTUS_MODELS[name]
    run = upstream_lotus_g if model.mode == "generation" else upstream_lotus_d
    return run(*parts(folder, name), image, task=model.task, **options)


def photo(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def request(name, **options):
    cls = DepthRequest if LOTUS_MODELS[name].task == "depth" else NormalRequest
    return cls(image="x", model=name, **options)


SIZES = [((37, 23), 64), ((128, 72), 50), ((45, 33), 0), ((30, 80), 64), ((200, 150), 768)]


@pytest.mark.parametrize("size, processing_res", SIZES,
                         ids=[f"{w}x{h}-at-{r}" for (w, h), r in SIZES])
@pytest.mark.parametrize("name", ["normal-d-v1-1", "depth-g-v2-1-disparity", "normal-g-v1-1"])
def test_each_model_equals_upstream_bit_for_bit(folder, lotus, name, size, processing_res):
    """Lotus-G with its seed (both its generators) and Lotus-D normals: the same float32
    bits as upstream's pipeline on the same weights, one image at a time, on the CPU."""
    image = photo(*size)
    ours = lotus.predict(request(name, processing_res=processing_res, seed=11), image)
    expected = reference(folder, name, image, processing_res=processing_res, seed=11)
    shape = (size[1], size[0]) + ((3,) if LOTUS_MODELS[name].task == "normal" else ())
    assert ours.shape == expected.shape == shape and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("method", ["bicubic", "nearest"])
@pytest.mark.parametrize("name", ["normal-d-v1-1", "depth-g-v2-1-disparity"])
def test_resampling_the_posterior_mode_and_output_size_equal_upstream(folder, lotus, name,
                                                                     method):
    image = photo(129, 77)
    ours = lotus.predict(request(name, processing_res=50, resample_method=method, seed=4,
                                 latent="mode", output_processing_res=True), image)
    expected = reference(folder, name, image, processing_res=50, resample_method=method,
                         seed=4, latent="mode", match_input_res=False)
    assert ours.shape[:2] == (24, 48)
    np.testing.assert_array_equal(ours, expected)


def test_lotus_g_depends_on_its_seed_and_lotus_d_with_the_mode_does_not(lotus):
    image = photo(64, 48)
    g = [lotus.predict(request("depth-g-v2-1-disparity", processing_res=64, seed=seed,
                               latent="mode"), image) for seed in (1, 1, 2)]
    np.testing.assert_array_equal(g[0], g[1])
    assert not np.array_equal(g[0], g[2])  # the noise latent comes from the seed
    d = [lotus.predict(request("normal-d-v1-1", processing_res=64, seed=seed, latent="mode"),
                       image) for seed in (1, 2)]
    np.testing.assert_array_equal(d[0], d[1])


def test_the_pipeline_class_follows_the_checkpoints_mode(lotus):
    assert {name: type(model).__name__ for name, model in lotus.models.items()} == {
        "depth-g-v2-1-disparity": "LotusGPipeline", "depth-d-v2-0-disparity": "LotusDPipeline",
        "normal-g-v1-1": "LotusGPipeline", "normal-d-v1-1": "LotusDPipeline"}


def test_a_regression_folder_is_refused_as_a_generation_one(folder):
    with pytest.raises(ValueError, match="holds a Lotus regression checkpoint .* not a "
                                         "generation one"):
        LotusGPipeline.from_pretrained(folder / "lotus-normal-d-v1-1")


def test_a_batch_of_lotus_g_jobs_each_with_its_own_seed_equals_each_run_alone(folder, lotus,
                                                                             tmp_path):
    """Four same-size jobs in one forward pass, each with its own seeds. The tolerance, 1e-5
    on values in [0, 1], is the depth batch test's (test_lotus.py): batched CPU convolutions
    take other kernel paths than single ones and differ in the last float32 bits."""
    images = [photo(64, 48, seed) for seed in range(4)]
    jobs = [(request("depth-g-v2-1-disparity", processing_res=64, seed=seed, output="npy"),
             image, tmp_path / f"job{seed}") for seed, image in enumerate(images)]
    results = lotus.run_batch(jobs, lambda stage, fraction: None)
    for (options, image, _), result in zip(jobs, results):
        expected = reference(folder, "depth-g-v2-1-disparity", image, processing_res=64,
                             seed=options.seed)
        np.testing.assert_allclose(np.load(result.path), expected, atol=1e-5, rtol=0)


def test_models_never_share_a_forward_pass():
    image = photo(64, 48)
    assert (Lotus.batch_key(request("depth-g-v2-1-disparity"), image)
            != Lotus.batch_key(request("depth-d-v2-0-disparity"), image))


def test_normal_files_are_upstreams_png_the_raw_npy_and_a_16_bit_png(folder, lotus, tmp_path):
    image = photo(40, 30)
    expected = reference(folder, "normal-d-v1-1", image, processing_res=64, seed=3)
    files = {output: lotus.run(request("normal-d-v1-1", processing_res=64, seed=3,
                                       output=output), image, tmp_path / output,
                               lambda stage, fraction: None)
             for output in ("png", "png16", "npy")}
    np.testing.assert_array_equal(np.load(files["npy"].path), expected)
    eight = Image.open(files["png"].path)
    assert eight.mode == "RGB" and files["png"].download_name == "normal.png"
    # infer.py:214: Image.fromarray((output_npy * 255).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(eight), (expected * 255).astype(np.uint8))
    width, height, rows, info = png.Reader(filename=str(files["png16"].path)).asDirect()
    assert (width, height, info["bitdepth"], info["planes"]) == (40, 30, 16, 3)
    np.testing.assert_array_equal(np.vstack(list(rows)).reshape(30, 40, 3),
                                  np.round(expected * 65535).astype(np.uint16))
    assert files["npy"].info["frame"].startswith("camera: x to the left, y up, z toward")
    assert "2 * value - 1" in files["npy"].info["range"]


def test_a_v1_depth_model_is_colourised_as_depth_not_disparity(tmp_path):
    """colorize_depth_map(reverse_color=--disparity) (utils/image_utils.py:53-56): the same
    map, reversed or not, gives the Spectral colours of 1 - x or of x."""
    from pipelines.outputs import depth_color

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    disparity = np.asarray(Image.open(io.BytesIO(depth_color(ramp, disparity=True))))
    depth = np.asarray(Image.open(io.BytesIO(depth_color(1 - ramp, disparity=False))))
    np.testing.assert_array_equal(disparity, depth)
    with pytest.raises(ValueError, match="predicts affine-invariant depth"):
        DepthRequest(image="x", model="depth-d-v1-0", disparity=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, folder):
    with running_server(tmp_path_factory.mktemp("server"), folder, API_KEY=KEY,
                        WEBHOOK_SECRET=SECRET, ALLOW_PRIVATE_URLS="true") as started:
        yield started


def post(server, path, body, **headers):
    return requests.post(f"{server['url']}{path}", json=body, headers={**AUTH, **headers},
                         timeout=60)


def get(server, path):
    return requests.get(f"{server['url']}{path}", headers=AUTH, timeout=10)


@pytest.fixture
def receiver():
    """A webhook receiver on loopback: each POST's headers and body."""
    received = queue.Queue()

    class Handler(QuietHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.put((dict(self.headers), body.decode()))
            self.send_response(204)
            self.end_headers()

    with local_http_server(Handler) as url:
        yield f"{url}/hook", received


def test_health_lists_the_six_models_and_which_are_served(server):
    models = requests.get(f"{server['url']}/health", timeout=10).json()["models"]
    assert list(models) == list(LOTUS_MODELS)
    assert {name for name, info in models.items() if info["served"]} == set(TINY)
    assert models["normal-g-v1-1"] == {"repo_id": "jingheya/lotus-normal-g-v1-1",
                                       "task": "normal", "mode": "generation", "served": True}


def test_normal_sync_answers_the_map_and_its_convention(server):
    body = {"image": image_b64(width=40, height=30), "processing_res": 64}
    assert requests.post(f"{server['url']}/normal/sync", json=body,
                         timeout=60).status_code == 401  # the key, as on /depth
    answer = post(server, "/normal/sync", body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["model"] == "normal-d-v1-1" and (result["width"], result["height"]) == (40, 30)
    assert "z toward the camera" in result["frame"] and "[-1, 1]" in result["range"]
    image = Image.open(io.BytesIO(base64.b64decode(result["image_base64"])))
    assert image.mode == "RGB" and image.size == (40, 30)
    download = get(server, result["download_url"])
    assert download.content == base64.b64decode(result["image_base64"])


def test_normal_async_with_an_idempotency_key_a_webhook_and_events(server, receiver):
    url, received = receiver
    body = {"image": image_b64(width=40, height=30), "processing_res": 64,
            "model": "normal-g-v1-1", "output": "npy", "seed": 5, "webhook": url}
    first = post(server, "/normal", body, **{"Idempotency-Key": "normals-1"})
    again = post(server, "/normal", body, **{"Idempotency-Key": "normals-1"})
    assert first.status_code == 202 and again.status_code == 200
    job = first.json()["job_id"]
    assert again.json()["job_id"] == job
    headers, hook = received.get(timeout=60)
    payload = Webhook(SECRET).verify(hook, headers)  # raises unless the signature is right
    assert payload["type"] == "job.completed" and payload["data"]["job_id"] == job
    assert payload["data"]["model"] == "normal-g-v1-1" and "frame" in payload["data"]
    events = requests.get(f"{server['url']}/job/{job}/events", headers=AUTH, timeout=30)
    last = json.loads([line for line in events.text.splitlines()
                       if line.startswith("data:")][-1][5:])
    assert last["status"] == "completed" and last["download_url"] == f"/job/{job}/download"
    values = np.load(io.BytesIO(get(server, f"/job/{job}/download").content))
    assert values.shape == (30, 40, 3) and values.dtype == np.float32
    assert received.empty()  # one job, one webhook: the replay made none


def test_depth_takes_a_generative_model_per_request(server):
    answer = post(server, "/depth/sync", {"image": image_b64(width=40, height=30),
                                          "processing_res": 64,
                                          "model": "depth-g-v2-1-disparity"}).json()
    assert answer["model"] == "depth-g-v2-1-disparity" and answer["disparity"] is True
    assert 0 <= answer["min"] <= answer["max"] <= 1


@pytest.mark.parametrize("path, model, message", [
    ("/depth", "depth-d-v1-0", "model depth-d-v1-0 is not served here; depth models served: "
                               "depth-d-v2-0-disparity, depth-g-v2-1-disparity"),
    ("/normal", "normal-x", "model: Input should be 'normal-g-v1-1' or 'normal-d-v1-1'"),
    ("/depth", "normal-d-v1-1", "model: Input should be 'depth-g-v1-0'"),
    ("/normal/sync", "depth-d-v2-0-disparity", "model: Input should be"),
])
def test_an_unknown_or_unserved_model_is_a_400_naming_what_is_served(server, path, model,
                                                                     message):
    answer = post(server, path, {"image": image_b64(), "model": model})
    assert answer.status_code == 400 and message in answer.json()["error"]
    assert get(server, "/queue").json()["queued"] == 0


def test_the_openapi_document_knows_normal(server):
    document = get(server, "/openapi.json").json()
    assert {"/normal", "/normal/sync"} <= set(document["paths"])
    schema = document["components"]["schemas"]["NormalRequest"]
    assert schema["properties"]["model"]["enum"] == ["normal-g-v1-1", "normal-d-v1-1"]


def test_a_server_without_a_model_says_which_are_served(folder, tmp_path, make_client):
    only_normal = tmp_path / "ck"
    shutil.copytree(folder / "lotus-normal-d-v1-1", only_normal / "lotus-normal-d-v1-1")
    pipeline = Lotus(only_normal)
    client = make_client({"lotus": pipeline})
    answer = client.post("/depth", json={"image": image_b64()})
    assert answer.status_code == 400
    assert answer.get_json()["error"] == ("model depth-d-v2-0-disparity is not served here; "
                                          "depth models served: none (all served: "
                                          "normal-d-v1-1)")


def test_the_runpod_worker_serves_task_normal(lotus, tmp_path, monkeypatch):
    from settings import load_settings

    monkeypatch.setenv("LOTUS_API_KEY", KEY)
    worker = Handler(load_settings(output_dir=tmp_path / "out"), {"lotus": lotus})
    answer = worker.handle({"id": "n1", "input": {
        "api_key": KEY, "task": "normal", "image_base64": image_b64(width=40, height=30),
        "processing_res": 64, "model": "normal-g-v1-1", "output": "png16"}})
    assert answer["model"] == "normal-g-v1-1" and "z toward the camera" in answer["frame"]
    width, height, _, info = png.Reader(bytes=base64.b64decode(answer["image_base64"])).read()
    assert (width, height, info["bitdepth"], info["planes"]) == (40, 30, 16, 3)
    refused = worker.handle({"id": "n2", "input": {
        "api_key": KEY, "task": "normal", "image_base64": image_b64(), "model": "nope"}})
    assert refused["status"] == 400 and "model" in refused["error"]
