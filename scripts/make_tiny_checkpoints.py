#!/usr/bin/env python3
"""Write tiny checkpoints: the real folder layout and classes, random weights.

    python scripts/make_tiny_checkpoints.py DIR   ->   DIR/lotus-depth-d-v2-0-disparity/
    python scripts/make_tiny_checkpoints.py DIR normal-d-v1-1   ->   DIR/lotus-normal-d-v1-1/
    python scripts/make_tiny_checkpoints.py DIR depth-anything-v2-small
        ->   DIR/Depth-Anything-V2-Small-hf/

Any of upstream Lotus's six (pipelines/lotus/catalog.py's LOTUS_MODELS, by short name): a
Lotus-G one has the 8-channel UNet upstream's train_lotus_g.py:733-750 makes, a Lotus-D one
SD 2's 4. Any of the Depth Anything V2 checkpoints served (pipelines/depth_anything/
catalog.py's DA2_MODELS): transformers' DepthAnythingForDepthEstimation with a narrow DINOv2
backbone, configured and saved as the conversion script saves the real ones.

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
from pipelines.lotus.catalog import DEFAULT_MODELS, LOTUS_MODELS  # noqa: E402
from pipelines.depth_anything.catalog import DA2_MODELS  # noqa: E402
from pipelines.depth_anything.catalog import TEST_CHECKPOINT_MARKER as DA2_MARKER  # noqa: E402
from pipelines.lotus import TEST_CHECKPOINT_MARKER  # noqa: E402
from pipelines.lotus.model import PIPELINE_CLASS_NAMES, UNET_IN_CHANNELS  # noqa: E402

HIDDEN = 32  # text width = UNet cross-attention width
CHOICES = [*LOTUS_MODELS, *DA2_MODELS]


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
    # (pipelines/lotus/catalog.py) and says so (/health, its log, the web page)
    (out / TEST_CHECKPOINT_MARKER).write_text(
        "Random weights written by scripts/make_tiny_checkpoints.py for tests and development.\n"
        f"Replace this folder with the real {model.repo_id} checkpoint.\n")
    return out


def tiny_depth_anything_config(kind: str, max_depth: float | None):
    """transformers' conversion script's config for a Small checkpoint
    (models/depth_anything/convert_depth_anything_to_hf.py at 23925e16, get_dpt_config
    lines 34-76: a DINOv2 backbone with out_indices [3, 6, 9, 12] of 12 layers for V2,
    apply_layernorm, reshape_hidden_states=False; reassemble_hidden_size and patch_size from
    the backbone; fusion_hidden_size 64 and neck_hidden_sizes [48, 96, 192, 384] for Small;
    depth_estimation_type and max_depth 20 (indoor) / 80 (outdoor) for metric ones), every
    width divided by 12 and 4 layers instead of 12 (out_indices: every layer, as V2 takes
    every third). Patch size 14 and the 518-pixel position grid are the real ones."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            mlp_ratio=4, patch_size=14, image_size=518,
                            out_indices=[1, 2, 3, 4], apply_layernorm=True,
                            reshape_hidden_states=False)
    return DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=backbone.hidden_size,
        patch_size=backbone.patch_size, fusion_hidden_size=16, neck_hidden_sizes=[4, 8, 16, 32],
        head_hidden_size=8, depth_estimation_type=kind, max_depth=max_depth)


def real_processor():
    """The processor every Depth Anything V2 checkpoint publishes (their
    preprocessor_config.json; the conversion script's DPTImageProcessor(...) in
    convert_dpt_checkpoint, resample left at DPTImageProcessor's bicubic default)."""
    from transformers import DPTImageProcessor

    return DPTImageProcessor(
        do_resize=True, size={"height": 518, "width": 518}, ensure_multiple_of=14,
        keep_aspect_ratio=True, do_rescale=True, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_pad=False)


@torch.no_grad()
def spread_weights(network: torch.nn.Module) -> None:
    """Redraw every weight so the map varies across the photo. transformers' own init
    (std 0.02, zero biases) gives a map flat to 1e-7 (relative: ReLU of almost nothing;
    metric: sigmoid(0) x max_depth everywhere), which a test could not tell from a wrong
    one. Matrices and kernels: normal, std 1/sqrt(fan-in), so each layer keeps its input's
    scale; norm weights around 1; other vectors (biases, tokens, layer scales) normal 0.1."""
    for name, parameter in network.named_parameters():
        if parameter.dim() > 1 and "embeddings" not in name:
            parameter.normal_(0.0, parameter[0].numel() ** -0.5)
        elif "norm" in name and name.endswith("weight"):
            parameter.normal_(1.0, 0.1)
        else:
            parameter.normal_(0.0, 0.1 if parameter.dim() == 1 else 0.5)


def make_depth_anything(root: Path, seed: int = 0, name: str = "depth-anything-v2-small") -> Path:
    """The Depth Anything V2 checkpoint `name` (a short name), tiny, in root/<its folder>."""
    from transformers import DepthAnythingForDepthEstimation

    model = DA2_MODELS[name]
    out = Path(root) / model.folder
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    network = DepthAnythingForDepthEstimation(tiny_depth_anything_config(
        model.kind, model.max_depth))
    spread_weights(network)
    network.save_pretrained(out)
    real_processor().save_pretrained(out)
    # for people who open the folder; the server tells test weights from the backbone's
    # width (pipelines/depth_anything/catalog.py)
    (out / DA2_MARKER).write_text(
        "Random weights written by scripts/make_tiny_checkpoints.py for tests and development.\n"
        f"Replace this folder with the real {model.repo_id} checkpoint.\n")
    return out


def make(root: Path, seed: int, name: str) -> Path:
    """Any table's checkpoint, by short name."""
    return (make_depth_anything if name in DA2_MODELS else make_lotus)(root, seed, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="checkpoints folder to write into")
    # checked below, not with `choices`: Python 3.11's argparse checks an empty list against
    # the choices as one value, so naming no model was an error
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"short names, of {', '.join(CHOICES)} "
                             f"(default {DEFAULT_MODELS['depth']})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in args.models:
        if name not in CHOICES:
            parser.error(f"argument MODEL: invalid choice: {name!r} "
                         f"(choose from {', '.join(CHOICES)})")
    for name in args.models or [DEFAULT_MODELS["depth"]]:
        print(make(args.dir, args.seed, name))


if __name__ == "__main__":
    main()
