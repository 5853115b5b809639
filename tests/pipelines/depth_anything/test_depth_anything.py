"""Depth Anything V2 (pipelines/depth_anything): our model against transformers' own
depth-estimation pipeline on the same tiny random-weight checkpoints
(scripts/make_tiny_checkpoints.py: the real architecture and processor, narrow).

The reference is `transformers.pipeline("depth-estimation", model=folder)`'s
`predicted_depth`, one photo per call, as transformers runs it. Tolerance: a photo alone is
the same computation, so bit-for-bit equal; photos batched into one forward pass differ in
the last bits of float32 (a batched matmul sums in another order): within 1e-5 of the map's
largest magnitude (seen: under 1e-6).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))

from make_tiny_checkpoints import make_depth_anything  # noqa: E402
from pipelines.depth_anything import (DA2_MODELS, TEST_CHECKPOINT_MARKER,  # noqa: E402
                                      is_test_checkpoint, missing_files)
from pipelines.depth_anything.cost import (MAX_PROCESSING_MEGAPIXELS, processing_size,  # noqa: E402
                                           refusal, time_limit)
from pipelines.depth_anything.model import DepthAnythingV2  # noqa: E402

RELATIVE, INDOOR, OUTDOOR = ("depth-anything-v2-small", "depth-anything-v2-metric-indoor-small",
                             "depth-anything-v2-metric-outdoor-small")
BATCH_TOLERANCE = 1e-5
# (width, height): landscape, portrait with odd sides, square, and one whose sides are
# already multiples of 14 and at the processing size (no resize)
SIZES = [(64, 48), (37, 101), (518, 392)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    for name in DA2_MODELS:
        make_depth_anything(root, 0, name)
    return root


@pytest.fixture(scope="module")
def models(checkpoints) -> dict[str, DepthAnythingV2]:
    return {name: DepthAnythingV2.from_pretrained(checkpoints / model.folder)
            for name, model in DA2_MODELS.items()}


@pytest.fixture(scope="module")
def references(checkpoints):
    """transformers' own pipelines on the same folders."""
    return {name: transformers.pipeline("depth-estimation", model=str(checkpoints / model.folder),
                                        device="cpu")
            for name, model in DA2_MODELS.items() if name in (RELATIVE, INDOOR)}


def photo(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth gradient under noise: structure the maps can follow, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width, 1), y * 255 / max(height, 1),
                     np.full_like(x, 128 + 40 * seed % 128)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def reference(pipe, image: Image.Image) -> np.ndarray:
    return pipe(image)["predicted_depth"].numpy()


@pytest.mark.parametrize("name", [RELATIVE, INDOOR])
@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_one_photo_is_transformers_pipeline_bit_for_bit(models, references, name, size):
    image = photo(*size, seed=1)
    ours = models[name]([image])
    theirs = reference(references[name], image)
    assert ours.shape == (1, size[1], size[0]) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours[0], theirs)
    assert ours.std() > 0.01 * np.abs(ours).max()  # a map, not a constant


@pytest.mark.parametrize("size", [(20, 1), (20, 3), (3, 20)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_photo_one_or_three_pixels_tall_is_read_as_pixels(models, references, size):
    """transformers guesses the array's layout from its shape and takes (1 or 3, W, 3) for
    channels-first: the pipeline fails on such a photo or misreads it. Ours states
    channels-last; the reference is the pipeline with its processor told the same. The map
    keeps its (H, W) shape where the pipeline's .squeeze() makes a 1-pixel-tall one a row."""
    image = photo(*size, seed=2)
    pipe = references[RELATIVE]
    processor = pipe.image_processor
    told = type(processor)(**processor.to_dict())
    told.preprocess = lambda images, **kw: type(processor).preprocess(
        told, images, input_data_format="channels_last", **kw)
    pipe.image_processor = told
    try:
        theirs = reference(pipe, image)
    finally:
        pipe.image_processor = processor
    ours = models[RELATIVE]([image])[0]
    np.testing.assert_array_equal(ours, theirs.reshape(size[1], size[0]))


@pytest.mark.parametrize("name", [RELATIVE, INDOOR])
def test_photos_of_different_sizes_each_equal_the_pipeline_in_order(models, references, name):
    """Landscape, portrait, odd sides; two photos of one size (one forward pass) among them."""
    images = [photo(64, 48, 1), photo(37, 101, 2), photo(200, 150, 3), photo(64, 48, 4),
              photo(33, 33, 5)]
    maps = models[name].predict(images)
    assert [depth.shape for depth in maps] == [image.size[::-1] for image in images]
    for image, depth in zip(images, maps):
        theirs = reference(references[name], image)
        assert np.abs(depth - theirs).max() <= BATCH_TOLERANCE * np.abs(theirs).max()
    assert not np.allclose(maps[0], maps[3])  # same size, different photos, different maps


def test_a_batch_of_one_size_stacks_and_mixed_sizes_are_refused(models, references):
    images = [photo(64, 48, seed) for seed in range(3)]
    stacked = models[RELATIVE](images)
    assert stacked.shape == (3, 48, 64)
    for image, depth in zip(images, stacked):
        theirs = reference(references[RELATIVE], image)
        assert np.abs(depth - theirs).max() <= BATCH_TOLERANCE * np.abs(theirs).max()
    with pytest.raises(ValueError, match="different sizes"):
        models[RELATIVE]([photo(64, 48), photo(48, 64)])


def test_photos_are_read_as_the_pipeline_reads_them(models, references):
    """EXIF orientation applied (the map has the upright photo's size), grey and RGBA
    photos converted to RGB, as transformers' load_image does."""
    upright = photo(40, 70, 6)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown after a 90-degree turn clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="PNG", exif=exif)
    turned = Image.open(io.BytesIO(buffer.getvalue()))
    assert turned.size == (70, 40)
    images = [turned, photo(45, 30, 7, "L"), photo(30, 45, 8, "RGBA")]
    maps = models[RELATIVE].predict(images)
    assert maps[0].shape == (70, 40)
    for image, ours in zip(images, maps):  # three sizes: three forward passes, as the pipeline's
        np.testing.assert_array_equal(ours, reference(references[RELATIVE], image))


def test_kind_says_disparity_or_metres_as_the_catalog_does(models):
    for name, model in DA2_MODELS.items():
        loaded = models[name]
        assert (loaded.kind, loaded.max_depth) == (model.kind, model.max_depth)
        assert loaded.disparity is model.disparity is (model.kind == "relative")
    assert models[INDOOR].max_depth == 20 and models[OUTDOOR].max_depth == 80


def test_metric_maps_are_metres_within_max_depth(models, checkpoints):
    """The head is sigmoid x max_depth (modeling_depth_anything.py:337-356): the outdoor and
    indoor tiny checkpoints share their weights (one seed), so the outdoor map is the indoor
    one times 80/20, and each lies in [0, max_depth]."""
    images = [photo(64, 48, 1), photo(37, 101, 2)]
    indoor, outdoor = models[INDOOR].predict(images), models[OUTDOOR].predict(images)
    for small, large in zip(indoor, outdoor):
        np.testing.assert_allclose(large, small * 4, rtol=1e-5)
        assert 0 <= small.min() and small.max() <= 20 and large.max() <= 80
        assert large.max() - large.min() > 1  # metres apart, not a normalised [0, 1] map


def test_processing_size_is_the_processors(models):
    model = models[RELATIVE]
    for width, height in [*SIZES, (1000, 750), (750, 1000), (1000, 30), (20, 1)]:
        pixels = model.processor(images=photo(width, height), return_tensors="pt",
                                 input_data_format="channels_last")["pixel_values"]
        assert model.processing_size(width, height) == tuple(pixels.shape[-2:])


def test_the_cost_module_knows_the_processing_size_without_torch(models):
    """cost.processing_size (stdlib, for the HTTP process) is the processor's own
    get_resize_output_image_size, for photos of every shape."""
    rng = np.random.default_rng(0)
    sizes = [*SIZES, (1, 1), (20, 1), (90, 1), (2000, 10), (4000, 3000), (3000, 4000),
             (517, 519), (7, 7000), *(tuple(int(v) for v in rng.integers(1, 5000, 2))
                                      for _ in range(200))]
    for width, height in sizes:
        assert processing_size(width, height) == models[RELATIVE].processing_size(width, height)


def test_photos_the_model_cannot_serve_are_refused_before_work():
    assert "2000x10 photo is too narrow" in refusal(2000, 10)
    long_thin = refusal(300, 6000)  # seen at 518 x 10360: 5.4 megapixels
    assert "too long and thin" in long_thin and f"at most {MAX_PROCESSING_MEGAPIXELS:g}" in long_thin
    assert refusal(4000, 3000) is refusal(300, 4000) is refusal(1, 1) is None
    # about the same work for any 4:3 photo (seen at 518 on its shorter side), more on CPU
    assert time_limit(640, 480, "cpu") == time_limit(4000, 3000, "cpu")
    assert time_limit(640, 480, "cuda") < time_limit(640, 480, "cpu") < time_limit(
        300, 3000, "cpu") < time_limit(300, 3000, "cpu", photos=2)


def test_a_photo_too_narrow_to_process_is_refused_by_name(models):
    """The processor would resize a 2000x10 strip to 0 pixels tall (and fail deep inside);
    ours says so first."""
    with pytest.raises(ValueError, match="2000x10 photo is too narrow"):
        models[RELATIVE].predict([photo(2000, 10)])


def test_a_broken_checkpoint_folder_names_what_is_missing(checkpoints, tmp_path):
    source = checkpoints / DA2_MODELS[RELATIVE].folder
    with pytest.raises(FileNotFoundError, match="is missing: the folder .*absent"):
        DepthAnythingV2.from_pretrained(tmp_path / "absent")
    for removed, named in (("preprocessor_config.json", "preprocessor_config.json"),
                           ("model.safetensors", "model.safetensors or pytorch_model.bin"),
                           ("config.json", "config.json")):
        broken = tmp_path / removed
        shutil.copytree(source, broken)
        (broken / removed).unlink()
        assert missing_files(broken) == [named]
        with pytest.raises(FileNotFoundError, match=f"is missing: {named}$"):
            DepthAnythingV2.from_pretrained(broken)
    other = tmp_path / "other"
    shutil.copytree(source, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "dpt"}))
    with pytest.raises(ValueError, match="holds a dpt model, not Depth Anything"):
        DepthAnythingV2.from_pretrained(other)


def test_test_weights_are_told_from_real_ones_by_the_backbone(checkpoints, tmp_path):
    folder = checkpoints / DA2_MODELS[INDOOR].folder
    assert is_test_checkpoint(folder) and (folder / TEST_CHECKPOINT_MARKER).is_file()
    real = tmp_path / "real"
    real.mkdir()
    config = json.loads((folder / "config.json").read_text())
    config["backbone_config"]["hidden_size"] = 384  # ViT-S, as the published config
    (real / "config.json").write_text(json.dumps(config))
    assert not is_test_checkpoint(real)
    assert not is_test_checkpoint(tmp_path / "absent")


def test_the_catalog_script_says_which_folders_hold_test_weights(checkpoints, tmp_path):
    """As scripts/download_checkpoints.sh runs it: the file alone, standard library only."""
    def run(*args):
        return subprocess.run([sys.executable, "pipelines/depth_anything/catalog.py", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    test = run(str(checkpoints), DA2_MODELS[OUTDOOR].repo_id)
    assert test.returncode == 1 and "holds TEST weights" in test.stderr
    assert run(str(tmp_path), RELATIVE).returncode == 0  # absent: nothing to replace
    assert run(str(tmp_path), "depth-anything-v2-large").returncode == 2
