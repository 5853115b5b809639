"""SAM 3D Objects behind the queue: photo -> GLB mesh or Gaussian-splat PLY.

The model itself (CUDA-only: kaolin, gsplat, nvdiffrast, pytorch3d) is reached through
exactly one seam, its public `Inference` class, imported from the SAM 3D Objects source
in `load()`. Everything around it (masking, options, memory admission, progress,
writing files) is ours and runs without a GPU, against a stand-in with the same shape.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from .base import PipelineError, Progress, Result
from .device import gpu_info
from .images import ImageInput
from .outputs import atomic_write

log = logging.getLogger(__name__)

CONFIG_NAME = "pipeline.yaml"
# GiB of GPU memory each output needs (the deployment guide's table, measured upstream);
# "24 GB" cards report 22-24 GiB, so textured GLB is admitted from 22.
MEMORY_NEEDED_GIB = {"ply": 14.0, "glb": 18.0, "glb_textured": 22.0}
# SAM 3D's pipeline methods, in call order, and the stage each one starts.
STAGE_METHODS = {
    "sample_sparse_structure": ("sparse structure", 0.15),
    "sample_slat": ("structured latent", 0.45),
    "decode_slat": ("decoding", 0.7),
}


class GenerateRequest(ImageInput):
    """Options of an image-to-3D job (`POST /generate`)."""

    seed: int = Field(42, ge=0, le=2**32 - 1)
    output_format: Literal["glb", "ply"] = Field(
        "glb", description="glb: mesh; ply: Gaussian splat")
    with_texture: bool = Field(True, description="Bake a texture (GLB only); false gives "
                               "vertex colours, faster and lighter")
    stage1_steps: int | None = Field(None, ge=1, le=100, description="Sparse-structure "
                                     "diffusion steps (model default when omitted)")
    stage2_steps: int | None = Field(None, ge=1, le=100, description="Structured-latent "
                                     "diffusion steps (model default when omitted)")
    texture_size: Literal[512, 1024, 2048] = 1024
    simplify: float = Field(0.95, ge=0.0, le=0.99,
                            description="Fraction of mesh triangles removed")

    @property
    def memory_class(self) -> str:
        if self.output_format == "ply":
            return "ply"
        return "glb_textured" if self.with_texture else "glb"


def find_config(checkpoints_dir: Path) -> Path:
    """The guide's layout (`checkpoints/pipeline.yaml`) or upstream's (`checkpoints/hf/`)."""
    for candidate in (Path(checkpoints_dir) / CONFIG_NAME,
                      Path(checkpoints_dir) / "hf" / CONFIG_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {CONFIG_NAME} in {checkpoints_dir} or {checkpoints_dir}/hf")


def import_inference(source_dir: Path) -> Callable[..., Any]:
    """SAM 3D Objects' public `Inference` class, from its source tree (needs CUDA packages)."""
    notebook = Path(source_dir) / "notebook"
    if not (notebook / "inference.py").is_file():
        raise FileNotFoundError(f"SAM 3D Objects source not found at {source_dir} "
                                "(set SAM3D_SOURCE_DIR)")
    for path in (str(source_dir), str(notebook)):
        if path not in sys.path:
            sys.path.insert(0, path)
    from inference import Inference  # type: ignore[import-not-found]

    return Inference


def import_to_glb() -> Callable[..., Any]:
    from sam3d_objects.model.backbone.tdfy_dit.utils import postprocessing_utils

    return postprocessing_utils.to_glb


class Masker:
    """Which pixels are the object: the image's own alpha, else rembg, else a centre box."""

    def __init__(self, session: Any = None):
        self.session = session

    @classmethod
    def create(cls) -> "Masker":
        """One rembg session for the server's life, from `U2NET_HOME/u2net.onnx` (baked into
        the image; rembg's own default folder otherwise): rembg is never let download."""
        model_path = Path(os.environ.get("U2NET_HOME", Path.home() / ".u2net")) / "u2net.onnx"
        if not model_path.is_file():
            log.warning("rembg model %s not found", model_path)
            return cls(None)
        try:
            import rembg

            return cls(rembg.new_session("u2net_custom", model_path=str(model_path)))
        except Exception as exc:  # not installed, or a broken model file
            log.warning("rembg unavailable (%s)", exc)
            return cls(None)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGBA uint8 with the mask in alpha, as SAM 3D Objects reads it."""
        rgb = np.asarray(image.convert("RGB"))
        if image.mode == "RGBA":
            alpha = np.asarray(image.getchannel("A"))
            if alpha.min() < 255 and alpha.max() > 0:
                return np.dstack([rgb, alpha])
        if self.session is not None:
            import rembg

            mask = rembg.remove(image.convert("RGB"), session=self.session, only_mask=True)
            return np.dstack([rgb, np.asarray(mask.convert("L"))])
        log.info("Using center mask (rembg not available)")
        return np.dstack([rgb, center_mask(*rgb.shape[:2])])


def center_mask(height: int, width: int, fraction: float = 0.8) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    dy, dx = round(height * (1 - fraction) / 2), round(width * (1 - fraction) / 2)
    mask[dy:height - dy or height, dx:width - dx or width] = 255
    return mask


def servable_outputs(vram_gib: float | None) -> dict[str, bool]:
    """Which outputs fit in this GPU's memory (none without a GPU)."""
    return {kind: vram_gib is not None and vram_gib >= need
            for kind, need in MEMORY_NEEDED_GIB.items()}


class Sam3DObjects:
    """The queue's view of SAM 3D Objects: one job = one image -> one GLB or PLY file."""

    name: ClassVar[str] = "sam3d"
    options_model: ClassVar[type] = GenerateRequest
    oom_advice: ClassVar[str] = ('Try output_format "ply", or "with_texture": false, '
                                 "or a GPU with more memory.")

    def __init__(self, checkpoints_dir: Path, source_dir: Path, *,
                 masker: Masker | None = None, vram_gib: float | None = None):
        self.checkpoints_dir, self.source_dir = Path(checkpoints_dir), Path(source_dir)
        self._to_glb: Callable[..., Any] | None = None
        self.masker = masker
        self.vram_gib = vram_gib
        self.inference: Any = None
        self._local = threading.local()  # the running job's options and progress, per worker

    @staticmethod
    def checkpoint_present(checkpoints_dir: Path) -> bool:
        try:
            find_config(checkpoints_dir)
        except FileNotFoundError:
            return False
        return True

    @property
    def capabilities(self) -> dict[str, bool]:
        return servable_outputs(self.vram_gib)

    def load(self) -> None:
        config = find_config(self.checkpoints_dir)
        if self.vram_gib is None:
            gpu = gpu_info()["gpu"]
            self.vram_gib = gpu["vram_gb"] if gpu else None
        inference_cls = import_inference(self.source_dir)
        self._to_glb = import_to_glb()
        if self.masker is None:
            self.masker = Masker.create()
        self.inference = inference_cls(str(config), compile=False)
        self._hook_stages(self.inference._pipeline)
        log.info("SAM 3D Objects loaded from %s; servable outputs: %s", config, self.capabilities)

    def check(self, options: GenerateRequest) -> None:
        """Refuse at once what cannot fit, instead of minutes of work and an OOM."""
        need = MEMORY_NEEDED_GIB[options.memory_class]
        if not self.capabilities[options.memory_class]:
            have = f"{self.vram_gib:g} GiB" if self.vram_gib else "no GPU"
            raise PipelineError(f"{options.memory_class} needs about {need:g} GiB of GPU memory "
                                f"and this server has {have}. {self.oom_advice}", status=507)

    def run(self, options: GenerateRequest, image: Image.Image, output_stem: Path,
            progress: Progress) -> Result:
        if self.inference is None:
            raise PipelineError("SAM 3D Objects is not loaded", status=503)
        self.check(options)
        progress("segmenting", 0.05)
        rgba = self.masker(image)
        self._local.options, self._local.progress = options, progress
        try:
            output = self.inference._pipeline.run(
                rgba, None, options.seed, stage1_only=False,
                with_mesh_postprocess=options.output_format == "glb",
                with_texture_baking=options.output_format == "glb" and options.with_texture,
                with_layout_postprocess=False,
                use_vertex_color=not options.with_texture,
                stage1_inference_steps=options.stage1_steps,
                stage2_inference_steps=options.stage2_steps,
                decode_formats=["gaussian"] if options.output_format == "ply" else None)
        finally:
            self._local.options = self._local.progress = None
        progress("export", 0.95)
        return self._write(options.output_format, output, output_stem)

    def _write(self, output_format: str, output: dict, output_stem: Path) -> Result:
        if output_format == "ply":
            gaussian = output.get("gs")
            if gaussian is None:
                gaussian = (output.get("gaussian") or [None])[0]
            if gaussian is None:
                raise PipelineError("SAM 3D Objects returned no Gaussian splat")
            path = Path(f"{output_stem}.ply")
            atomic_write(path, lambda tmp: gaussian.save_ply(str(tmp)))
            return Result(path, "application/octet-stream", "model.ply")
        mesh = output.get("glb")
        if mesh is None:
            raise PipelineError("SAM 3D Objects returned no mesh")
        path = Path(f"{output_stem}.glb")
        atomic_write(path, lambda tmp: tmp.write_bytes(mesh.export(file_type="glb")))
        return Result(path, "model/gltf-binary", "model.glb")

    # -- progress and per-job GLB options, hooked into the loaded pipeline --------------

    def _hook_stages(self, pipeline: Any) -> None:
        for method_name, (stage, fraction) in STAGE_METHODS.items():
            if hasattr(pipeline, method_name):
                setattr(pipeline, method_name,
                        self._reporting(getattr(pipeline, method_name), stage, fraction))
        pipeline.postprocess_slat_output = self._postprocess

    def _reporting(self, method: Callable, stage: str, fraction: float) -> Callable:
        def wrapper(*args, **kwargs):
            report = getattr(self._local, "progress", None)
            if report is not None:
                report(stage, fraction)
            return method(*args, **kwargs)
        return wrapper

    def _postprocess(self, outputs: dict, with_mesh_postprocess: bool,
                     with_texture_baking: bool, use_vertex_color: bool, *args, **kwargs) -> dict:
        """Upstream's mesh post-processing, with the job's `simplify` and `texture_size`."""
        options: GenerateRequest = self._local.options
        if "mesh" not in outputs:
            outputs["glb"] = None
            return outputs
        self._local.progress("texture baking" if with_texture_baking else "mesh postprocess",
                             0.85)
        gaussians = outputs.get("gaussian")
        outputs["glb"] = self._to_glb(
            gaussians[0] if gaussians else None, outputs["mesh"][0],
            simplify=options.simplify, texture_size=options.texture_size, verbose=False,
            with_mesh_postprocess=with_mesh_postprocess,
            with_texture_baking=with_texture_baking, use_vertex_color=use_vertex_color,
            rendering_engine=getattr(self.inference._pipeline, "rendering_engine", "pytorch3d"))
        return outputs
