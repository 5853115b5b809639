"""Stand-in for SAM 3D Objects' `notebook/inference.py` at cf06676 (tests only; ../README.md).

Upstream's signatures exactly (tests/test_sam3d_interface.py holds them against the manifest
recorded from upstream), and upstream's import-time side effects: `CUDA_HOME` is copied from
`CONDA_PREFIX` (inference.py:5), so a process without it fails here as it would upstream.
"""
import os

os.environ["CUDA_HOME"] = os.environ["CONDA_PREFIX"]
os.environ["LIDRA_SKIP_INIT"] = "true"

import numpy as np  # noqa: E402
import yaml  # noqa: E402

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
        self._pipeline = InferencePipelinePointMap(**config)

    def merge_mask_to_rgba(self, image, mask):
        mask = mask.astype(np.uint8) * 255
        return np.concatenate([image[..., :3], mask[..., None]], axis=-1)

    def __call__(self, image, mask, seed=None, pointmap=None) -> dict:
        return self._pipeline.run(
            self.merge_mask_to_rgba(image, mask), None, seed, stage1_only=False,
            with_mesh_postprocess=False, with_texture_baking=False,
            with_layout_postprocess=True, use_vertex_color=True, stage1_inference_steps=None,
            pointmap=pointmap)
