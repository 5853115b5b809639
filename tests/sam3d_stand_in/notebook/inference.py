"""Stand-in for SAM 3D Objects' `notebook/inference.py` (see ../README.md).

Same public shape as upstream: `Inference(config_file, compile=False)._pipeline.run(...)`.
Set `FAIL_WITH` to an exception to make the next run raise it (OOM tests).
"""

import numpy as np
import trimesh

from sam3d_objects.model.backbone.tdfy_dit.utils import postprocessing_utils

CALLS = []
FAIL_WITH = None

PLY_FIELDS = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
              + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


class Gaussian:
    """A 3D Gaussian splat with upstream's `save_ply` layout (binary little-endian PLY)."""

    def __init__(self, xyz):
        self.xyz = np.asarray(xyz, dtype=np.float32)

    def save_ply(self, path):
        count = len(self.xyz)
        rows = np.zeros((count, len(PLY_FIELDS)), dtype=np.float32)
        rows[:, :3] = self.xyz
        rows[:, PLY_FIELDS.index("opacity")] = 1.0
        rows[:, PLY_FIELDS.index("rot_0")] = 1.0
        header = ["ply", "format binary_little_endian 1.0", f"element vertex {count}"]
        header += [f"property float {name}" for name in PLY_FIELDS] + ["end_header"]
        with open(path, "wb") as file:
            file.write(("\n".join(header) + "\n").encode())
            file.write(rows.tobytes())


class StandInPipeline:
    rendering_engine = "pytorch3d"

    def run(self, image, mask=None, seed=None, stage1_only=False, with_mesh_postprocess=True,
            with_texture_baking=True, with_layout_postprocess=False, use_vertex_color=False,
            stage1_inference_steps=None, stage2_inference_steps=None, decode_formats=None,
            **kwargs):
        global FAIL_WITH
        CALLS.append(dict(image_shape=image.shape, image_dtype=str(image.dtype),
                          alpha=image[..., 3].copy(), mask=mask, seed=seed,
                          stage1_only=stage1_only, with_mesh_postprocess=with_mesh_postprocess,
                          with_texture_baking=with_texture_baking,
                          with_layout_postprocess=with_layout_postprocess,
                          use_vertex_color=use_vertex_color,
                          stage1_inference_steps=stage1_inference_steps,
                          stage2_inference_steps=stage2_inference_steps,
                          decode_formats=decode_formats))
        if FAIL_WITH is not None:
            error, FAIL_WITH = FAIL_WITH, None
            raise error
        coords = self.sample_sparse_structure(image, inference_steps=stage1_inference_steps)
        slat = self.sample_slat(image, coords, inference_steps=stage2_inference_steps)
        outputs = self.decode_slat(slat, decode_formats or ["gaussian", "mesh"])
        outputs = self.postprocess_slat_output(outputs, with_mesh_postprocess,
                                               with_texture_baking, use_vertex_color)
        return {"gs": outputs["gaussian"][0], **outputs}

    def sample_sparse_structure(self, image, inference_steps=None):
        return trimesh.creation.icosphere(subdivisions=2)

    def sample_slat(self, image, coords, inference_steps=None):
        return coords

    def decode_slat(self, slat, formats):
        outputs = {}
        if "gaussian" in formats:
            outputs["gaussian"] = [Gaussian(slat.vertices)]
        if "mesh" in formats:
            outputs["mesh"] = [{"vertices": slat.vertices, "faces": slat.faces}]
        return outputs

    def postprocess_slat_output(self, outputs, with_mesh_postprocess, with_texture_baking,
                                use_vertex_color):
        raise AssertionError("the server replaces this method with its own")


class Inference:
    def __init__(self, config_file, compile=False):
        self.config_file = config_file
        self._pipeline = StandInPipeline()
