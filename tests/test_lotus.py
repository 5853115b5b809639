"""Lotus-D on the tiny checkpoint: the real loading code, architecture and inference path."""

import io
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from conftest import ROOT, image_b64, wait_until
from pipelines.lotus import CHECKPOINT_FOLDER, DepthRequest, LotusDepth, LotusDepthPipeline


@pytest.fixture(scope="module")
def lotus(checkpoints):
    model = LotusDepth(checkpoints)
    model.load()
    return model


def photo(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def options(**kwargs):
    return DepthRequest(image="x", **kwargs)


def test_pipeline_equals_a_step_by_step_reference(lotus, checkpoints):
    """The computation the model card describes, written out with the stock classes."""
    folder = checkpoints / CHECKPOINT_FOLDER
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    image = photo(128, 96)

    with torch.no_grad():
        x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        x = x / 127.5 - 1.0
        x = F.interpolate(x, size=(48, 64), mode="bilinear", antialias=True)  # longer side 64
        ids = tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids
        assert ids.shape == (1, 2)
        prompt = text_encoder(ids)[0]
        latent = vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(7))
        latent = latent * vae.config.scaling_factor
        task = torch.tensor([[math.sin(1), math.sin(0), math.cos(1), math.cos(0)]])
        annotation = unet(latent, 999, encoder_hidden_states=prompt, class_labels=task).sample
        decoded = vae.decode(annotation / vae.config.scaling_factor).sample
        reference = ((decoded.clamp(-1, 1) + 1) / 2).mean(dim=1, keepdim=True)
        reference = F.interpolate(reference, size=(96, 128), mode="nearest-exact")[0, 0].numpy()

    ours = lotus.predict(options(processing_res=64, seed=7), image)
    assert ours.shape == (96, 128) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("size, processing_res", [
    ((37, 23), 64), ((30, 80), 64), ((1, 40), 64), ((50, 1), 32), ((45, 33), 0), ((64, 48), 64),
], ids=["odd", "portrait", "one-pixel-wide", "one-pixel-high", "native", "exact"])
def test_depth_comes_back_at_the_input_size(lotus, size, processing_res):
    depth = lotus.predict(options(processing_res=processing_res), photo(*size))
    assert depth.shape == (size[1], size[0])
    assert np.isfinite(depth).all() and 0.0 <= depth.min() <= depth.max() <= 1.0


def test_output_processing_res_returns_the_model_resolution(lotus):
    depth = lotus.predict(options(processing_res=64, output_processing_res=True), photo(200, 100))
    assert depth.shape == (32, 64)


@pytest.mark.parametrize("method", ["bilinear", "bicubic", "nearest"])
def test_each_resample_method_runs(lotus, method):
    assert lotus.predict(options(processing_res=48, resample_method=method),
                         photo(80, 60)).shape == (60, 80)


def test_seeds_make_runs_repeatable(lotus):
    image = photo(64, 48)
    first = lotus.predict(options(processing_res=64, seed=1), image)
    again = lotus.predict(options(processing_res=64, seed=1), image)
    other = lotus.predict(options(processing_res=64, seed=2), image)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    mode_a = lotus.predict(options(processing_res=64, seed=1, latent="mode"), image)
    mode_b = lotus.predict(options(processing_res=64, seed=2, latent="mode"), image)
    np.testing.assert_array_equal(mode_a, mode_b)


def test_a_batch_equals_images_run_one_by_one(lotus):
    images = [photo(64, 48, seed) for seed in range(3)]
    batch = lotus.model(images, processing_res=64, latent="mode")
    singles = [lotus.model([image], processing_res=64, latent="mode")[0] for image in images]
    np.testing.assert_allclose(batch, np.stack(singles), atol=1e-5)


def run_job(lotus, tmp_path, output):
    stages = []
    result = lotus.run(options(processing_res=64, output=output), photo(40, 30), tmp_path / "job",
                       lambda stage, fraction: stages.append(stage))
    return result, stages


def test_outputs_are_valid_files_consistent_with_min_and_max(lotus, tmp_path):
    raw, stages = run_job(lotus, tmp_path, "npy")
    assert stages == ["encoding", "predicting", "decoding", "writing"]
    values = np.load(raw.path)
    assert values.dtype == np.float32 and values.shape == (30, 40)
    assert (raw.info["min"], raw.info["max"]) == (float(values.min()), float(values.max()))
    normalized = (values - values.min()) / (values.max() - values.min())

    png, _ = run_job(lotus, tmp_path, "png")
    gray = np.asarray(Image.open(png.path))
    assert Image.open(png.path).mode == "L" and png.media_type == "image/png"
    np.testing.assert_array_equal(gray, np.round(normalized * 255).astype(np.uint8))
    assert png.info == raw.info

    png16, _ = run_job(lotus, tmp_path, "png16")
    deep = np.asarray(Image.open(png16.path)).astype(np.int64)
    assert deep.min() == 0 and deep.max() == 65535
    np.testing.assert_array_equal(deep, np.round(normalized * 65535).astype(np.int64))

    color, _ = run_job(lotus, tmp_path, "color")
    rgb = Image.open(color.path)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)


@pytest.mark.parametrize("field, value", [
    ("processing_res", -1), ("processing_res", 5000), ("resample_method", "lanczos"),
    ("output", "jpg"), ("timestep", 1000), ("disparity", False), ("seed", -5),
    ("output_processing_res", "yes"),
])
def test_bad_depth_options_are_400(make_client, lotus, field, value):
    client = make_client({"lotus": lotus})
    response = client.post("/depth", json={"image": image_b64(), field: value})
    assert response.status_code == 400 and field in response.get_json()["error"]


def test_depth_async_download_of_every_output(make_client, lotus):
    client = make_client({"lotus": lotus})
    expected = {"png": ("image/png", "depth.png"), "png16": ("image/png", "depth16.png"),
                "npy": ("application/octet-stream", "depth.npy"),
                "color": ("image/png", "depth_color.png")}
    for output, (media_type, name) in expected.items():
        job = client.post("/depth", json={"image": image_b64(width=40, height=30),
                                          "processing_res": 32, "output": output}).get_json()
        status = wait_until(lambda: (lambda b: b if b["status"] == "completed" else None)(
            client.get(f"/job/{job['job_id']}").get_json()))
        assert 0 <= status["min"] <= status["max"] <= 1
        download = client.get(status["download_url"])
        assert download.headers["Content-Type"] == media_type
        assert f"filename={name}" in download.headers["Content-Disposition"]
        if output == "npy":
            assert np.load(io.BytesIO(download.data)).shape == (30, 40)
        else:
            assert Image.open(io.BytesIO(download.data)).size == (40, 30)


def test_a_checkpoint_with_a_missing_part_fails_at_load_and_health_says_so(
        checkpoints, tmp_path, make_client):
    broken = tmp_path / "ck"
    shutil.copytree(checkpoints / CHECKPOINT_FOLDER, broken / CHECKPOINT_FOLDER)
    shutil.rmtree(broken / CHECKPOINT_FOLDER / "vae")
    with pytest.raises(FileNotFoundError, match="missing: vae"):
        LotusDepthPipeline.from_pretrained(broken / CHECKPOINT_FOLDER)
    client = make_client({"lotus": LotusDepth(broken)})
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["pipelines"] == {"lotus": "failed"}
    response = client.post("/depth", json={"image": image_b64()})
    assert response.status_code == 503 and "missing: vae" in response.get_json()["error"]


def test_a_folder_of_another_model_is_refused(checkpoints, tmp_path):
    other = tmp_path / CHECKPOINT_FOLDER
    shutil.copytree(checkpoints / CHECKPOINT_FOLDER, other)
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="not a Lotus-D checkpoint"):
        LotusDepthPipeline.from_pretrained(other)


def test_model_id_loads_from_the_hugging_face_cache_offline(checkpoints, tmp_path):
    """MODEL_ID through HF_HOME with HF_HUB_OFFLINE=1: read from the cache, never fetched."""
    repo = tmp_path / "hf" / "hub" / "models--someone--lotus-copy"
    shutil.copytree(checkpoints / CHECKPOINT_FOLDER, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    code = ("from pipelines.lotus import LotusDepth; m = LotusDepth('/nonexistent', "
            "'someone/lotus-copy'); m.load(); print(m.model.size_multiple)")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "16"
    missing = code.replace("someone/lotus-copy", "someone/not-cached")
    done = subprocess.run([sys.executable, "-c", missing], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
