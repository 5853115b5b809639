#!/usr/bin/env python3
"""Lotus-D throughput: images per second and peak memory at 768 px.

    python bench/depth.py                      # tiny checkpoint, this machine (CPU or GPU)
    python bench/depth.py --arch sd2 --batch 1 8   # SD 2 sizes, random weights (for a GPU)

`--arch sd2` builds the real architecture (UNet 865M, VAE 84M, CLIP-H text 340M) with
random weights, which times the real computation without downloading the checkpoint.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_tiny_checkpoints import make_lotus, write_tokenizer  # noqa: E402
from pipelines.device import best_device  # noqa: E402
from pipelines.lotus import LotusDepthPipeline  # noqa: E402


def sd2_pipeline(device: str, dtype: torch.dtype) -> LotusDepthPipeline:
    """Stable Diffusion 2's shapes, as Lotus-D uses them, with random weights."""
    unet = UNet2DConditionModel(
        sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True, class_embed_type="projection",
        projection_class_embeddings_input_dim=4)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = write_tokenizer(Path(folder))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096,
        num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    return LotusDepthPipeline(unet.to(device, dtype), vae.to(device, dtype),
                              text_encoder.to(device), tokenizer)


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "sd2"], default="tiny")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--res", type=int, default=768)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    device, dtype = best_device()
    torch.manual_seed(0)
    if args.arch == "sd2":
        pipe = sd2_pipeline(device, dtype)
    else:
        with tempfile.TemporaryDirectory() as folder:
            pipe = LotusDepthPipeline.from_pretrained(make_lotus(Path(folder)), device, dtype)
    photo = Image.fromarray(np.random.default_rng(0).integers(
        0, 256, (args.res * 3 // 4, args.res, 3), dtype=np.uint8))
    print(f"Lotus-D {args.arch}, {device} {str(dtype).removeprefix('torch.')}, "
          f"{args.res}x{args.res * 3 // 4} px, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    for batch in args.batch:
        images = [photo] * batch
        pipe(images, processing_res=args.res)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            pipe(images, processing_res=args.res)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        median = float(np.median(times))
        print(f"batch {batch}: {batch / median:.2f} images/s ({median * 1000:.0f} ms a batch, "
              f"median of {args.runs}), peak memory {peak_memory_mb(device):.0f} MiB")


if __name__ == "__main__":
    main()
