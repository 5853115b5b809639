"""Stand-in for upstream's render_utils: `render_multiview` renders through `render_frames`,
whose Gaussian backend defaults to "inria" (render_utils.py:77). That backend needs
`diff_gaussian_rasterization`, which the image does not install; like upstream
(gaussian_render.py:23-31, then a NameError at render time) the stand-in fails without it."""
import importlib.util

import numpy as np

CALLS = []  # the options of every render_frames call


def render_frames(sample, extrinsics, intrinsics, options={}, colors_overwrite=None,
                  verbose=True, **kwargs):
    CALLS.append(dict(options))
    backend = options.get("backend", "inria")
    if backend == "inria" and importlib.util.find_spec("diff_gaussian_rasterization") is None:
        raise NameError("name 'GaussianRasterizationSettings' is not defined")
    resolution = options.get("resolution", 512)
    color = (np.clip(sample._features_dc.mean(0).numpy(), 0, 1) * 255).astype(np.uint8)
    frame = np.broadcast_to(color, (resolution, resolution, 3))  # no memory for 100 x 1024^2
    return {"color": [frame for _ in extrinsics], "depth": [None for _ in extrinsics]}


def render_multiview(sample, resolution=512, nviews=30):
    cameras = [np.eye(4) for _ in range(nviews)]
    result = render_frames(sample, cameras, cameras,
                           {"resolution": resolution, "bg_color": (0, 0, 0)})
    return result["color"], cameras, cameras
