"""Stand-in for `sam3d_objects/pipeline/inference_pipeline_pointmap.py`: `run()` with upstream's
signature, input assertions (preprocess_image: uint8 H x W x 4), mask crop (the object is the
box around every non-zero alpha pixel, img_and_mask_transforms.py:357) and output keys (those
upstream's run returned on the CPU kit, recorded in tests/sam3d_upstream_interface.json).

The pose follows the object's box in upstream's PyTorch3D camera frame (+X left, +Y up, +Z
into the scene, pointmap.py:255): a box on the photo's left stands at +X, a wider box is
bigger, and the object turns about +Y with the box's height-to-width ratio. Real poses come
from the model; these only make placement observable. SAM3D_STAND_IN_SECONDS makes each run
last that long, as a real one does."""
import math
import os
import time

import numpy as np
import torch

from sam3d_objects.pipeline import inference_pipeline
from sam3d_objects.pipeline.inference_pipeline import CALLS, InferencePipeline


class InferencePipelinePointMap(InferencePipeline):
    def __init__(self, *args, depth_model, layout_post_optimization_method=None,
                 clip_pointmap_beyond_scale=None, **kwargs):
        self.depth_model = depth_model
        self.layout_post_optimization_method = layout_post_optimization_method
        self.clip_pointmap_beyond_scale = clip_pointmap_beyond_scale
        super().__init__(*args, **kwargs)

    def compute_pointmap(self, image, pointmap=None):
        self._record_devices("compute_pointmap")
        height, width = image.shape[:2]
        return {"pointmap": torch.zeros(3, height, width), "pts_color": torch.zeros(3, height, width),
                "intrinsics": torch.eye(3)}

    def run(self, image, mask=None, seed=None, stage1_only=False, with_mesh_postprocess=True,
            with_texture_baking=True, with_layout_postprocess=True, use_vertex_color=False,
            stage1_inference_steps=None, stage2_inference_steps=None,
            use_stage1_distillation=False, use_stage2_distillation=False, pointmap=None,
            decode_formats=None, estimate_plane=False) -> dict:
        arguments = {name: value for name, value in locals().items()
                     if name not in ("self", "image", "mask")}
        image = self.merge_image_and_mask(image, mask)
        assert image.ndim == 3
        assert image.shape[-1] == 4
        assert image.dtype == np.uint8
        rows, cols = np.nonzero(image[..., 3])
        CALLS.append({**arguments, "image_shape": image.shape, "alpha": image[..., 3].copy(),
                      "object_box": (cols.min(), rows.min(), cols.max(), rows.max())
                      if len(rows) else (0, 0, 0, 0)})
        if inference_pipeline.FAIL_WITH is not None:
            error, inference_pipeline.FAIL_WITH = inference_pipeline.FAIL_WITH, None
            raise error
        pointmap_dict = self.compute_pointmap(image, pointmap)
        time.sleep(float(os.environ.get("SAM3D_STAND_IN_SECONDS", "0")))  # a GPU's minute
        if seed is not None:
            torch.manual_seed(seed)
        ss_return_dict = self.sample_sparse_structure({}, inference_steps=stage1_inference_steps)
        ss_return_dict.update(box_pose(CALLS[-1]["object_box"], image.shape[:2]))
        ss_return_dict.update({"6drotation_normalized": torch.zeros(1, 1, 6),
                               "shape": torch.zeros(1, 4096, 8),
                               "translation_scale": torch.ones(1, 1, 1),
                               "coords_original": ss_return_dict["coords"]})
        if stage1_only:
            return ss_return_dict
        slat = self.sample_slat({}, ss_return_dict["coords"],
                                inference_steps=stage2_inference_steps)
        outputs = self.decode_slat(
            slat, self.decode_formats if decode_formats is None else decode_formats)
        outputs = self.postprocess_slat_output(outputs, with_mesh_postprocess,
                                               with_texture_baking, use_vertex_color)
        height, width = image.shape[:2]
        return {**ss_return_dict, **outputs, "pointmap": pointmap_dict["pointmap"].permute(1, 2, 0),
                "pointmap_colors": pointmap_dict["pts_color"].permute(1, 2, 0)}


def box_pose(box, shape):
    left, top, right, bottom = box
    height, width = shape
    centre_x, centre_y = (left + right + 1) / 2 / width, (top + bottom + 1) / 2 / height
    size = (right - left + 1) / width
    angle = math.atan2(bottom - top + 1, right - left + 1)
    return {"rotation": torch.tensor([[math.cos(angle / 2), 0.0, math.sin(angle / 2), 0.0]]),
            "translation": torch.tensor([[(0.5 - centre_x) * 4, (0.5 - centre_y) * 4, 3.0]]),
            "scale": torch.full((1, 3), size)}
