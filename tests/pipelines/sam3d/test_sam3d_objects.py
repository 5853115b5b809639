"""SAM 3D Objects beyond the guide, through the real wrapper and the stand-in: the client's own
masks, several objects placed in one scene, OBJ / STL / USDZ files, poses and sizes in the job
status, and the low-memory mode. Each file is read back with the library of its format."""

import base64
import io
import sys
import zipfile

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from conftest import (SAM3D_STAND_IN, QuietHandler, local_http_server, sam3d_checkpoints,
                      wait_until)
from pipelines.sam3d_parts.masks import Masker
from pipelines.sam3d_parts.offload import StageOffload
from pipelines.sam3d import MAX_OBJECTS, GenerateRequest, Sam3DObjects

WIDTH, HEIGHT = 64, 48


def run_calls():
    return sys.modules["sam3d_objects.pipeline.inference_pipeline"].CALLS


def photo_b64() -> str:
    rng = np.random.default_rng(0)
    return png_b64(Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)))


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def box_mask(left, top, right, bottom, size=(WIDTH, HEIGHT), mode="L") -> str:
    """A mask PNG: `mode` L (white on black) or RGBA (opaque object, transparent rest)."""
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[top:bottom, left:right] = 255
    if mode == "RGBA":
        rgba = np.zeros((size[1], size[0], 4), dtype=np.uint8)
        rgba[..., 3] = mask
        return png_b64(Image.fromarray(rgba, "RGBA"))
    return png_b64(Image.fromarray(mask, "L"))


LEFT, RIGHT = box_mask(4, 10, 24, 40), box_mask(46, 20, 60, 30)


@pytest.fixture
def model(tmp_path):
    sam3d = Sam3DObjects(sam3d_checkpoints(tmp_path / "ck"), SAM3D_STAND_IN,
                         masker=Masker(None), vram_gib=40.0)
    sam3d.load()
    run_calls().clear()
    return sam3d


@pytest.fixture
def client(make_client, model):
    return make_client({"sam3d": model})


def finished(client, job_id):
    return wait_until(lambda: (lambda body: body if body["status"] in (
        "completed", "failed") else None)(client.get(f"/job/{job_id}").get_json()), timeout=30)


def submit(client, **body):
    return client.post("/generate", json={"image": photo_b64(), **body})


def download(client, **body):
    response = submit(client, **body)
    assert response.status_code == 202, response.get_json()
    status = finished(client, response.get_json()["job_id"])
    assert status["status"] == "completed", status
    return status, client.get(status["download_url"])


# -- masks ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_the_clients_mask_is_the_object_the_model_sees(client, mode):
    download(client, output_format="ply", mask=box_mask(10, 5, 30, 25, mode=mode))
    alpha = run_calls()[-1]["alpha"]
    expected = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    expected[5:25, 10:30] = 255
    np.testing.assert_array_equal(alpha, expected)  # not the centre box of Masker(None)


def test_a_mask_url_is_fetched_like_image_url(make_client, model):
    mask = base64.b64decode(box_mask(8, 8, 40, 40))

    class Handler(QuietHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(mask)))
            self.end_headers()
            self.wfile.write(mask)

    with local_http_server(Handler) as url:
        client = make_client({"sam3d": model}, allow_private_urls=True)
        download(client, output_format="ply", mask_url=f"{url}/mask.png")
    alpha = run_calls()[-1]["alpha"]
    assert alpha[8:40, 8:40].all() and alpha.sum() == 32 * 32 * 255


@pytest.mark.parametrize("body, message", [
    ({"mask": box_mask(0, 0, 10, 10, size=(32, 32))},
     "mask is 32x32 pixels; it must be the image's size, 64x48"),
    ({"mask": box_mask(0, 0, 0, 0)}, "mask is empty"),
    ({"mask": base64.b64encode(b"not an image at all").decode()}, "mask: not a supported image"),
    ({"masks": [LEFT, box_mask(0, 0, 5, 5, size=(48, 64))]}, "masks[1] is 48x64 pixels"),
    ({"masks": [LEFT] * (MAX_OBJECTS + 1)}, "masks: List should have at most 8 items"),
    ({"mask": LEFT, "masks": [RIGHT]}, "send at most one of 'mask', 'mask_url' or 'masks'"),
    ({"mask_url": "http://127.0.0.1/mask.png"}, "mask_url: "),
])
def test_a_bad_mask_is_a_400_that_says_which_and_queues_nothing(client, body, message):
    response = submit(client, **body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert client.get("/queue").get_json()["queued"] == 0 and not run_calls()


# -- scenes -----------------------------------------------------------------------------

def test_several_masks_make_one_glb_with_every_object_where_it_stands(model, tmp_path):
    stages = []
    result = model.run(GenerateRequest(image="x", masks=[LEFT, RIGHT], with_texture=False),
                       Image.open(io.BytesIO(base64.b64decode(photo_b64()))), tmp_path / "job",
                       lambda stage, fraction: stages.append((stage, fraction)))
    assert len(run_calls()) == 2
    assert all(call["with_layout_postprocess"] for call in run_calls())  # as Inference.__call__
    names = [stage for stage, _ in stages]
    assert "object 1 of 2: structured latent" in names
    assert "object 2 of 2: decoding" in names and names[-1] == "export"
    fractions = [fraction for _, fraction in stages]
    assert fractions == sorted(fractions) and fractions[-1] < 1

    scene = trimesh.load(result.path, file_type="glb")
    assert len(scene.geometry) == 2
    left, right = (scene.geometry[name] for name in ("object_0", "object_1"))
    # glTF: +X is the viewer's right. The photo's left object stands left of the right one,
    # and the wider mask made the bigger object.
    assert left.bounds.mean(axis=0)[0] < right.bounds.mean(axis=0)[0]
    assert np.ptp(left.vertices, axis=0).max() > np.ptp(right.vertices, axis=0).max()
    info = result.info
    assert [len(obj["rotation"]) for obj in info["objects"]] == [4, 4]
    assert info["objects"][0]["translation"][0] > info["objects"][1]["translation"][0]
    assert info["vertices"] == len(left.vertices) + len(right.vertices)
    assert info["faces"] == sum(obj["faces"] for obj in info["objects"])


def test_a_ply_scene_holds_every_objects_gaussians(client):
    status, response = download(client, output_format="ply", masks=[LEFT, RIGHT])
    header = response.data.split(b"end_header", 1)[0].decode().splitlines()
    count = int(next(line for line in header if line.startswith("element vertex")).split()[-1])
    assert count == status["gaussians"] == sum(obj["gaussians"] for obj in status["objects"])
    assert len(status["objects"]) == 2


def test_a_completed_job_tells_each_objects_pose_and_mesh_size(client):
    status, response = download(client, with_texture=False)
    (obj,) = status["objects"]
    assert set(obj) == {"rotation", "translation", "scale", "vertices", "faces"}
    assert len(obj["rotation"]) == 4 and len(obj["translation"]) == len(obj["scale"]) == 3
    mesh = trimesh.load(io.BytesIO(response.data), file_type="glb", force="mesh")
    assert (obj["vertices"], obj["faces"]) == (len(mesh.vertices), len(mesh.faces))
    assert status["vertices"] == obj["vertices"]


# -- file formats -----------------------------------------------------------------------

@pytest.mark.parametrize("with_texture", [True, False])
def test_obj_is_a_zip_of_mesh_material_and_texture_that_trimesh_loads(client, tmp_path,
                                                                     with_texture):
    status, response = download(client, output_format="obj", with_texture=with_texture)
    assert response.mimetype == "application/zip"
    assert "model_obj.zip" in response.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path)
    assert "model.obj" in names
    mesh = trimesh.load(tmp_path / "model.obj", force="mesh")
    assert len(mesh.faces) == status["faces"]
    if with_texture:
        assert "model.mtl" in names and any(name.endswith(".png") for name in names)
        assert mesh.visual.kind == "texture" and mesh.visual.material.image is not None
    else:
        assert mesh.visual.kind == "vertex"  # trimesh writes colours into the v lines


def test_stl_is_the_mesh_alone_without_baking(client):
    status, response = download(client, output_format="stl")
    assert run_calls()[-1]["with_texture_baking"] is False  # STL carries no colour
    mesh = trimesh.load(io.BytesIO(response.data), file_type="stl")
    assert len(mesh.faces) == status["faces"] and mesh.area > 0


@pytest.mark.parametrize("with_texture", [True, False])
def test_usdz_is_a_package_usd_opens_with_the_mesh_and_its_colours(client, tmp_path,
                                                                   with_texture):
    from pxr import Usd, UsdGeom, UsdShade

    status, response = download(client, output_format="usdz", with_texture=with_texture)
    path = tmp_path / "model.usdz"
    path.write_bytes(response.data)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist()[0].endswith(".usdc")  # USDZ: the layer first, then assets
        has_png = any(name.endswith(".png") for name in archive.namelist())
    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    meshes = [UsdGeom.Mesh(prim) for prim in stage.Traverse() if prim.IsA(UsdGeom.Mesh)]
    assert len(meshes) == 1
    assert len(meshes[0].GetFaceVertexCountsAttr().Get()) == status["faces"]
    material, _ = UsdShade.MaterialBindingAPI(meshes[0].GetPrim()).ComputeBoundMaterial()
    assert material
    primvars = UsdGeom.PrimvarsAPI(meshes[0])
    if with_texture:
        assert has_png and primvars.HasPrimvar("st")
    else:
        assert not has_png and len(primvars.GetPrimvar("displayColor").Get()) == len(
            meshes[0].GetPointsAttr().Get())


def test_a_scene_of_several_objects_exports_to_every_mesh_format(model, tmp_path):
    image = Image.open(io.BytesIO(base64.b64decode(photo_b64())))
    for output_format in ("obj", "stl", "usdz"):
        result = model.run(GenerateRequest(image="x", masks=[LEFT, RIGHT], with_texture=False,
                                           output_format=output_format),
                           image, tmp_path / output_format, lambda *_: None)
        assert result.path.stat().st_size > 0 and len(result.info["objects"]) == 2


# -- low-memory mode --------------------------------------------------------------------

@pytest.fixture
def low_memory(tmp_path):
    """The stand-in in low-memory mode. A CPU has one device, so float64 plays the GPU:
    `.to(torch.float64)` is a move each stage can see and `.to(torch.float32)` undoes."""
    sam3d = Sam3DObjects(sam3d_checkpoints(tmp_path / "ck"), SAM3D_STAND_IN,
                         masker=Masker(None), vram_gib=16.0, offload="auto")
    sam3d.load()
    assert sam3d.offload is not None
    sam3d.offload = StageOffload(sam3d.inference._pipeline, device=torch.float64,
                                 home=torch.float32)
    run_calls().clear()
    return sam3d


def on_gpu(stage_devices):
    return {name for name, (_, dtype) in stage_devices.items() if dtype == "torch.float64"}


@pytest.mark.parametrize("output_format, decoder", [
    ("ply", "slat_decoder_gs"), ("stl", "slat_decoder_mesh")])
def test_low_memory_mode_keeps_only_the_running_stages_sub_models_on_the_gpu(
        low_memory, tmp_path, output_format, decoder):
    image = Image.open(io.BytesIO(base64.b64decode(photo_b64())))
    low_memory.run(GenerateRequest(image="x", output_format=output_format), image,
                   tmp_path / "job", lambda *_: None)
    stages = run_calls()[-1]["devices"]
    assert on_gpu(stages["compute_pointmap"]) == {"depth_model"}
    assert on_gpu(stages["sample_sparse_structure"]) == {
        "ss_generator", "ss_decoder", "ss_condition_embedder"}
    assert on_gpu(stages["sample_slat"]) == {"slat_generator", "slat_condition_embedder"}
    assert on_gpu(stages["decode_slat"]) == {decoder}
    parked = {name: str(next(module.parameters()).dtype)
              for name, module in low_memory.offload.modules.items()}
    assert set(parked.values()) == {"torch.float32"}  # all back in CPU memory after the job


def test_low_memory_mode_restores_upstreams_loader_after_loading(low_memory):
    from sam3d_objects.pipeline.inference_pipeline import InferencePipeline

    assert InferencePipeline.instantiate_and_load_from_pretrained.__name__ == \
        "instantiate_and_load_from_pretrained"
    assert set(low_memory.offload.modules) == {
        "ss_generator", "slat_generator", "ss_decoder", "slat_decoder_gs", "slat_decoder_gs_4",
        "slat_decoder_mesh", "ss_condition_embedder", "slat_condition_embedder", "depth_model"}
