"""Depth Anything V2 over HTTP: `POST /depth` with its `model` (a row of the model table,
beside Lotus's), on tiny random-weight checkpoints with the real architecture
(scripts/make_tiny_checkpoints.py), equal to transformers' own depth-estimation pipeline on
the same weights and photo."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import trimesh
from PIL import Image

transformers = pytest.importorskip("transformers")

from conftest import image_b64  # noqa: E402
from make_tiny_checkpoints import make_depth_anything  # noqa: E402
from pipelines.depth_anything.catalog import DA2_MODELS  # noqa: E402
from pipelines.depth_anything.pipeline import DepthAnything  # noqa: E402
from pipelines.lotus import Lotus  # noqa: E402

RELATIVE, INDOOR = "depth-anything-v2-small", "depth-anything-v2-metric-indoor-small"


@pytest.fixture(scope="module")
def da2_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("da2")
    for name in (RELATIVE, INDOOR):
        make_depth_anything(root, 0, name)
    return root


def reference(folder, photo_b64: str) -> np.ndarray:
    pipe = transformers.pipeline("depth-estimation", model=str(folder), device="cpu")
    photo = Image.open(io.BytesIO(base64.b64decode(photo_b64)))
    return pipe(photo)["predicted_depth"].numpy()


def npy(body: dict) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(body["image_base64"])))


@pytest.mark.parametrize("name", [RELATIVE, INDOOR])
def test_depth_equals_transformers_pipeline_over_http(make_client, da2_checkpoints, name):
    client = make_client({"depth_anything": DepthAnything(da2_checkpoints)})
    photo = image_b64(width=64, height=48, seed=3)
    answer = client.post("/depth/sync", json={"image": photo, "model": name, "output": "npy"})
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    np.testing.assert_array_equal(
        npy(body), reference(da2_checkpoints / DA2_MODELS[name].folder, photo))
    assert body["model"] == name and (body["width"], body["height"]) == (64, 48)
    if name == INDOOR:
        assert body["disparity"] is False and body["units"] == "metres"
    else:
        assert body["disparity"] is True and body.get("units") is None


def test_a_metric_relief_is_true_scale(make_client, da2_checkpoints):
    """Each vertex lies at its pixel's predicted depth in metres (z = -depth), and x, y
    follow the pinhole camera of `fov_degrees`."""
    client = make_client({"depth_anything": DepthAnything(da2_checkpoints)})
    photo = image_b64(width=64, height=48, seed=4)
    depth = npy(client.post("/depth/sync", json={"image": photo, "model": INDOOR,
                                                 "output": "npy"}).get_json())
    body = client.post("/depth/sync", json={"image": photo, "model": INDOOR, "output": "ply",
                                            "fov_degrees": 90}).get_json()
    assert body["geometry"].startswith("true scale") and body["units"] == "metres"
    cloud = trimesh.load(io.BytesIO(base64.b64decode(body["image_base64"])), file_type="ply")
    vertices = np.asarray(cloud.vertices).reshape(48, 64, 3)
    np.testing.assert_allclose(-vertices[..., 2], depth, rtol=1e-6)
    focal = 64 / 2 / np.tan(np.radians(90) / 2)
    np.testing.assert_allclose(vertices[0, 0, 0], (0.5 - 32) / focal * depth[0, 0], rtol=1e-5)


def test_health_lists_its_checkpoints_with_their_licences(make_client, da2_checkpoints):
    client = make_client({"depth_anything": DepthAnything(da2_checkpoints)})
    models = client.get("/health").get_json()["models"]
    assert models[RELATIVE]["served"] and models[INDOOR]["served"]
    assert not models["depth-anything-v2-metric-outdoor-small"]["served"]
    assert {models[name]["licence"] for name in DA2_MODELS} == {"Apache-2.0"}
    assert models[INDOOR]["kind"] == "metric"


def test_one_depth_endpoint_routes_by_model_beside_lotus(make_client, da2_checkpoints,
                                                         checkpoints):
    """Lotus's and Depth Anything's names are rows of one table: /depth sends each request
    to the pipeline whose model it names; a Lotus-only option is refused for DA2."""
    client = make_client({"lotus": Lotus(checkpoints),
                          "depth_anything": DepthAnything(da2_checkpoints)})
    photo = image_b64(width=64, height=48, seed=5)
    lotus = client.post("/depth/sync", json={"image": photo, "processing_res": 32}).get_json()
    assert lotus["model"] == "depth-d-v2-0-disparity"
    da2 = client.post("/depth", json={"image": photo, "model": RELATIVE})
    assert da2.status_code == 202
    refused = client.post("/depth", json={"image": photo, "model": RELATIVE, "output": "glb",
                                          "normal_model": "normal-d-v1-1"})
    assert refused.status_code == 400 and "Lotus" in refused.get_json()["error"]
    assert client.post("/depth", json={"image": photo, "model": INDOOR,
                                       "disparity": True}).status_code == 400


def test_the_runpod_handler_serves_it_by_model(da2_checkpoints, tmp_path, monkeypatch):
    from handler import Handler
    from settings import load_settings

    monkeypatch.setenv("LOTUS_API_KEY", "k")
    pipeline = DepthAnything(da2_checkpoints)
    pipeline.load()
    worker = Handler(load_settings(output_dir=tmp_path), {"depth_anything": pipeline})
    photo = image_b64(width=40, height=30, seed=6)
    answer = worker.handle({"id": "j", "input": {"api_key": "k", "task": "depth",
                                                 "model": INDOOR, "image_base64": photo,
                                                 "output": "npy"}})
    assert "error" not in answer, answer
    np.testing.assert_array_equal(npy(answer),
                                  reference(da2_checkpoints / DA2_MODELS[INDOOR].folder, photo))
    assert answer["units"] == "metres"


def test_a_photo_it_cannot_size_fails_with_a_400_saying_why(make_client, da2_checkpoints):
    client = make_client({"depth_anything": DepthAnything(da2_checkpoints)},
                         max_image_side=8192)
    strip = image_b64(width=8000, height=500, mode="L", seed=7)  # seen at 518 x 8288
    answer = client.post("/depth/sync", json={"image": strip, "model": RELATIVE})
    assert answer.status_code == 400 and "too long and thin" in answer.get_json()["error"]


def test_its_model_on_a_server_without_it_is_a_400_naming_what_is_served(make_client,
                                                                          checkpoints):
    client = make_client({"lotus": Lotus(checkpoints)})
    answer = client.post("/depth", json={"image": image_b64(), "model": RELATIVE})
    assert answer.status_code == 400, answer.get_json()
    assert "not served here" in answer.get_json()["error"] and "lotus" in answer.get_json()["error"]
