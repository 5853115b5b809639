"""Real weights or test weights? Decided from the checkpoint itself.

    python pipelines/checkpoints.py CHECKPOINTS_DIR   ->   exit 1 if Lotus-D there is a test one

Lotus-D is Stable Diffusion 2's UNet, whose blocks are 320, 640, 1280 and 1280 channels wide
(its unet/config.json, `block_out_channels`); scripts/make_tiny_checkpoints.py writes one of
32 and 64. The UNet's own config says which it is, so copying or downloading the real
weights over a test folder changes the answer, which a marker file left beside them did not.
Standard library only: the Dockerfile runs this file alone, right after copying the weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LOTUS_FOLDER = "lotus-depth-d-v2-0-disparity"
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
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    folder = Path(argv[0]) / LOTUS_FOLDER
    if is_test_checkpoint(folder):
        print(f"{folder} holds TEST weights (a UNet of {unet_widths(folder)} channels, not "
              f"Stable Diffusion 2's {SD2_UNET_BLOCK_OUT_CHANNELS}): its depth maps are "
              "noise. Run scripts/download_checkpoints.sh for the real Lotus-D.",
              file=sys.stderr)
        return 1
    print(f"{folder}: {'real weights' if folder.is_dir() else 'absent'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
