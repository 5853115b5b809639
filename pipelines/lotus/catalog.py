"""Upstream Lotus's six checkpoints, and whether the ones present are real or test weights.

    python pipelines/lotus/catalog.py CHECKPOINTS_DIR [MODEL]   ->   exit 1 if a Lotus folder
                                                                    (or MODEL's) is a test one

`LOTUS_MODELS` is upstream's table of released models (EnVision-Research/Lotus at b737e12,
README.md:142-149: checkpoint, task, mode); each is served from CHECKPOINTS_DIR/<its repo
name>. Lotus is Stable Diffusion 2's UNet, whose blocks are 320, 640, 1280 and 1280 channels
wide (its unet/config.json, `block_out_channels`); scripts/make_tiny_checkpoints.py writes one of
32 and 64. The UNet's own config says which it is, so copying or downloading the real
weights over a test folder changes the answer, which a marker file left beside them did not.
Standard library only: the Dockerfile runs this file alone (as /tmp/checkpoints.py), right
after copying the weights; scripts/download_checkpoints.sh runs it too.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class LotusModel:
    """One row of upstream's table. `mode` picks the pipeline class as upstream's infer.py
    does (infer.py:148-159): generation -> LotusGPipeline, regression -> LotusDPipeline."""

    name: str  # what a request's `model` says
    repo_id: str
    task: Literal["depth", "normal"]
    mode: Literal["generation", "regression"]
    disparity: bool = False  # a depth model that predicts disparity (larger = nearer)

    @property
    def folder(self) -> str:
        return self.repo_id.split("/")[-1]


LOTUS_MODELS = {model.name: model for model in (
    LotusModel("depth-g-v1-0", "jingheya/lotus-depth-g-v1-0", "depth", "generation"),
    LotusModel("depth-d-v1-0", "jingheya/lotus-depth-d-v1-0", "depth", "regression"),
    LotusModel("depth-g-v2-1-disparity", "jingheya/lotus-depth-g-v2-1-disparity", "depth",
               "generation", disparity=True),
    LotusModel("depth-d-v2-0-disparity", "jingheya/lotus-depth-d-v2-0-disparity", "depth",
               "regression", disparity=True),
    LotusModel("normal-g-v1-1", "jingheya/lotus-normal-g-v1-1", "normal", "generation"),
    LotusModel("normal-d-v1-1", "jingheya/lotus-normal-d-v1-1", "normal", "regression"),
)}
DEFAULT_MODELS = {"depth": "depth-d-v2-0-disparity", "normal": "normal-d-v1-1"}
LOTUS_FOLDER = LOTUS_MODELS[DEFAULT_MODELS["depth"]].folder
CHECKPOINT_FOLDER = LOTUS_FOLDER
DEFAULT_MODEL_ID = LOTUS_MODELS[DEFAULT_MODELS["depth"]].repo_id
# A note for people in the folder scripts/make_tiny_checkpoints.py writes. The server does
# not read it (it would outlive the test weights when real ones are copied over): whether
# weights are test ones is decided from the UNet's config (`is_test_checkpoint`).
TEST_CHECKPOINT_MARKER = "TINY_TEST_CHECKPOINT.txt"


def present_models(checkpoints_dir: Path) -> list[str]:
    """The table's models whose folder is in `checkpoints_dir`, in the table's order."""
    return [name for name, model in LOTUS_MODELS.items()
            if (Path(checkpoints_dir) / model.folder).is_dir()]


def resolve_checkpoint(checkpoints_dir: Path, model_id: str | None = None) -> Path:
    """The default depth model's local folder if present, else `MODEL_ID` (or the default
    model's repository) from the Hugging Face cache.

    With HF_HUB_OFFLINE=1 (as in the image) the cache is read and nothing is downloaded.
    """
    local = Path(checkpoints_dir) / CHECKPOINT_FOLDER
    if local.is_dir() and not model_id:
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id or DEFAULT_MODEL_ID,
                                  allow_patterns=["*.json", "*.txt", "*.safetensors"]))


# Stable Diffusion 2's UNet (diffusers' UNet2DConditionModel defaults, and Lotus-D's config).
SD2_UNET_BLOCK_OUT_CHANNELS = (320, 640, 1280, 1280)


def unet_widths(folder: Path) -> tuple[int, ...] | None:
    """The UNet's `block_out_channels`, or None without a readable unet/config.json."""
    try:
        config = json.loads((Path(folder) / "unet" / "config.json").read_text())
        return tuple(int(width) for width in config["block_out_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_test_checkpoint(folder: Path) -> bool:
    """True when `folder`'s UNet is narrower than Stable Diffusion 2's: random test weights
    (scripts/make_tiny_checkpoints.py), whose depth maps are noise. A folder without a
    readable UNet config is not called a test one: loading it fails and says why."""
    widths = unet_widths(folder)
    return widths is not None and max(widths, default=0) < max(SD2_UNET_BLOCK_OUT_CHANNELS)


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2 or argv[1:] and argv[1] not in LOTUS_MODELS:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    test = False
    for model in [LOTUS_MODELS[argv[1]]] if argv[1:] else LOTUS_MODELS.values():
        folder = Path(argv[0]) / model.folder
        if is_test_checkpoint(folder):
            test = True
            print(f"{folder} holds TEST weights (a UNet of {unet_widths(folder)} channels, not "
                  f"Stable Diffusion 2's {SD2_UNET_BLOCK_OUT_CHANNELS}): its {model.task} maps "
                  f"are noise. Put the real {model.repo_id} there.", file=sys.stderr)
        elif model.folder == LOTUS_FOLDER or folder.is_dir():
            print(f"{folder}: {'real weights' if folder.is_dir() else 'absent'}")
    return 1 if test else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
