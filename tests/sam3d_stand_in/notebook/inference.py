"""Stand-in for SAM 3D Objects' `notebook/inference.py` at cf06676 (tests only; ../README.md).

Upstream's signatures exactly (tests/pipelines/sam3d/test_sam3d_upstream.py holds them against the manifest
recorded from upstream), and upstream's import-time side effects: `CUDA_HOME` is copied from
`CONDA_PREFIX` (inference.py:5), so a process without it fails here as it would upstream.
"""
import os

os.environ["CUDA_HOME"] = os.environ["CONDA_PREFIX"]
os.environ["LIDRA_SKIP_INIT"] = "true"

from copy import deepcopy  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402
import yaml  # noqa: E402

from sam3d_objects.pipeline.depth_models.base import DepthModel  # noqa: E402
from sam3d_objects.pipeline.inference_pipeline_pointmap import InferencePipelinePointMap  # noqa: E402

TARGET = "sam3d_objects.pipeline.inference_pipeline_pointmap.InferencePipelinePointMap"


class Inference:
    def __init__(self, config_file: str, compile: bool = False):
        with open(config_file) as file:
            config = yaml.safe_load(file)
        if not isinstance(config, dict) or config.pop("_target_", None) != TARGET:
            raise ValueError(f"{config_file} does not instantiate {TARGET}")
        config["rendering_engine"] = "pytorch3d"  # inference.py:88
        config["compile_model"] = compile
        config["workspace_dir"] = os.path.dirname(config_file)
        # upstream's config instantiates MoGe here (hydra); a tiny network stands in for it
        depth_model = DepthModel(torch.nn.Linear(3, 3), device="cpu")
        self._pipeline = InferencePipelinePointMap(depth_model=depth_model, **config)

    def merge_mask_to_rgba(self, image, mask):
        mask = mask.astype(np.uint8) * 255
        return np.concatenate([image[..., :3], mask[..., None]], axis=-1)

    def __call__(self, image, mask, seed=None, pointmap=None) -> dict:
        return self._pipeline.run(
            self.merge_mask_to_rgba(image, mask), None, seed, stage1_only=False,
            with_mesh_postprocess=False, with_texture_baking=False,
            with_layout_postprocess=True, use_vertex_color=True, stage1_inference_steps=None,
            pointmap=pointmap)


def make_scene(*outputs, in_place=False):
    """Upstream's make_scene (inference.py:255-312) on the stand-in's Gaussians: each object's
    points through scale, rotation and translation as PyTorch3D row vectors, then merged."""
    if not in_place:
        outputs = [deepcopy(output) for output in outputs]
    for output in outputs:
        gaussian = output["gaussian"][0]
        # pytorch3d's quaternion_to_matrix: the usual matrix of a unit quaternion, w first
        rotation = torch.from_numpy(trimesh.transformations.quaternion_matrix(
            output["rotation"][0].numpy())[:3, :3]).float()
        gaussian.from_xyz(gaussian.get_xyz * output["scale"] @ rotation + output["translation"])
    scene = outputs[0]["gaussian"][0]
    for output in outputs[1:]:
        other = output["gaussian"][0]
        for name in ("_xyz", "_features_dc", "_scaling", "_rotation", "_opacity"):
            setattr(scene, name, torch.cat([getattr(scene, name), getattr(other, name)], dim=0))
    return scene
