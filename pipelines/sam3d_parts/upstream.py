"""SAM 3D Objects' own code, reached through one seam: its config in CHECKPOINTS_DIR, its
public `Inference` class (notebook/inference.py) and the helpers its pipeline runs (upstream's
`make_scene`, `to_glb`, the texture baker's renderer), imported from its source tree when the
model loads. Needs CUDA packages (kaolin, gsplat, nvdiffrast, pytorch3d) to import. Line
numbers are upstream's, facebookresearch/sam-3d-objects at cf06676.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

CONFIG_NAME = "pipeline.yaml"


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
        raise FileNotFoundError("SAM 3D Objects source not found at the configured "
                                "SAM3D_SOURCE_DIR")
    for path in (str(source_dir), str(notebook)):
        if path not in sys.path:
            sys.path.insert(0, path)
    # inference.py:5 copies CONDA_PREFIX into CUDA_HOME at import (KeyError without it).
    # Activating a conda env sets it to the env's prefix, which is this interpreter's.
    os.environ.setdefault("CONDA_PREFIX", sys.prefix)
    from inference import Inference  # type: ignore[import-not-found]

    return Inference


def import_make_scene() -> Callable[..., Any]:
    """Upstream's `make_scene` (notebook/inference.py:255), after `import_inference`."""
    from inference import make_scene  # type: ignore[import-not-found]

    return make_scene


def import_to_glb() -> Callable[..., Any]:
    from sam3d_objects.model.backbone.tdfy_dit.utils import postprocessing_utils

    return postprocessing_utils.to_glb


def bake_with_gsplat() -> None:
    """Render texture-baking views with gsplat instead of the "inria" rasterizer.

    `to_glb` bakes from `render_multiview` (postprocessing_utils.py:633), whose
    `render_frames` defaults the Gaussian backend to "inria" (render_utils.py:77):
    diff_gaussian_rasterization, which upstream does not install and whose usual source is
    licensed for non-commercial use only (upstream issues #12, #29, #105). gsplat is
    upstream's other backend (gaussian_render.py:165-195), the one its notebook renders with
    (notebook/inference.py:185). Options that name a backend keep it.
    """
    from sam3d_objects.model.backbone.tdfy_dit.utils import render_utils

    render_frames = render_utils.render_frames
    if getattr(render_frames, "defaults_to_gsplat", False):
        return

    @functools.wraps(render_frames)
    def render_frames_with_gsplat(sample, extrinsics, intrinsics, options=None, *args,
                                  **kwargs):
        return render_frames(sample, extrinsics, intrinsics,
                             {"backend": "gsplat", **(options or {})}, *args, **kwargs)

    render_frames_with_gsplat.defaults_to_gsplat = True
    render_utils.render_frames = render_frames_with_gsplat
