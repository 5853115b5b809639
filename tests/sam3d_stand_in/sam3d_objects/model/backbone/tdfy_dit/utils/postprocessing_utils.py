"""Stand-in for SAM 3D Objects' `to_glb`: a real trimesh mesh from the stand-in's sphere."""

import numpy as np
import trimesh
from PIL import Image

CALLS = []


def to_glb(gaussian, mesh, simplify, texture_size, verbose, with_mesh_postprocess,
           with_texture_baking, use_vertex_color, rendering_engine="pytorch3d"):
    CALLS.append(dict(simplify=simplify, texture_size=texture_size,
                      with_mesh_postprocess=with_mesh_postprocess,
                      with_texture_baking=with_texture_baking, use_vertex_color=use_vertex_color,
                      has_gaussian=gaussian is not None))
    sphere = trimesh.Trimesh(vertices=mesh["vertices"], faces=mesh["faces"], process=False)
    if with_texture_baking:
        uv = (sphere.vertices[:, :2] + 1) / 2
        texture = Image.new("RGB", (texture_size, texture_size), (200, 120, 40))
        sphere.visual = trimesh.visual.TextureVisuals(uv=uv, image=texture)
    else:
        colors = np.tile(np.array([[200, 120, 40, 255]], dtype=np.uint8), (len(sphere.vertices), 1))
        sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=colors)
    return sphere
