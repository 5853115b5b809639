#!/usr/bin/env python3
"""Lotus-D at its real size with random weights: Stable Diffusion 2's UNet, VAE and text
encoder configurations (stabilityai/stable-diffusion-2's config.json files, which Lotus's
checkpoints keep; the UNet with Lotus's task projection, train_lotus_d.py's
class_embed_type="projection", projection_class_embeddings_input_dim=4), random weights.

    python bench/sd2_size.py DIR          write DIR/lotus-depth-d-v2-0-disparity in fp16
    python bench/sd2_size.py --count      parameter counts and weight sizes (no weights made)

For speed and memory figures without the real weights (bench/gpu_check.sh): the arithmetic
and the memory are the real model's; the maps are noise. The folder is written as
scripts/make_tiny_checkpoints.py writes its tiny ones (its tokenizer and marker file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from make_tiny_checkpoints import write_tokenizer  # noqa: E402
from pipelines.lotus.catalog import DEFAULT_MODELS, LOTUS_MODELS  # noqa: E402
from pipelines.lotus import TEST_CHECKPOINT_MARKER  # noqa: E402
from pipelines.lotus.model import PIPELINE_CLASS_NAMES  # noqa: E402

UNET = dict(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True, act_fn="silu",
            class_embed_type="projection", projection_class_embeddings_input_dim=4)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
           block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=768,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
            projection_dim=512)


def build(device: str = "cpu") -> dict[str, torch.nn.Module]:
    """The three models at full size; on "meta" no memory is allocated (counting only)."""
    with torch.device(device):
        return {"unet": UNet2DConditionModel(**UNET), "vae": AutoencoderKL(**VAE),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXT))}


def counts() -> dict[str, int]:
    return {name: sum(p.numel() for p in model.parameters())
            for name, model in build("meta").items()}


def write(root: Path, seed: int = 0) -> Path:
    model = LOTUS_MODELS[DEFAULT_MODELS["depth"]]
    out = Path(root) / model.folder
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = write_tokenizer(out / "tokenizer")
    for name, part in build().items():
        with torch.no_grad():  # default inits are too wide at this depth: keep maps finite
            for parameter in part.parameters():
                if parameter.dim() > 1:
                    parameter.mul_(0.5)
        part.to(torch.float16).save_pretrained(out / name)  # published dtype
        del part
    DDIMScheduler(prediction_type="sample").save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": PIPELINE_CLASS_NAMES[model.mode][0], "_diffusers_version": "0.32.2",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    (out / TEST_CHECKPOINT_MARKER).write_text(
        f"Random weights at SD 2's size, written by bench/sd2_size.py (tokenizer: {len(tokenizer)} "
        "tokens).\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, nargs="?")
    parser.add_argument("--count", action="store_true")
    args = parser.parse_args()
    if args.count or args.dir is None:
        found = counts()
        total = sum(found.values())
        for name, n in {**found, "total": total}.items():
            print(f"{name:13s} {n / 1e6:8.1f} M parameters  fp16 {n * 2 / 2**30:5.2f} GiB  "
                  f"fp32 {n * 4 / 2**30:5.2f} GiB")
        return
    print(write(args.dir))


if __name__ == "__main__":
    main()
