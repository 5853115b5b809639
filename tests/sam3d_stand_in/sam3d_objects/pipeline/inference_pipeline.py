"""Stand-in for `sam3d_objects/pipeline/inference_pipeline.py` (InferencePipeline).

The methods the server hooks or replaces, with upstream's signatures and behaviour where it
shows in the output: the config's `decode_formats` and step counts are the defaults, and
`postprocess_slat_output` calls `to_glb` as upstream does (inference_pipeline.py:534-567),
including its KeyError when a mesh is decoded without Gaussians. The sub-models are tiny
`nn.Linear`s under upstream's names (`models`, `condition_embedders`, pipeline.py:163-195),
each loaded through `instantiate_and_load_from_pretrained` as upstream loads them, and each
stage records where each of them was, device and dtype (CALLS[-1]["devices"]).
"""
import numpy as np
import torch
import trimesh

from sam3d_objects.model.backbone.tdfy_dit.representations.gaussian.gaussian_model import Gaussian
from sam3d_objects.model.backbone.tdfy_dit.representations.mesh.cube2mesh import (
    MeshExtractResult)
from sam3d_objects.model.backbone.tdfy_dit.utils import postprocessing_utils

CALLS = []  # one dict per run(): its arguments and what the stand-in saw
FAIL_WITH = None  # an exception for the next run() to raise (out-of-memory tests)
MODEL_NAMES = ("ss_generator", "slat_generator", "ss_encoder", "ss_decoder", "slat_decoder_gs",
               "slat_decoder_gs_4", "slat_decoder_mesh")
EMBEDDER_NAMES = ("ss_condition_embedder", "slat_condition_embedder")


class InferencePipeline:
    def __init__(self, decode_formats=["gaussian", "mesh"], ss_inference_steps=25,
                 slat_inference_steps=25, rendering_engine="nvdiffrast", compile_model=False,
                 workspace_dir="", device="cuda"):
        self.decode_formats = decode_formats
        self.ss_inference_steps = ss_inference_steps
        self.slat_inference_steps = slat_inference_steps
        self.rendering_engine = rendering_engine
        self.compile_model = compile_model
        self.workspace_dir = workspace_dir
        self.device = torch.device("cpu")
        loaded = {name: self.instantiate_and_load_from_pretrained(
            {"in_features": 4, "out_features": 4}, f"{name}.ckpt", device=self.device)
            for name in MODEL_NAMES + EMBEDDER_NAMES}
        loaded["ss_encoder"] = None  # upstream: None without ss_encoder_ckpt_path
        self.models = torch.nn.ModuleDict({name: loaded[name] for name in MODEL_NAMES})
        self.condition_embedders = {name: loaded[name] for name in EMBEDDER_NAMES}

    def instantiate_and_load_from_pretrained(self, config, ckpt_path, state_dict_fn=None,
                                             state_dict_key="state_dict", device="cuda"):
        return torch.nn.Linear(**config).to(device)

    def _record_devices(self, stage):
        """Where each sub-model is while `stage` runs, as the low-memory tests read it."""
        modules = {**{n: m for n, m in self.models.items() if m is not None},
                   **self.condition_embedders}
        if hasattr(self, "depth_model"):
            modules["depth_model"] = self.depth_model.model
        CALLS[-1].setdefault("devices", {})[stage] = {
            name: (str(parameter.device), str(parameter.dtype)) for name, module in modules.items()
            for parameter in [next(module.parameters())]}

    def merge_image_and_mask(self, image, mask):
        if mask is not None:
            image, mask = np.array(image), np.array(mask)
            if mask.ndim == 2:
                mask = mask[..., None]
            assert mask.shape[:2] == image.shape[:2]
            image = np.concatenate([image[..., :3], mask], axis=-1)
        return np.array(image)

    def sample_sparse_structure(self, ss_input_dict, inference_steps=None,
                                use_distillation=False):
        CALLS[-1]["ss_steps"] = inference_steps or self.ss_inference_steps  # upstream: `if inference_steps:`
        self._record_devices("sample_sparse_structure")
        sphere = trimesh.creation.icosphere(subdivisions=2)
        coords = torch.from_numpy(np.round((sphere.vertices + 1) * 31.5)).int()
        return {"coords": torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1),
                "downsample_factor": 1}

    def sample_slat(self, slat_input, coords, inference_steps=25, use_distillation=False):
        CALLS[-1]["slat_steps"] = inference_steps or self.slat_inference_steps
        self._record_devices("sample_slat")
        points = coords[:, 1:].float() / 63 - 0.5
        return points + 0.01 * torch.randn_like(points)  # the seed shows in the result

    def decode_slat(self, slat, formats=["mesh", "gaussian"]):
        CALLS[-1]["decoded"] = list(formats)
        self._record_devices("decode_slat")
        ret = {}
        if "mesh" in formats:
            sphere = trimesh.creation.icosphere(subdivisions=3)
            vertices = torch.from_numpy(sphere.vertices).float() * 0.4
            colors = torch.rand(len(vertices), 6)
            ret["mesh"] = [MeshExtractResult(vertices, torch.from_numpy(sphere.faces), colors)]
        if "gaussian" in formats:
            ret["gaussian"] = [Gaussian(slat, torch.rand(len(slat), 3))]
        return ret

    def postprocess_slat_output(self, outputs, with_mesh_postprocess, with_texture_baking,
                                use_vertex_color):
        glb = None
        if "mesh" in outputs:
            glb = postprocessing_utils.to_glb(
                outputs["gaussian"][0], outputs["mesh"][0], simplify=0.95, texture_size=1024,
                verbose=False, with_mesh_postprocess=with_mesh_postprocess,
                with_texture_baking=with_texture_baking, use_vertex_color=use_vertex_color,
                rendering_engine=self.rendering_engine)
        outputs["glb"] = glb
        if "gaussian" in outputs:
            outputs["gs"] = outputs["gaussian"][0]
        return outputs
