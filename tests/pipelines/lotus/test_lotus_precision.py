"""Lotus in half precision: fp16 weights on CUDA as upstream's --half_precision loads them
(infer.py:118-122, 149-157; autocast infer.py:180), fp32 on the CPU.

No GPU here, so fidelity to a half path is measured where one runs on the CPU. Upstream's
--half_precision itself does not (its fp16 weights stop in group_norm: "mixed dtype (CPU)",
which is why the CPU keeps fp32 weights); what runs is upstream's autocast on a CPU,
`torch.autocast("cpu")` (bfloat16 matrix arithmetic, infer.py:180), through
tests/lotus_reference.py (upstream's pipeline.py, line by line), measured against our fp32
result on the same tiny checkpoint. The tolerance asserted is the one measured (bench/README).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from lotus_reference import upstream_lotus_d
from pipelines.lotus import CHECKPOINT_FOLDER
from pipelines.lotus.model import LotusDPipeline, weights_dtype

# measured here on the tiny checkpoint (scripts/make_tiny_checkpoints.py), 96 x 64 photos,
# seeds 0-2: max |bf16 autocast path - fp32| 0.076, 0.038, 0.038 of the [0, 1] range; mean
# 0.005 (bfloat16 keeps 8 bits of mantissa; fp16 on a GPU keeps 11, bench/gpu_check.sh)
HALF_PATH_TOLERANCE = 0.1
HALF_PATH_MEAN_TOLERANCE = 0.01


def test_half_precision_means_fp16_weights_on_cuda_only():
    assert weights_dtype("cuda", True) == torch.float16
    assert weights_dtype("cuda:0", True) == torch.float16
    assert weights_dtype("cuda", False) == torch.float32
    assert weights_dtype("cpu", True) == torch.float32


def test_the_cpu_keeps_fp32_weights_with_half_precision_on(checkpoints):
    model = LotusDPipeline.from_pretrained(checkpoints / CHECKPOINT_FOLDER, "cpu",
                                           half_precision=True)
    assert {p.dtype for p in model.unet.parameters()} == {torch.float32}
    assert {p.dtype for p in model.vae.parameters()} == {torch.float32}


def _upstream_parts(folder, dtype):
    """As upstream's from_pretrained(..., torch_dtype=dtype) loads them."""
    return (UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype).eval(),
            AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype).eval(),
            CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype).eval(),
            CLIPTokenizer.from_pretrained(folder / "tokenizer"))


def _photo(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))


def test_upstreams_fp16_weights_do_not_run_on_a_cpu(checkpoints):
    """Why LOTUS_HALF_PRECISION leaves the CPU in fp32."""
    with pytest.raises(RuntimeError, match="mixed dtype"), torch.autocast("cpu"):
        upstream_lotus_d(*_upstream_parts(checkpoints / CHECKPOINT_FOLDER, torch.float16),
                         _photo(0), processing_res=96, latent="mode")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_upstreams_half_path_stays_within_tolerance_of_ours_in_fp32(checkpoints, seed):
    folder = checkpoints / CHECKPOINT_FOLDER
    image = _photo(seed)
    ours = LotusDPipeline.from_pretrained(folder, "cpu")
    full = ours([image], processing_res=96, latent="mode")[0].mean(axis=-1)
    with torch.autocast("cpu"):  # infer.py:180 on a CPU: bfloat16
        half = upstream_lotus_d(*_upstream_parts(folder, torch.float32), image,
                                processing_res=96, latent="mode")
    difference = float(np.abs(half - full).max())
    print(f"seed {seed}: max |upstream half path - ours fp32| = {difference:.4f}, mean "
          f"{float(np.abs(half - full).mean()):.4f}")
    assert np.isfinite(half).all()
    assert 0 < difference < HALF_PATH_TOLERANCE  # a half path, and a faithful one
    assert float(np.abs(half - full).mean()) < HALF_PATH_MEAN_TOLERANCE
