"""SAM 3D Objects behind the queue: photo -> GLB mesh or Gaussian-splat PLY.

The model itself (CUDA-only: kaolin, gsplat, nvdiffrast, pytorch3d) is reached through one
seam, its public `Inference` class and the pipeline it builds, imported from the SAM 3D
Objects source tree in `load()`. Everything around it (masking, options, memory admission,
progress, writing files) is ours and runs without a GPU. Line numbers cited below are
upstream's, facebookresearch/sam-3d-objects at cf06676; tests hold the stand-in in
tests/sam3d_stand_in to those signatures, and ../shared/sam3d-cpu runs this file against the
real code on CPU.

The model is this module and a package beside it. This module is its front: the request
(`GenerateRequest`), the pipeline (`Sam3DObjects`) and its row of the model table (`SPEC`).
It stays a file, `pipelines/sam3d.py`, not a package: the SAM 3D CPU kit
(../shared/sam3d-cpu, run_wrapper.py:26 and _kit.py:160-177) checks that this very file
exists and uses `from pipelines import sam3d` with `sam3d.Sam3DObjects`, `sam3d.Masker` and
`sam3d.GenerateRequest`; and journal rows name `pipelines.sam3d:GenerateRequest`. A
`pipelines/sam3d/` folder would shadow the file, so its helpers live in the package
`pipelines/sam3d_parts/` (not `sam3d_objects`: that is upstream's own package's name, which
this module imports too):

- `upstream`: the seam (config, `Inference`, `make_scene`, `to_glb`, baking with gsplat).
- `memory`: GPU memory each output needs, whole and in low-memory mode; what a GPU serves.
- `offload`: the low-memory mode (one stage's sub-models on the GPU at a time).
- `masks`: which pixels are the object (a client's mask, alpha, rembg); `/segment` too.
- `scene`: several objects in one file, each placed by its predicted pose.
- `mesh_files`: a mesh as GLB, OBJ zip, STL or USDZ.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import trimesh
from PIL import Image
from pydantic import Field, model_validator

from .base import Progress, Result
from .errors import NotLoaded, OutOfMemory, PipelineError
from .device import gpu_info
from .images import ImageData, ImageInput, ImageLimits, JobInputs
from .outputs import atomic_write
from .sam3d_parts.masks import Masker, decode_mask, encode_mask, read_client_mask, with_mask
from .sam3d_parts.memory import (MEMORY_NEEDED_GIB, MEMORY_NEEDED_GIB_OFFLOAD,
                                   offload_wanted, servable_outputs)
from .sam3d_parts.mesh_files import MESH_FORMATS
from .sam3d_parts.offload import StageOffload, loading_to_cpu
from .sam3d_parts.scene import Pose, object_progress, objects_info, place_mesh
from .sam3d_parts.upstream import (bake_with_gsplat, find_config, import_inference,
                                     import_make_scene, import_to_glb)
from .spec import Endpoint, OutputFormat, PipelineSpec

log = logging.getLogger(__name__)

# Objects one job may reconstruct into one scene: each is a full run of the model
# (about a minute on a large GPU), and the job holds every object's result until the end.
MAX_OBJECTS = 8


@dataclass(frozen=True)
class OutputPlan:
    """What upstream's `run` must decode and do for one output (pointmap.py:316-333)."""

    decode_formats: tuple[str, ...]
    with_mesh_postprocess: bool
    with_texture_baking: bool
    use_vertex_color: bool


OUTPUT_PLANS = {
    "ply": OutputPlan(("gaussian",), False, False, False),
    # to_glb colours vertices only when neither post-processing nor baking runs
    # (postprocessing_utils.py:668-680): upstream's own Inference.__call__ flags
    # (inference.py:114-117). Post-processing needs nvdiffrast and would drop the colours.
    "glb": OutputPlan(("mesh",), False, False, True),
    # run()'s defaults (pointmap.py:322-325); baking renders the Gaussians, so both decode.
    "glb_textured": OutputPlan(("gaussian", "mesh"), True, True, False),
}
# SAM 3D's pipeline methods, in call order, and the stage each one starts.
STAGE_METHODS = {
    "compute_pointmap": ("point map", 0.1),
    "sample_sparse_structure": ("sparse structure", 0.15),
    "sample_slat": ("structured latent", 0.45),
    "decode_slat": ("decoding", 0.7),
}


class GenerateRequest(ImageInput):
    """Options of an image-to-3D job (`POST /generate`)."""

    seed: int = Field(42, ge=0, le=2**32 - 1)
    output_format: Literal["glb", "ply", "obj", "stl", "usdz"] = Field(
        "glb", description="glb: mesh; ply: Gaussian splat; obj: a zip of the mesh, its "
        "material and texture; stl: the mesh alone; usdz: for AR Quick Look")
    with_texture: bool = Field(True, description="Bake a texture (glb, obj, usdz); false "
                               "gives vertex colours, faster and lighter")
    mask: ImageData | None = Field(None, description="Base64 image the photo's size: non-zero "
                             "pixels are the object (default: background removal)")
    mask_url: str | None = Field(None, description="http(s) URL of such a mask")
    masks: list[ImageData] | None = Field(
        None, min_length=1, max_length=MAX_OBJECTS,
        description=f"Up to {MAX_OBJECTS} base64 masks, one per object: one file with every "
        "object placed by its predicted pose")
    stage1_steps: int | None = Field(None, ge=1, le=100, description="Sparse-structure "
                                     "diffusion steps (model default when omitted)")
    stage2_steps: int | None = Field(None, ge=1, le=100, description="Structured-latent "
                                     "diffusion steps (model default when omitted)")
    texture_size: Literal[512, 1024, 2048] = Field(1024, description="Baked texture's side "
                                                   "(textured GLB only)")
    simplify: float = Field(0.95, ge=0.0, le=0.99, description="Fraction of mesh triangles "
                            "removed (textured GLB only: the vertex-colour GLB is upstream's "
                            "mesh as decoded)")

    @model_validator(mode="after")
    def _one_mask_source(self):
        if sum(source is not None for source in (self.mask, self.mask_url, self.masks)) > 1:
            raise ValueError("send at most one of 'mask', 'mask_url' or 'masks'")
        return self

    @property
    def memory_class(self) -> str:
        if self.output_format == "ply":
            return "ply"
        if self.output_format == "stl":  # no colour to bake
            return "glb"
        return "glb_textured" if self.with_texture else "glb"

    def load(self, limits: ImageLimits) -> JobInputs:
        """The image, and the masks checked against it (size, content) at submission and
        kept in the options as 1-bit PNGs, so a bad mask is a 400, not a failed job."""
        inputs = super().load(limits)
        options, image = inputs.options, inputs.image
        if self.masks is not None:
            sources = [(f"masks[{index}]", mask, False) for index, mask in enumerate(self.masks)]
        elif self.mask_url is not None:
            sources = [("mask_url", self.mask_url, True)]
        elif self.mask is not None:
            sources = [("mask", self.mask, False)]
        else:
            return inputs
        masks = [encode_mask(read_client_mask(source, image.size, where, is_url=is_url,
                                              limits=limits))
                 for where, source, is_url in sources]
        return inputs._replace(options=options.model_copy(
            update={"mask": None, "mask_url": None, "masks": masks}))


class Sam3DObjects:
    """The queue's view of SAM 3D Objects: one job = one image and its masks -> one file."""

    name: ClassVar[str] = "sam3d"
    options_model: ClassVar[type] = GenerateRequest
    oom_advice: ClassVar[str] = ('Try output_format "ply", or "with_texture": false, '
                                 "or SAM3D_OFFLOAD=on, or a GPU with more memory.")

    def __init__(self, checkpoints_dir: Path, source_dir: Path, *,
                 masker: Masker | None = None, vram_gib: float | None = None,
                 compile: bool = False, offload: str = "auto"):
        self.checkpoints_dir, self.source_dir = Path(checkpoints_dir), Path(source_dir)
        self._to_glb: Callable[..., Any] | None = None
        self._make_scene: Callable[..., Any] | None = None
        self.masker = masker
        # the GPU memory this model may use: its card's, or in the HTTP server what the card
        # leaves it beside the other models there (workers/pool.py Memory), which
        # `memory_note` then names
        self.vram_gib = vram_gib
        self.memory_note: str | None = None
        self.compile = compile
        self.offload_mode = offload
        self.offload: StageOffload | None = None
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
    def low_memory(self) -> bool:
        """Whether the low-memory mode is (or will be, once loaded) on: SAM3D_OFFLOAD and
        the GPU's size decide, so an unloaded copy answers as the loaded model does."""
        return offload_wanted(self.offload_mode, self.vram_gib)

    @property
    def capabilities(self) -> dict[str, bool]:
        return servable_outputs(self.vram_gib, self.low_memory)

    def load(self) -> None:
        config = find_config(self.checkpoints_dir)
        if self.vram_gib is None:
            gpu = gpu_info()["gpu"]
            self.vram_gib = gpu["vram_gb"] if gpu else None
        inference_cls = import_inference(self.source_dir)
        self._make_scene = import_make_scene()
        self._to_glb = import_to_glb()
        bake_with_gsplat()
        if self.masker is None:
            self.masker = Masker.create()
        offload = self.low_memory
        if offload and self.compile:
            # compile's warm-up runs (inference_pipeline.py:198) need every sub-model in place
            log.warning("SAM3D_COMPILE is ignored in low-memory mode (SAM3D_OFFLOAD)")
        compile = self.compile and not offload
        if offload:
            from sam3d_objects.pipeline.inference_pipeline import InferencePipeline

            with loading_to_cpu(InferencePipeline):
                self.inference = inference_cls(str(config), compile=compile)
            self.offload = StageOffload(self.inference._pipeline)
            self.offload.park_all()
        else:
            # compile=True: torch.compile plus three warm-up runs at load (inference_pipeline.py:198)
            self.inference = inference_cls(str(config), compile=compile)
        self._hook_stages(self.inference._pipeline)
        log.info("SAM 3D Objects loaded from %s (low-memory mode %s); servable outputs: %s",
                 config.name, "on" if offload else "off", self.capabilities)

    def check(self, options: GenerateRequest) -> None:
        """Refuse at once what cannot fit, instead of minutes of work and an OOM."""
        needed = MEMORY_NEEDED_GIB_OFFLOAD if self.low_memory else MEMORY_NEEDED_GIB
        if not self.capabilities[options.memory_class]:
            have = f"{self.vram_gib:g} GiB" if self.vram_gib else "no GPU"
            if self.memory_note:
                have += f" ({self.memory_note})"
            raise OutOfMemory(f"{options.memory_class} needs about "
                              f"{needed[options.memory_class]:g} GiB of GPU memory and this "
                                f"server has {have}. {self.oom_advice}")

    @staticmethod
    def time_limit(options: GenerateRequest, image: Image.Image) -> float | None:
        """No estimate yet: the queue keeps JOB_TIMEOUT_SECONDS for SAM 3D jobs."""
        return None

    def run(self, options: GenerateRequest, image: Image.Image, output_stem: Path,
            progress: Progress) -> Result:
        if self.inference is None:
            raise NotLoaded("SAM 3D Objects is not loaded")
        self.check(options)
        if options.masks:
            objects = [with_mask(image, decode_mask(mask)) for mask in options.masks]
        else:
            progress("segmenting", 0.05)
            objects = [self.masker(image)]
        outputs = []
        for index, rgba in enumerate(objects):
            report = progress if len(objects) == 1 else object_progress(progress, index,
                                                                         len(objects))
            outputs.append(self._reconstruct(rgba, options, report, scene=len(objects) > 1))
        progress("export", 0.95)
        if self.offload is not None:
            self.offload.park_all()
        return self._write(options, outputs, output_stem)

    def _reconstruct(self, rgba, options: GenerateRequest, progress: Progress,
                     scene: bool) -> dict:
        """One object through upstream's `run()` (inference_pipeline_pointmap.py:316-420)."""
        plan = OUTPUT_PLANS[options.memory_class]
        self._local.options, self._local.progress = options, progress
        try:
            # Layout post-optimisation refines an object's pose from its mesh; a scene uses
            # the poses, as upstream's own Inference.__call__ does (inference.py:113). It
            # renders through CUDA code and upstream logs and skips it if it fails
            # (pointmap.py:396-413). A single object's file is object-centred: no need.
            return self.inference._pipeline.run(
                rgba, None, options.seed, stage1_only=False,
                with_mesh_postprocess=plan.with_mesh_postprocess,
                with_texture_baking=plan.with_texture_baking,
                with_layout_postprocess=scene and "mesh" in plan.decode_formats,
                use_vertex_color=plan.use_vertex_color,
                stage1_inference_steps=options.stage1_steps,
                stage2_inference_steps=options.stage2_steps,
                decode_formats=list(plan.decode_formats))
        finally:
            self._local.options = self._local.progress = None

    def _write(self, options: GenerateRequest, outputs: list[dict], output_stem: Path) -> Result:
        """One file for every object: as decoded for one, placed by its pose for several."""
        poses = [Pose.of(output) for output in outputs]
        if options.output_format == "ply":
            gaussians = [(output.get("gaussian") or [None])[0] for output in outputs]
            if any(gaussian is None for gaussian in gaussians):
                raise PipelineError("SAM 3D Objects returned no Gaussian splat")
            counts = [{"gaussians": len(gaussian.get_xyz)} for gaussian in gaussians]
            scene = gaussians[0] if len(outputs) == 1 else self._make_scene(*outputs)
            path = Path(f"{output_stem}.ply")
            atomic_write(path, lambda tmp: scene.save_ply(str(tmp)))
            return Result(path, "application/octet-stream", "model.ply",
                          objects_info(poses, counts))
        meshes = [output.get("glb") for output in outputs]
        if any(mesh is None for mesh in meshes):
            raise PipelineError("SAM 3D Objects returned no mesh")
        if len(meshes) > 1:
            meshes = [place_mesh(mesh, pose) for mesh, pose in zip(meshes, poses)]
        counts = [{"vertices": len(mesh.vertices), "faces": len(mesh.faces)} for mesh in meshes]
        suffix, media_type, download_name, write = MESH_FORMATS[options.output_format]
        scene = trimesh.Scene()
        for index, mesh in enumerate(meshes):
            scene.add_geometry(mesh, geom_name=f"object_{index}")
        path = Path(f"{output_stem}{suffix}")
        atomic_write(path, lambda tmp: write(scene, tmp))
        return Result(path, media_type, download_name, objects_info(poses, counts))

    # -- progress, offloading and per-job GLB options, hooked into the loaded pipeline ----

    def _hook_stages(self, pipeline: Any) -> None:
        for method_name, (stage, fraction) in STAGE_METHODS.items():
            setattr(pipeline, method_name, self._staged(getattr(pipeline, method_name),
                                                        method_name, stage, fraction))
        pipeline.postprocess_slat_output = self._staged(
            self._postprocess, "postprocess_slat_output", None, None)

    def _staged(self, method: Callable, method_name: str, stage: str | None,
                fraction: float | None) -> Callable:
        """`method` reporting its stage and, in low-memory mode, bringing its sub-models."""
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            report = getattr(self._local, "progress", None)
            if report is not None and stage is not None:
                report(stage, fraction)
            if self.offload is not None:
                self.offload.enter(method_name, args, kwargs)
            return method(*args, **kwargs)
        return wrapper

    def _postprocess(self, outputs: dict, with_mesh_postprocess: bool,
                     with_texture_baking: bool, use_vertex_color: bool) -> dict:
        """Upstream's `postprocess_slat_output` (inference_pipeline.py:534-567) with the job's
        `simplify` and `texture_size` instead of its fixed 0.95 and 1024, and without its
        KeyError when only the mesh was decoded (it always reads outputs["gaussian"][0])."""
        options: GenerateRequest = self._local.options
        gaussian = (outputs.get("gaussian") or [None])[0]
        outputs["glb"] = None
        if "mesh" in outputs:
            self._local.progress("texture baking" if with_texture_baking else "mesh", 0.85)
            outputs["glb"] = self._to_glb(
                gaussian, outputs["mesh"][0], simplify=options.simplify,
                texture_size=options.texture_size, verbose=False,
                with_mesh_postprocess=with_mesh_postprocess,
                with_texture_baking=with_texture_baking, use_vertex_color=use_vertex_color,
                rendering_engine=self.inference._pipeline.rendering_engine)
        if gaussian is not None:
            outputs["gs"] = gaussian
        return outputs


SPEC = PipelineSpec(
    name="sam3d",
    unconfigured=("not configured: no pipeline.yaml in CHECKPOINTS_DIR (checkpoints/ by "
                  "default); it needs a CUDA GPU, see DEPLOY.md"),
    endpoints=(Endpoint("generate", GenerateRequest, "Queue an image-to-3D job",
                        "Image to 3D, answered with the file", sync="file",
                        answer_description="The GLB, PLY, OBJ zip, STL or USDZ file",
                        inline_field="model_base64", task="3d"),),
    factory=lambda config: Sam3DObjects(config.checkpoints_dir, config.sam3d_source_dir,
                                        vram_gib=config.sam3d_vram_gib,
                                        compile=config.sam3d_compile,
                                        offload=config.sam3d_offload),
    checkpoint_present=lambda config: Sam3DObjects.checkpoint_present(
        config.checkpoints_dir),
    outputs=(OutputFormat("ply", ".ply", "application/octet-stream", "model.ply"),
             *(OutputFormat(name, suffix, media_type, download_name,
                            zip_member=".obj" if suffix == ".zip" else None)
               for name, (suffix, media_type, download_name, _) in MESH_FORMATS.items())),
    placement="gpu",
    memory="30 GiB for any output (14-22 GiB in low-memory mode): MEMORY_NEEDED_GIB",
)
