"""SAM 3D Objects' wrapper, around the stand-in (tests/sam3d_stand_in, upstream's exact
signatures and flag semantics): the arguments each output sends, the files it writes, masks,
progress, memory admission and out-of-memory."""

import importlib
import json
import logging
import os
import struct
import sys

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from conftest import SAM3D_STAND_IN, sam3d_checkpoints
from pipelines.errors import FailureKind, InvalidInput, PipelineError
from pipelines.sam3d_parts.masks import Masker, center_mask
from pipelines.sam3d import GenerateRequest, Sam3DObjects
from pipelines.sam3d_parts.memory import servable_outputs
from pipelines.sam3d_parts.upstream import find_config, import_inference
from queue_manager import JobQueue, JobState
from stand_ins import brightness_onnx

PLY_3DGS_FIELDS = (["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
                   + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
STAND_IN = "sam3d_objects.model.backbone.tdfy_dit.utils."


@pytest.fixture
def model(tmp_path):
    sam3d = Sam3DObjects(sam3d_checkpoints(tmp_path / "ck"), SAM3D_STAND_IN,
                         masker=Masker(None), vram_gib=40.0)
    sam3d.load()
    for calls in (run_calls(), glb_calls(), render_calls()):
        calls.clear()
    return sam3d


def run_calls():
    return sys.modules["sam3d_objects.pipeline.inference_pipeline"].CALLS


def glb_calls():
    return sys.modules[STAND_IN + "postprocessing_utils"].CALLS


def render_calls():
    return sys.modules[STAND_IN + "render_utils"].CALLS


def photo(mode="RGB", size=(40, 30)):
    array = np.full((size[1], size[0], len(mode)), 90, dtype=np.uint8)
    if mode == "RGBA":
        array[..., 3] = 0
        array[5:20, 10:30, 3] = 255
    return Image.fromarray(array, mode)


def generate(model, tmp_path, image=None, **options):
    stages = []
    result = model.run(GenerateRequest(image="x", **options), image or photo("RGBA"),
                       tmp_path / "job", lambda stage, fraction: stages.append(stage))
    return result, stages


def glb_json(path):
    """The glTF JSON chunk of a GLB file, as a viewer reads it."""
    data = path.read_bytes()
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert data[:4] == b"glTF" and kind == b"JSON"
    return json.loads(data[20:20 + length])


def test_textured_glb_bakes_with_gsplat_and_carries_a_texture_image(model, tmp_path):
    result, stages = generate(model, tmp_path, output_format="glb", with_texture=True, seed=7,
                              stage1_steps=12, stage2_steps=8, texture_size=512, simplify=0.5)
    call = run_calls()[-1]
    assert call["seed"] == 7 and call["stage1_only"] is False
    assert (call["with_mesh_postprocess"], call["with_texture_baking"],
            call["use_vertex_color"]) == (True, True, False)
    assert call["decode_formats"] == ["gaussian", "mesh"]
    assert (call["ss_steps"], call["slat_steps"]) == (12, 8)
    assert glb_calls()[-1]["texture_size"] == 512 and glb_calls()[-1]["simplify"] == 0.5
    assert glb_calls()[-1]["rendering_engine"] == "pytorch3d"  # what Inference sets
    assert render_calls()[-1]["backend"] == "gsplat"
    assert stages == ["segmenting", "point map", "sparse structure", "structured latent", "decoding",
                      "texture baking", "export"]
    assert result.media_type == "model/gltf-binary" and result.download_name == "model.glb"
    gltf = glb_json(result.path)
    assert gltf["images"] and "baseColorTexture" in gltf["materials"][0]["pbrMetallicRoughness"]
    mesh = trimesh.load(result.path, file_type="glb", force="mesh")
    assert mesh.visual.kind == "texture" and mesh.visual.material.baseColorTexture.size == (512, 512)


def test_vertex_coloured_glb_uses_upstreams_flags_and_has_colour_per_vertex(model, tmp_path):
    result, stages = generate(model, tmp_path, output_format="glb", with_texture=False)
    call = run_calls()[-1]
    assert (call["with_mesh_postprocess"], call["with_texture_baking"],
            call["use_vertex_color"]) == (False, False, True)
    assert call["decode_formats"] == ["mesh"] and not render_calls()
    assert "texture baking" not in stages and "mesh" in stages
    gltf = glb_json(result.path)
    assert "COLOR_0" in gltf["meshes"][0]["primitives"][0]["attributes"]
    mesh = trimesh.load(result.path, file_type="glb", force="mesh")
    assert mesh.visual.kind == "vertex"
    assert len(np.unique(mesh.visual.vertex_colors, axis=0)) > 1


def test_ply_decodes_only_gaussians_and_has_the_3dgs_fields(model, tmp_path):
    result, _ = generate(model, tmp_path, output_format="ply")
    call = run_calls()[-1]
    assert call["decode_formats"] == ["gaussian"] and call["with_mesh_postprocess"] is False
    assert not glb_calls()
    header = result.path.read_bytes().split(b"end_header", 1)[0].decode().splitlines()
    properties = [line.split()[-1] for line in header if line.startswith("property")]
    assert set(PLY_3DGS_FIELDS) <= set(properties)
    assert int(header[2].split()[-1]) > 0
    assert result.download_name == "model.ply"


def test_omitted_steps_leave_the_checkpoints_own_defaults(model, tmp_path):
    generate(model, tmp_path, output_format="ply")
    call = run_calls()[-1]
    assert call["stage1_inference_steps"] is None and call["stage2_inference_steps"] is None
    assert (call["ss_steps"], call["slat_steps"]) == (25, 25)  # from pipeline.yaml


def test_the_seed_decides_the_result(model, tmp_path):
    def ply(seed, name):
        result, _ = generate(model, tmp_path / name, output_format="ply", seed=seed)
        return result.path.read_bytes()

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    assert ply(3, "a") == ply(3, "b") != ply(4, "c")


def test_a_soft_alpha_is_binarised_before_the_model_sees_it(model, tmp_path):
    """A faint haze over the background must not make the whole photo the object."""
    array = np.full((30, 40, 4), 90, dtype=np.uint8)
    array[..., 3] = 3  # background removal's haze
    array[10:20, 15:25, 3] = 200
    array[9, 15:25, 3] = 60  # soft edge
    generate(model, tmp_path, image=Image.fromarray(array, "RGBA"))
    call = run_calls()[-1]
    assert set(np.unique(call["alpha"])) == {0, 255}
    assert call["object_box"] == (15, 10, 24, 19)


def test_an_alpha_channel_that_is_already_a_mask_is_kept(model, tmp_path):
    image = photo("RGBA")
    generate(model, tmp_path, image=image)
    np.testing.assert_array_equal(run_calls()[-1]["alpha"], np.asarray(image)[..., 3])


def test_an_alpha_that_marks_no_object_is_a_clear_400(model, tmp_path):
    array = np.full((30, 40, 4), 90, dtype=np.uint8)
    array[..., 3] = 0
    array[5:10, 5:10, 3] = 100  # nothing even half opaque
    with pytest.raises(InvalidInput, match="no object found: the image's alpha channel"):
        generate(model, tmp_path, image=Image.fromarray(array, "RGBA"))
    assert not run_calls()


def test_without_alpha_or_rembg_a_centre_mask_is_used_and_logged(model, tmp_path, caplog):
    opaque = Image.fromarray(np.full((30, 40, 4), 255, dtype=np.uint8), "RGBA")
    with caplog.at_level(logging.INFO):
        generate(model, tmp_path, image=opaque)
    assert "Using center mask (rembg not available)" in caplog.text
    np.testing.assert_array_equal(run_calls()[-1]["alpha"], center_mask(30, 40))
    assert center_mask(30, 40)[15, 20] == 255 and center_mask(30, 40)[0, 0] == 0


def test_loading_works_outside_an_activated_conda_env(tmp_path, monkeypatch):
    """Upstream's inference.py reads CONDA_PREFIX at import (KeyError without it)."""
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    monkeypatch.delitem(sys.modules, "inference", raising=False)
    monkeypatch.syspath_prepend(str(SAM3D_STAND_IN / "notebook"))
    with pytest.raises(KeyError, match="CONDA_PREFIX"):
        importlib.import_module("inference")
    monkeypatch.delitem(sys.modules, "inference", raising=False)
    import_inference(SAM3D_STAND_IN)
    assert os.environ["CUDA_HOME"] == sys.prefix


def test_sam3d_compile_turns_on_upstreams_compile(tmp_path):
    sam3d = Sam3DObjects(sam3d_checkpoints(tmp_path), SAM3D_STAND_IN, masker=Masker(None),
                         vram_gib=40.0, compile=True)
    sam3d.load()
    assert sam3d.inference._pipeline.compile_model is True


def test_rembg_segments_when_its_model_is_present(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    brightness_onnx(tmp_path / "u2net.onnx")
    masker = Masker.create()
    assert masker.session is not None
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[16:48, 16:48] = 250
    rgba = masker(Image.fromarray(array))
    assert rgba.shape == (64, 64, 4)
    assert rgba[32, 32, 3] == 255 and rgba[2, 2, 3] == 0
    assert set(np.unique(rgba[..., 3])) == {0, 255}  # rembg's soft mask, binarised
    with pytest.raises(InvalidInput, match="no object found: background removal"):
        masker(Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)))


def test_rembg_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    assert Masker.create().session is None


@pytest.mark.parametrize("vram, servable", [
    (None, False), (16.0, False), (23.6, False), (24.0, False), (31.4, True), (80.0, True)])
def test_servable_outputs_follow_upstreams_32_gb(vram, servable):
    assert servable_outputs(vram) == {"ply": servable, "glb": servable, "glb_textured": servable}


@pytest.mark.parametrize("vram, servable", [
    (None, (False, False, False)), (12.0, (False, False, False)), (15.6, (True, True, False)),
    (23.6, (True, True, True))])
def test_low_memory_mode_serves_16_gb_cards_ply_and_24_gb_cards_everything(vram, servable):
    assert tuple(servable_outputs(vram, offload=True).values()) == servable


@pytest.mark.parametrize("mode, vram, on", [
    ("auto", 23.6, True), ("auto", 80.0, False), ("auto", None, False), ("on", 80.0, True),
    ("off", 16.0, False)])
def test_sam3d_offload_auto_is_on_below_what_the_whole_model_needs(tmp_path, mode, vram, on):
    sam3d = Sam3DObjects(tmp_path, SAM3D_STAND_IN, vram_gib=vram, offload=mode)
    assert sam3d.low_memory is on


def test_a_request_that_cannot_fit_is_refused_before_any_work(model, tmp_path):
    model.vram_gib, model.offload_mode = 23.6, "off"
    for output in ({"output_format": "ply"}, {"output_format": "glb", "with_texture": False}):
        with pytest.raises(PipelineError, match="needs about 30 GiB") as error:
            model.check(GenerateRequest(image="x", **output))
        assert error.value.kind is FailureKind.OUT_OF_MEMORY and "23.6 GiB" in str(error.value)
    model.vram_gib, model.offload_mode = 15.6, "auto"
    model.check(GenerateRequest(image="x", output_format="ply"))
    with pytest.raises(PipelineError, match="needs about 22 GiB") as error:
        model.check(GenerateRequest(image="x", output_format="usdz"))
    assert not run_calls()


def test_out_of_memory_fails_the_job_with_the_guides_advice_and_the_next_runs(model, tmp_path):
    queue = JobQueue({"sam3d": model}, tmp_path / "out")
    queue.start()
    try:
        sys.modules["sam3d_objects.pipeline.inference_pipeline"].FAIL_WITH = \
            torch.cuda.OutOfMemoryError("CUDA out of memory")
        failed = queue.submit("sam3d", (GenerateRequest(image="x"), photo()))
        after = queue.submit("sam3d", (GenerateRequest(image="x", output_format="ply"), photo()))
        failed = queue.wait(failed.id, 10)
        assert failed.state is JobState.FAILED and failed.error_kind is FailureKind.OUT_OF_MEMORY
        assert '"ply"' in failed.error and "with_texture" in failed.error
        assert queue.wait(after.id, 10).state is JobState.COMPLETED
    finally:
        queue.stop()


def test_health_lists_what_this_gpu_can_serve(make_client, tmp_path):
    client = make_client({"sam3d": Sam3DObjects(sam3d_checkpoints(tmp_path / "ck"),
                                                SAM3D_STAND_IN, masker=Masker(None),
                                                vram_gib=24.0, offload="off")})
    body = client.get("/health").get_json()
    assert body["capabilities"]["sam3d"] == {"ply": False, "glb": False, "glb_textured": False}


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


def test_sam3d_gives_no_time_limit_of_its_own_yet():
    """The queue keeps JOB_TIMEOUT_SECONDS for 3D jobs; no model is needed to ask."""
    assert Sam3DObjects.time_limit(GenerateRequest(image="x"), Image.new("RGB", (64, 48))) is None
