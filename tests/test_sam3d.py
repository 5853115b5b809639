"""SAM 3D Objects' wrapper, around the stand-in (tests/sam3d_stand_in, same shape as upstream):
masks, arguments per option, files, progress, memory admission and out-of-memory."""

import logging
import sys

import numpy as np
import onnx
import pytest
import torch
import trimesh
from onnx import TensorProto, helper
from PIL import Image

from conftest import SAM3D_STAND_IN
from pipelines.base import PipelineError
from pipelines.sam3d import (GenerateRequest, Masker, Sam3DObjects, center_mask, find_config,
                             import_inference, servable_outputs)
from queue_manager import JobQueue, JobState

PLY_3DGS_FIELDS = (["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
                   + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


@pytest.fixture
def model(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "pipeline.yaml").write_text("stand-in\n")
    sam3d = Sam3DObjects(tmp_path / "ck", SAM3D_STAND_IN, masker=Masker(None), vram_gib=24.0)
    sam3d.load()
    stand_in = sys.modules["inference"]
    stand_in.CALLS.clear()
    sys.modules["sam3d_objects.model.backbone.tdfy_dit.utils.postprocessing_utils"].CALLS.clear()
    return sam3d


def glb_calls():
    return sys.modules["sam3d_objects.model.backbone.tdfy_dit.utils.postprocessing_utils"].CALLS


def run_calls():
    return sys.modules["inference"].CALLS


def photo(mode="RGB", size=(40, 30)):
    array = np.full((size[1], size[0], len(mode)), 90, dtype=np.uint8)
    if mode == "RGBA":
        array[..., 3] = 0
        array[5:20, 10:30, 3] = 255
    return Image.fromarray(array, mode)


def generate(model, tmp_path, image=None, **options):
    stages = []
    result = model.run(GenerateRequest(image="x", **options), image or photo(), tmp_path / "job",
                       lambda stage, fraction: stages.append(stage))
    return result, stages


def test_textured_glb_passes_the_baking_options_and_loads_as_a_textured_mesh(model, tmp_path):
    result, stages = generate(model, tmp_path, output_format="glb", with_texture=True, seed=7,
                              stage1_steps=12, stage2_steps=8, texture_size=512, simplify=0.5)
    call = run_calls()[-1]
    assert call["seed"] == 7 and call["mask"] is None and call["stage1_only"] is False
    assert (call["with_mesh_postprocess"], call["with_texture_baking"],
            call["use_vertex_color"]) == (True, True, False)
    assert (call["stage1_inference_steps"], call["stage2_inference_steps"]) == (12, 8)
    assert call["decode_formats"] is None
    assert call["image_shape"] == (30, 40, 4) and call["image_dtype"] == "uint8"
    assert glb_calls()[-1]["texture_size"] == 512 and glb_calls()[-1]["simplify"] == 0.5
    assert stages == ["segmenting", "sparse structure", "structured latent", "decoding",
                      "texture baking", "export"]
    assert result.media_type == "model/gltf-binary" and result.download_name == "model.glb"
    mesh = trimesh.load(result.path, file_type="glb", force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.kind == "texture"


def test_vertex_coloured_glb_skips_baking(model, tmp_path):
    result, stages = generate(model, tmp_path, output_format="glb", with_texture=False)
    call = run_calls()[-1]
    assert (call["with_texture_baking"], call["use_vertex_color"]) == (False, True)
    assert "texture baking" not in stages and "mesh postprocess" in stages
    mesh = trimesh.load(result.path, file_type="glb", force="mesh")
    assert mesh.visual.kind == "vertex"


def test_ply_decodes_only_gaussians_and_has_the_3dgs_fields(model, tmp_path):
    result, _ = generate(model, tmp_path, output_format="ply")
    call = run_calls()[-1]
    assert call["decode_formats"] == ["gaussian"] and call["with_mesh_postprocess"] is False
    assert not glb_calls()
    header = result.path.read_bytes().split(b"end_header", 1)[0].decode().splitlines()
    properties = [line.split()[-1] for line in header if line.startswith("property")]
    assert set(PLY_3DGS_FIELDS) <= set(properties)
    assert result.download_name == "model.ply"


def test_an_alpha_channel_that_carries_a_mask_is_used_as_is(model, tmp_path):
    image = photo("RGBA")
    generate(model, tmp_path, image=image)
    np.testing.assert_array_equal(run_calls()[-1]["alpha"], np.asarray(image)[..., 3])


def test_without_alpha_or_rembg_a_centre_mask_is_used_and_logged(model, tmp_path, caplog):
    opaque = Image.fromarray(np.full((30, 40, 4), 255, dtype=np.uint8), "RGBA")
    with caplog.at_level(logging.INFO):
        generate(model, tmp_path, image=opaque)
    assert "Using center mask (rembg not available)" in caplog.text
    np.testing.assert_array_equal(run_calls()[-1]["alpha"], center_mask(30, 40))
    assert center_mask(30, 40)[15, 20] == 255 and center_mask(30, 40)[0, 0] == 0


def brightness_onnx(path):
    """A tiny stand-in for u2net: the mask is the image's brightness."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input.1"], ["mean"], axes=[1], keepdims=1)],
        "brightness", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                     [1, 3, 320, 320])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 1, 320, 320])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                ir_version=8), path)


def test_rembg_segments_when_its_model_is_present(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    brightness_onnx(tmp_path / "u2net.onnx")
    masker = Masker.create()
    assert masker.session is not None
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[16:48, 16:48] = 250
    rgba = masker(Image.fromarray(array))
    assert rgba.shape == (64, 64, 4)
    assert rgba[32, 32, 3] > 200 and rgba[2, 2, 3] < 50


def test_rembg_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    assert Masker.create().session is None


@pytest.mark.parametrize("vram, expected", [
    (None, {"ply": False, "glb": False, "glb_textured": False}),
    (16.0, {"ply": True, "glb": False, "glb_textured": False}),
    (20.0, {"ply": True, "glb": True, "glb_textured": False}),
    (23.6, {"ply": True, "glb": True, "glb_textured": True}),
])
def test_servable_outputs_follow_the_guides_memory_table(vram, expected):
    assert servable_outputs(vram) == expected


def test_a_request_that_cannot_fit_is_refused_before_any_work(model, tmp_path):
    model.vram_gib = 16.0
    with pytest.raises(PipelineError, match="glb_textured needs about 22 GiB") as error:
        model.check(GenerateRequest(image="x", output_format="glb"))
    assert error.value.status == 507
    model.check(GenerateRequest(image="x", output_format="ply"))


def test_out_of_memory_fails_the_job_with_the_guides_advice_and_the_next_runs(model, tmp_path):
    queue = JobQueue({"sam3d": model}, tmp_path / "out")
    queue.start()
    try:
        sys.modules["inference"].FAIL_WITH = torch.cuda.OutOfMemoryError("CUDA out of memory")
        failed = queue.submit("sam3d", GenerateRequest(image="x"), photo())
        after = queue.submit("sam3d", GenerateRequest(image="x", output_format="ply"), photo())
        failed = queue.wait(failed.id, 10)
        assert failed.state is JobState.FAILED and failed.error_status == 507
        assert '"ply"' in failed.error and "with_texture" in failed.error
        assert queue.wait(after.id, 10).state is JobState.COMPLETED
    finally:
        queue.stop()


def test_health_lists_what_this_gpu_can_serve(make_client, tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "pipeline.yaml").write_text("stand-in\n")
    client = make_client({"sam3d": Sam3DObjects(tmp_path / "ck", SAM3D_STAND_IN,
                                                masker=Masker(None), vram_gib=16.0)})
    body = client.get("/health").get_json()
    assert body["capabilities"]["sam3d"] == {"ply": True, "glb": False, "glb_textured": False}


def test_checkpoints_are_found_in_the_guides_layout_and_upstreams(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "pipeline.yaml").write_text("x")
    assert find_config(tmp_path) == tmp_path / "hf" / "pipeline.yaml"
    (tmp_path / "pipeline.yaml").write_text("x")
    assert find_config(tmp_path) == tmp_path / "pipeline.yaml"
    with pytest.raises(FileNotFoundError, match="no pipeline.yaml"):
        find_config(tmp_path / "nowhere")


def test_a_missing_source_tree_says_which_setting_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="SAM3D_SOURCE_DIR"):
        import_inference(tmp_path)
