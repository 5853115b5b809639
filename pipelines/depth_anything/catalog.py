"""The Depth Anything V2 checkpoints served, and whether the ones present are real or test weights.

    python pipelines/depth_anything/catalog.py CHECKPOINTS_DIR [MODEL]  ->  exit 1 if a folder
                                                  (or MODEL's: short name or repo id) is a test one

`DA2_MODELS` is the one table: short name (what a request's `model` says, in the style of
pipelines/lotus/catalog.py's Lotus names: the repository's name, lower case, without "-hf"),
Hugging Face repository, folder under CHECKPOINTS_DIR (the repository's name, as Lotus's),
what the map holds, and the licence its model card states.

What the maps hold is what transformers' DepthAnythingDepthEstimationHead makes of them
(transformers 4.49.0, models/depth_anything/modeling_depth_anything.py:335-356): a
"relative" checkpoint ends in a ReLU, so its map is affine-invariant *disparity* (larger =
nearer, unitless, >= 0); a "metric" one ends in sigmoid x max_depth, so its map is depth in
*metres* (larger = farther, in [0, max_depth]). The max depths are the conversion script's
(transformers' models/depth_anything/convert_depth_anything_to_hf.py at 23925e16,
get_dpt_config lines 59-64: 20 for indoor, 80 for outdoor).

Licences, from the model cards (the hub is not reachable from here; read through the search
tool's stored copies of huggingface.co):
- depth-anything/Depth-Anything-V2-Small-hf: "License: apache-2.0" in the card's metadata
  (huggingface.co/depth-anything/Depth-Anything-V2-Small-hf/tree/main, commit 5426e4f).
- depth-anything/Depth-Anything-V2-Metric-{Indoor,Outdoor}-Small-hf: their cards carry no
  `license:` at all (tree/main 8078d68 and fd2c220, and every earlier version stored). The
  weights are converted from depth-anything/Depth-Anything-V2-Metric-Hypersim-Small and
  -VKITTI-Small (the conversion script's model_name_to_repo); the VKITTI-Small card says
  `license: apache-2.0` (its README.md at a496380), no copy of the Hypersim-Small card was
  found; upstream's statement (transformers docs/source/en/model_doc/depth_anything_v2.md,
  and DepthAnything/Depth-Anything-V2's README) is "Depth-Anything-V2-Small model is under
  the Apache-2.0 license. Depth-Anything-V2-Base/Large/Giant models are under the
  CC-BY-NC-4.0 license." So: Apache-2.0 by upstream's word for every Small, which is why only
  Small checkpoints are in this table (the Base and Large ones are non-commercial, though
  some of their hub cards say apache-2.0: the cards are not reliable on this).

Standard library only, no relative import: the HTTP process reads this table without torch,
and scripts/download_checkpoints.sh runs this file alone.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# A note for people who open a folder scripts/make_tiny_checkpoints.py wrote; the server
# decides from the backbone's config (`is_test_checkpoint`), which real weights replace.
TEST_CHECKPOINT_MARKER = "TINY_TEST_CHECKPOINT.txt"
# DINOv2-Small, Depth Anything V2 Small's backbone (facebook/dinov2-small's config, which the
# conversion script loads for every "small" model: get_dpt_config lines 35-41).
VIT_SMALL_HIDDEN_SIZE = 384
# What a checkpoint folder must hold: save_pretrained's config and weights, and the
# processor's settings (AutoImageProcessor reads preprocessor_config.json).
REQUIRED_FILES = ("config.json", "preprocessor_config.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class DepthAnythingModel:
    """One checkpoint: `kind` says what its map is (see the module's docstring)."""

    name: str
    repo_id: str
    kind: Literal["relative", "metric"]
    max_depth: float | None  # metres, metric checkpoints only
    licence: str
    licence_source: str

    @property
    def folder(self) -> str:
        return self.repo_id.split("/")[-1]

    @property
    def disparity(self) -> bool:
        """What pipelines/outputs.py and pipelines/relief.py call `disparity`: True for a
        relative checkpoint (larger = nearer), False for a metric one (depth in metres)."""
        return self.kind == "relative"

    @property
    def units(self) -> str:
        return ("affine-invariant disparity (unitless; larger = nearer)" if self.disparity
                else f"depth in metres (larger = farther; 0 to {self.max_depth:g})")


_APACHE_BY_UPSTREAM = ("no licence on this -hf card; Apache-2.0 as upstream states for every "
                       "Depth-Anything-V2-Small (DepthAnything/Depth-Anything-V2 README; "
                       "transformers docs model_doc/depth_anything_v2.md)")
DA2_MODELS = {model.name: model for model in (
    DepthAnythingModel("depth-anything-v2-small", "depth-anything/Depth-Anything-V2-Small-hf",
                       "relative", None, "Apache-2.0",
                       "model card metadata: license: apache-2.0"),
    DepthAnythingModel("depth-anything-v2-metric-indoor-small",
                       "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf",
                       "metric", 20.0, "Apache-2.0", _APACHE_BY_UPSTREAM),
    DepthAnythingModel("depth-anything-v2-metric-outdoor-small",
                       "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf",
                       "metric", 80.0, "Apache-2.0", _APACHE_BY_UPSTREAM),
)}
DEFAULT_MODEL = "depth-anything-v2-small"


def present_models(checkpoints_dir: Path) -> list[str]:
    """The table's models whose folder is in `checkpoints_dir`, in the table's order."""
    return [name for name, model in DA2_MODELS.items()
            if (Path(checkpoints_dir) / model.folder).is_dir()]


def missing_files(folder: Path) -> list[str]:
    """What `folder` lacks to load, by file name ([] when complete); the folder itself when
    it is not there."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"the folder {folder}"]
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    return missing


def backbone_width(folder: Path) -> int | None:
    """The DINOv2 backbone's hidden size from config.json, or None without a readable one."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
        return int(config["backbone_config"]["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_test_checkpoint(folder: Path) -> bool:
    """True when `folder`'s backbone is narrower than ViT-S: random test weights
    (scripts/make_tiny_checkpoints.py), whose maps are noise. A folder without a readable
    config is not called a test one: loading it fails and says why."""
    width = backbone_width(folder)
    return width is not None and width < VIT_SMALL_HIDDEN_SIZE


def main(argv: list[str]) -> int:
    by_repo = {model.repo_id: model for model in DA2_MODELS.values()}
    if not 1 <= len(argv) <= 2 or argv[1:] and argv[1] not in {**DA2_MODELS, **by_repo}:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    test = False
    chosen = argv[1:] and (DA2_MODELS.get(argv[1]) or by_repo[argv[1]])
    for model in [chosen] if chosen else DA2_MODELS.values():
        folder = Path(argv[0]) / model.folder
        if is_test_checkpoint(folder):
            test = True
            print(f"{folder} holds TEST weights (a backbone {backbone_width(folder)} wide, not "
                  f"ViT-S's {VIT_SMALL_HIDDEN_SIZE}): its maps are noise. Put the real "
                  f"{model.repo_id} there.", file=sys.stderr)
        else:
            print(f"{folder}: {'real weights' if folder.is_dir() else 'absent'}")
    return 1 if test else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
