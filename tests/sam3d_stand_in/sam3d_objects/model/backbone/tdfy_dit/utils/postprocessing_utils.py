"""Stand-in for upstream's `to_glb` (postprocessing_utils.py:585-682): its signature, and its
flag semantics. Vertex colours only when neither post-processing nor baking runs and
`use_vertex_color` is set; otherwise a plain mesh, textured when baked. Post-processing keeps
(1 - simplify) of the faces (upstream decimates, then fills holes with nvdiffrast)."""
import numpy as np
import trimesh
from PIL import Image

from .render_utils import render_multiview

CALLS = []


def to_glb(app_rep, mesh, simplify=0.95, fill_holes=True, fill_holes_max_size=0.04,
           texture_size=1024, debug=False, verbose=True, with_mesh_postprocess=True,
           with_texture_baking=True, use_vertex_color=False, rendering_engine="nvdiffrast"):
    CALLS.append(dict(simplify=simplify, texture_size=texture_size,
                      with_mesh_postprocess=with_mesh_postprocess,
                      with_texture_baking=with_texture_baking, use_vertex_color=use_vertex_color,
                      rendering_engine=rendering_engine, has_app_rep=app_rep is not None))
    vertices = mesh.vertices.float().cpu().numpy()
    faces = mesh.faces.cpu().numpy()
    vert_colors = mesh.vertex_attrs[:, :3].cpu().numpy()
    if with_mesh_postprocess:
        faces = faces[: max(1, int(len(faces) * (1 - simplify)))]
    if with_texture_baking:
        uvs = (vertices[:, :2] - vertices[:, :2].min(0)) / np.ptp(vertices[:, :2], axis=0)
        observations, _, _ = render_multiview(app_rep, resolution=1024, nviews=100)
        texture = Image.new("RGB", (texture_size, texture_size),
                            tuple(int(c) for c in observations[0][0, 0]))
        material = trimesh.visual.material.PBRMaterial(
            roughnessFactor=1.0, baseColorTexture=texture,
            baseColorFactor=np.array([255, 255, 255, 255], dtype=np.uint8))
    vertices = vertices @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    if not with_mesh_postprocess and not with_texture_baking and use_vertex_color:
        result = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
        result.visual.vertex_colors = vert_colors
        return result
    return trimesh.Trimesh(vertices, faces, visual=(
        trimesh.visual.TextureVisuals(uv=uvs, material=material) if with_texture_baking
        else None))
