"""Depth in 3D: output glb (a relief mesh textured with the photo) and ply (a coloured point
cloud), as a user opening the file would see them."""

import base64
import io

import numpy as np
import pytest
import trimesh
from PIL import Image

from conftest import image_b64, image_bytes, wait_until
from pipelines.errors import FailureKind, PipelineError
from pipelines.lotus import Lotus
from pipelines.relief import MAX_GRID_SIDE, relief_glb, relief_grid, relief_ply


def ramp(height, width):
    """Disparity growing left to right: the right side is nearer."""
    return np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))


def red(width, height):
    return Image.new("RGB", (width, height), (200, 30, 40))


def load_mesh(data: bytes) -> trimesh.Trimesh:
    scene = trimesh.load(io.BytesIO(data), file_type="glb")
    (mesh,) = scene.geometry.values()
    return mesh


def test_the_glb_is_a_mesh_textured_with_the_photo():
    mesh = load_mesh(relief_glb(ramp(48, 64), red(64, 48), disparity=True, fov_degrees=60))
    assert len(mesh.vertices) == 64 * 48
    texture = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    assert texture.shape == (48, 64, 3) and (texture == (200, 30, 40)).all()
    # the top-left vertex samples the photo's top-left pixel (glTF's v runs down the image)
    assert mesh.visual.uv[0] == pytest.approx([0.5 / 64, 1 - 0.5 / 48])


def test_a_big_photo_makes_a_bounded_mesh():
    mesh = load_mesh(relief_glb(ramp(2160, 3840), red(3840, 2160), True, 60))
    assert len(mesh.vertices) <= MAX_GRID_SIDE * MAX_GRID_SIDE
    assert len(mesh.vertices) == 512 * 288


@pytest.mark.parametrize("disparity", [True, False])
def test_nearer_pixels_end_up_nearer_the_camera(disparity):
    # the right side is nearer: larger disparity there, or smaller depth (v1-0 models)
    values = ramp(30, 40) if disparity else 1 - ramp(30, 40)
    grid = relief_grid(values, red(40, 30), disparity=disparity)
    distance = -grid.vertices[:, 2].reshape(30, 40)  # the camera looks down -z
    assert (distance > 0).all()
    assert (np.diff(distance, axis=1) < 0).all()  # each step right comes nearer


def test_a_wider_field_of_view_spreads_the_same_depth_wider():
    flat = np.full((30, 40), 0.5, dtype=np.float32)
    narrow = relief_grid(flat, red(40, 30), True, fov_degrees=30).vertices
    wide = relief_grid(flat, red(40, 30), True, fov_degrees=90).vertices
    assert np.ptp(wide[:, 2]) == np.ptp(narrow[:, 2]) == 0  # the same depth
    spread = np.ptp(wide[:, 0]) / np.ptp(narrow[:, 0])
    assert spread == pytest.approx(np.tan(np.radians(45)) / np.tan(np.radians(15)), rel=1e-5)
    # the longer side spans the field of view: the outermost pixel centres, half a pixel
    # inside the photo's edges, are (19.5 / 20) x tan(fov / 2) off the axis
    assert np.abs(wide[:, 0]).max() / -wide[0, 2] == pytest.approx(19.5 / 20 * np.tan(np.radians(45)))


def test_the_ply_has_one_coloured_point_per_pixel():
    photo = Image.open(io.BytesIO(image_bytes(width=40, height=30)))
    cloud = trimesh.load(io.BytesIO(relief_ply(ramp(30, 40), photo, True, 60)), file_type="ply")
    assert isinstance(cloud, trimesh.PointCloud) and len(cloud.vertices) == 40 * 30
    np.testing.assert_array_equal(cloud.colors[:, :3], np.asarray(photo).reshape(-1, 3))


def test_a_depth_discontinuity_drops_the_faces_across_it():
    smooth = relief_grid(ramp(30, 40), red(40, 30), True)
    assert len(smooth.faces) == 2 * 29 * 39
    step = np.zeros((30, 40), dtype=np.float32)
    step[:, 20:] = 1.0  # a near object in front of a far wall
    cut = relief_grid(step, red(40, 30), True)
    assert len(cut.faces) == 2 * 29 * 38  # the column of cells between x=19 and x=20 is gone
    spans = cut.vertices[cut.faces][:, :, 2]
    assert (spans.max(axis=1) - spans.min(axis=1)).max() == 0


def lotus_normal_map(height, width, normal):
    """A Lotus normal map of one normal as upstream encodes it: 2 * value - 1 is the normal,
    x to the left, y up, z toward the camera (Hypersim's camera frame with x negated,
    utils/hypersim_dataset.py:74-75; DSINE's "LUB" in evaluation/dataset_normal/oasis)."""
    return np.broadcast_to((np.asarray(normal, np.float32) + 1) / 2,
                           (height, width, 3)).copy()


def ply_normals(data: bytes) -> np.ndarray:
    vertex = trimesh.load(io.BytesIO(data), file_type="ply").metadata["_ply_raw"]["vertex"]
    return np.stack([vertex["data"][axis] for axis in ("nx", "ny", "nz")], axis=1)


def test_lotus_normals_shade_the_relief_as_its_own_shape_does():
    # the right side nearer: the surface faces the camera and the left. Lotus says "left"
    # with a positive x; the relief's own triangles, with a negative one (x to the right).
    values = ramp(30, 40)
    own = load_mesh(relief_glb(values, red(40, 30), True, 60)).vertex_normals
    lit = load_mesh(relief_glb(values, red(40, 30), True, 60,
                               normal_map=lotus_normal_map(30, 40, (0.6, 0.0, 0.8))))
    assert (own[:, 0] < 0).all() and (own[:, 2] > 0).all()
    np.testing.assert_allclose(lit.vertex_normals, np.tile([-0.6, 0.0, 0.8], (30 * 40, 1)),
                               atol=1e-6)
    assert (np.einsum("ij,ij->i", own, lit.vertex_normals) > 0.5).all()


def test_each_vertex_takes_its_own_pixels_normal():
    rng = np.random.default_rng(0)
    normal_map = rng.uniform(0.05, 0.95, (30, 40, 3)).astype(np.float32)
    expected = normal_map * 2 - 1
    expected[..., 0] *= -1
    expected = (expected / np.linalg.norm(expected, axis=-1, keepdims=True)).reshape(-1, 3)
    mesh = load_mesh(relief_glb(ramp(30, 40), red(40, 30), True, 60, normal_map=normal_map))
    np.testing.assert_allclose(mesh.vertex_normals, expected, atol=1e-6)
    np.testing.assert_allclose(
        ply_normals(relief_ply(ramp(30, 40), red(40, 30), True, 60, normal_map=normal_map)),
        expected, atol=1e-6)


def test_a_big_photos_normals_are_sampled_with_its_grid():
    normal_map = np.zeros((1080, 1920, 3), dtype=np.float32)
    normal_map[:, 960:] = (0.5, 0.5, 1.0)  # the right half faces the camera
    normal_map[:, :960] = (0.5, 1.0, 0.5)  # the left half faces up
    grid = relief_grid(ramp(1080, 1920), red(1920, 1080), True, normal_map=normal_map)
    normals = grid.normals.reshape(288, 512, 3)
    np.testing.assert_array_equal(normals[:, :256], np.broadcast_to([0, 1, 0], (288, 256, 3)))
    np.testing.assert_array_equal(normals[:, 256:], np.broadcast_to([0, 0, 1], (288, 256, 3)))


def test_a_map_with_no_surface_is_refused_rather_than_an_empty_glb():
    with pytest.raises(PipelineError, match="no surface") as raised:
        relief_glb(np.zeros((1, 5), dtype=np.float32), red(5, 1), True, 60)
    assert raised.value.kind is FailureKind.UNPROCESSABLE


def answer_file(body):
    return base64.b64decode(body["image_base64"])


@pytest.fixture(scope="module")
def lotus(checkpoints_with_normals):
    """Lotus serving the default depth model and normal-d-v1-1 (normal-g-v1-1 is not)."""
    model = Lotus(checkpoints_with_normals)
    model.load()
    return model


@pytest.mark.parametrize("output", ["glb", "ply"])
def test_depth_sync_answers_the_relief_file(make_client, lotus, output):
    client = make_client({"lotus": lotus})
    photo = image_bytes(width=40, height=30)
    response = client.post("/depth/sync", json={
        "image_base64": base64.b64encode(photo).decode(), "processing_res": 32,
        "output": output, "fov_degrees": 75})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["geometry"].startswith("relief:") and "not metric" in body["geometry"]
    assert body["fov_degrees"] == 75 and body["file_path"].endswith(f".{output}")
    data = answer_file(body)
    assert client.get(body["download_url"]).data == data
    pixels = np.asarray(Image.open(io.BytesIO(photo)))
    if output == "glb":
        mesh = load_mesh(data)
        assert len(mesh.vertices) == 40 * 30
        np.testing.assert_array_equal(
            np.asarray(mesh.visual.material.baseColorTexture.convert("RGB")), pixels)
    else:
        cloud = trimesh.load(io.BytesIO(data), file_type="ply")
        np.testing.assert_array_equal(cloud.colors[:, :3], pixels.reshape(-1, 3))


def test_an_async_relief_downloads_as_relief_glb(make_client, lotus):
    client = make_client({"lotus": lotus})
    job = client.post("/depth", json={"image": image_b64(width=40, height=30),
                                      "processing_res": 32, "output": "glb"}).get_json()
    status = wait_until(lambda: (lambda b: b if b["status"] == "completed" else None)(
        client.get(f"/job/{job['job_id']}").get_json()))
    assert status["geometry"].startswith("relief:") and status["fov_degrees"] == 60
    download = client.get(status["download_url"])
    assert download.headers["Content-Type"] == "model/gltf-binary"
    assert "filename=relief.glb" in download.headers["Content-Disposition"]


@pytest.mark.parametrize("value", [0, 5, 179, "wide", None])
def test_a_bad_field_of_view_is_400(make_client, lotus, value):
    client = make_client({"lotus": lotus})
    response = client.post("/depth", json={"image": image_b64(), "output": "glb",
                                           "fov_degrees": value})
    assert response.status_code == 400 and "fov_degrees" in response.get_json()["error"]


@pytest.mark.parametrize("normal_model", [None, "normal-d-v1-1"])
def test_the_runpod_depth_task_answers_a_relief_ply(lotus, tmp_path, monkeypatch,
                                                     normal_model):
    from handler import Handler
    from settings import load_settings

    monkeypatch.setenv("LOTUS_API_KEY", "worker-key-0123456789")
    worker = Handler(load_settings(output_dir=tmp_path / "out"), {"lotus": lotus})
    lighting = {"normal_model": normal_model} if normal_model else {}
    answer = worker.handle({"id": "relief", "input": {
        "api_key": "worker-key-0123456789", "task": "depth", "output": "ply", **lighting,
        "image_base64": image_b64(width=40, height=30), "processing_res": 32}})
    assert answer["geometry"].startswith("relief:") and answer["fov_degrees"] == 60
    cloud = trimesh.load(io.BytesIO(answer_file(answer)), file_type="ply")
    assert len(cloud.vertices) == 40 * 30
    names = cloud.metadata["_ply_raw"]["vertex"]["data"].dtype.names
    assert ("nx" in names) == (normal_model is not None)
    assert answer.get("normal_model") == normal_model


@pytest.mark.parametrize("output", ["glb", "ply"])
def test_a_relief_lit_by_the_normal_model_carries_its_normals(make_client, lotus, output):
    client = make_client({"lotus": lotus})
    request = {"image_base64": image_b64(width=40, height=30), "processing_res": 32, "seed": 7}
    relief = client.post("/depth/sync", json={**request, "output": output,
                                              "normal_model": "normal-d-v1-1"})
    body = relief.get_json()
    assert relief.status_code == 200, body
    assert "normal-d-v1-1" in body["normals"]
    # the reference: the same photo and options through /normal, its raw map turned into
    # the relief's frame as upstream's convention says (x left in Lotus, right in glTF)
    normal = client.post("/normal/sync", json={**request, "output": "npy"}).get_json()
    expected = np.load(io.BytesIO(answer_file(normal))) * 2 - 1
    expected[..., 0] *= -1
    expected = (expected / np.linalg.norm(expected, axis=-1, keepdims=True)).reshape(-1, 3)
    data = answer_file(body)
    normals = load_mesh(data).vertex_normals if output == "glb" else ply_normals(data)
    np.testing.assert_allclose(normals, expected, atol=1e-5)
    # and the depth is the plain relief's: the normal pass changed only the normals
    plain = client.post("/depth/sync", json={**request, "output": output}).get_json()
    assert plain.get("normals") != body["normals"]
    np.testing.assert_array_equal(
        trimesh.load(io.BytesIO(answer_file(plain)), file_type=output, force="mesh"
                     if output == "glb" else None).vertices,
        trimesh.load(io.BytesIO(data), file_type=output, force="mesh"
                     if output == "glb" else None).vertices)


@pytest.mark.parametrize("request_fields, says", [
    ({"output": "png", "normal_model": "normal-d-v1-1"}, "needs output glb or ply"),
    ({"output": "glb", "normal_model": "normal-g-v1-1"}, "normal_model normal-g-v1-1 is not served"),
    ({"output": "glb", "normal_model": "depth-d-v1-0"}, "normal_model"),
])
def test_a_normal_model_that_cannot_light_the_relief_is_400(make_client, lotus, request_fields,
                                                            says):
    client = make_client({"lotus": lotus})
    response = client.post("/depth", json={"image": image_b64(), **request_fields})
    assert response.status_code == 400 and says in response.get_json()["error"]
    queue = client.get("/health").get_json()["queue"]
    assert queue["queued"] == queue["processing"] == 0  # refused before it was queued


def test_a_batch_lights_only_the_reliefs_that_ask(lotus, tmp_path):
    from pipelines.lotus import DepthRequest

    photo = Image.open(io.BytesIO(image_bytes(width=40, height=30)))
    asks = DepthRequest(image="x", output="glb", processing_res=32, normal_model="normal-d-v1-1")
    plain = asks.model_copy(update={"normal_model": None})
    stages = []
    lit, unlit = lotus.run_batch(
        [(asks, photo, tmp_path / "lit"), (plain, photo, tmp_path / "unlit")],
        lambda stage, fraction: stages.append((stage, fraction)))
    assert "normal-d-v1-1" in lit.info["normals"]
    assert unlit.info["normals"] == "from the relief's triangles"
    lit_mesh, unlit_mesh = (load_mesh(result.path.read_bytes()) for result in (lit, unlit))
    np.testing.assert_array_equal(lit_mesh.vertices, unlit_mesh.vertices)  # one depth pass
    assert not np.allclose(lit_mesh.vertex_normals, unlit_mesh.vertex_normals)
    fractions = [fraction for _, fraction in stages]
    assert fractions == sorted(fractions) and any(s.startswith("normals:") for s, _ in stages)
