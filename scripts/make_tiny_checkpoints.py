#!/usr/bin/env python3
"""Write tiny Lotus checkpoints: the real folder layout and classes, random weights.

    python scripts/make_tiny_checkpoints.py DIR   ->   DIR/lotus-depth-d-v2-0-disparity/
    python scripts/make_tiny_checkpoints.py DIR normal-d-v1-1   ->   DIR/lotus-normal-d-v1-1/

Any of upstream's six (pipelines/checkpoints.py's LOTUS_MODELS, by short name): a Lotus-G
one has the 8-channel UNet upstream's train_lotus_g.py:733-750 makes, a Lotus-D one SD 2's 4.

Tests and the development server load it through the same code as the real weights
(the way diffusers' own tests build tiny models). Seeded, offline, a few seconds.
Replace it with the real checkpoint by putting the real folder in its place.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from tokenizers.pre_tokenizers import ByteLevel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipelines.checkpoints import DEFAULT_MODELS, LOTUS_MODELS  # noqa: E402
from pipelines.lotus import TEST_CHECKPOINT_MARKER  # noqa: E402
from pipelines.lotus_model import PIPELINE_CLASS_NAMES, UNET_IN_CHANNELS  # noqa: E402

HIDDEN = 32  # text width = UNet cross-attention width


def tiny_unet(in_channels: int = 4) -> UNet2DConditionModel:
    """SD 2's UNet shape (cross-attention, linear projections, task projection), shrunk."""
    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN, attention_head_dim=(2, 4), use_linear_projection=True,
        class_embed_type="projection", projection_class_embeddings_input_dim=4)


def tiny_vae() -> AutoencoderKL:
    """Four blocks like SD's VAE, so latents are 1/8 of the image as with the real one."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(8, 16, 16, 16), norm_num_groups=8, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def write_tokenizer(folder: Path) -> CLIPTokenizer:
    """A byte-level BPE vocabulary with no merges: every byte is a token."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(letters + [f"{c}</w>" for c in letters])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}))
    return CLIPTokenizer.from_pretrained(folder)


def tiny_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=HIDDEN)
    return CLIPTextModel(config)


def make_lotus(root: Path, seed: int = 0, name: str = DEFAULT_MODELS["depth"]) -> Path:
    """Upstream's checkpoint `name` (a short name), tiny, in root/<its folder>."""
    model = LOTUS_MODELS[name]
    out = Path(root) / model.folder
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tiny_unet(UNET_IN_CHANNELS[model.mode]).save_pretrained(out / "unet")
    tiny_vae().save_pretrained(out / "vae")
    tokenizer = write_tokenizer(out / "tokenizer")
    tiny_text_encoder(tokenizer).save_pretrained(out / "text_encoder")
    DDIMScheduler(prediction_type="sample").save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": PIPELINE_CLASS_NAMES[model.mode][0],
        "_diffusers_version": "0.32.2",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    # for people who open the folder; the server tells test weights from the UNet's config
    # (pipelines/checkpoints.py) and says so (/health, its log, the web page)
    (out / TEST_CHECKPOINT_MARKER).write_text(
        "Random weights written by scripts/make_tiny_checkpoints.py for tests and development.\n"
        f"Replace this folder with the real {model.repo_id} checkpoint.\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="checkpoints folder to write into")
    # checked below, not with `choices`: Python 3.11's argparse checks an empty list against
    # the choices as one value, so naming no model was an error
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"short names, of {', '.join(LOTUS_MODELS)} "
                             f"(default {DEFAULT_MODELS['depth']})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in args.models:
        if name not in LOTUS_MODELS:
            parser.error(f"argument MODEL: invalid choice: {name!r} "
                         f"(choose from {', '.join(LOTUS_MODELS)})")
    for name in args.models or [DEFAULT_MODELS["depth"]]:
        print(make_lotus(args.dir, args.seed, name))


if __name__ == "__main__":
    main()
