"""A depth or normal map into the file its request asked for (`output`): PNG, 16-bit PNG, npy,
colour, or a relief (glb, ply), and the answer's info. Shared by every map-making model
(Lotus, Depth Anything V2): each says what its map is (`task`, `disparity`, `metric`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import Result, describe_failure
from .errors import PipelineError
from .outputs import DEPTH_FORMATS, NORMAL_FORMATS, atomic_write
from .relief import (GEOMETRY, GEOMETRY_METRIC, NORMALS_FROM_LOTUS, NORMALS_FROM_MESH,
                     RELIEF_FORMATS)

# Lotus's normals (upstream's infer.py writes them so); said in every normal job's answer.
# What a normal map's values mean, as upstream's code defines it: the pipeline's [0, 1]
# output is 2n - 1 mapped back (eval.py:214, the evaluation's `pred_normal*2-1`), x, y, z in
# R, G, B (utils/visualize.py:43-48); the frame is the training targets': Hypersim's camera-
# space normals with x negated (utils/hypersim_dataset.py:74-75), turned to face the camera
# (n . p >= 0 for p = depth K^-1 (u, v, 1), hypersim_dataset.py:35-53, --align_cam_normal in
# train_scripts/train_lotus_*_normal.sh): x to the left, y up, z toward the camera.
NORMAL_CONVENTION = {
    "frame": "camera: x to the left, y up, z toward the camera (R, G, B = x, y, z)",
    "range": "each channel in [0, 1]; the normal is 2 * value - 1, each component in [-1, 1] "
             "(not renormalised to unit length)",
}


def finish_map(options: Any, prediction: np.ndarray, photo: Image.Image, output_stem: Path,
               normal_map: np.ndarray | None = None, *, task: str, disparity: bool,
               metric: bool = False) -> Result | PipelineError:
    """The job's result, or the error that fails this job alone (its batch goes on)."""
    if not all(np.isfinite(array).all() for array in (prediction, normal_map)
               if array is not None):
        return PipelineError("the model produced non-finite values")
    try:
        return write_map(options, prediction, photo, output_stem, normal_map, task=task,
                         disparity=disparity, metric=metric)
    except PipelineError as exc:  # a relief with no surface fails this job alone
        return exc
    except OSError as exc:  # a full or read-only disk fails this job, not its batch
        return describe_failure(exc)


def write_map(options: Any, prediction: np.ndarray, photo: Image.Image, output_stem: Path,
              normal_map: np.ndarray | None, *, task: str, disparity: bool,
              metric: bool = False) -> Result:
    formats = {**DEPTH_FORMATS, **RELIEF_FORMATS} if task == "depth" else NORMAL_FORMATS
    encode, suffix, media_type, download_name = formats[options.output]
    if options.output in RELIEF_FORMATS:
        data = encode(prediction, photo, disparity=disparity,
                      fov_degrees=options.fov_degrees, normal_map=normal_map, metric=metric)
    elif task == "depth" and options.output == "color":
        data = encode(prediction, disparity=disparity)
    else:
        data = encode(prediction)
    path = atomic_write(Path(f"{output_stem}{suffix}"), lambda tmp: tmp.write_bytes(data))
    info: dict = {"model": options.model, "width": int(prediction.shape[1]),
                  "height": int(prediction.shape[0])}
    if task == "depth":
        info.update(min=float(prediction.min()), max=float(prediction.max()),
                    disparity=disparity)
        if metric:
            info["units"] = "metres"
        if options.output in RELIEF_FORMATS:
            info.update(geometry=GEOMETRY_METRIC if metric else GEOMETRY,
                        fov_degrees=options.fov_degrees)
            if normal_map is not None:
                info.update(normal_model=options.normal_model,
                            normals=NORMALS_FROM_LOTUS.format(model=options.normal_model))
            elif options.output == "glb":
                info["normals"] = NORMALS_FROM_MESH
    else:
        info.update(NORMAL_CONVENTION)
    return Result(path=path, media_type=media_type, download_name=download_name, info=info)
