"""Depth in 3D: a Lotus prediction and its photo as a relief mesh (GLB) or point cloud (PLY).

Lotus predicts affine-invariant disparity (the *-disparity models) or depth (v1-0): the
scale and offset are unknown, so what comes out is relief, not metric depth. The rule,
stated in every answer (`GEOMETRY`): the prediction is stretched min..max onto distances
1 (nearest) to DEPTH_RANGE (farthest), through 1/disparity for disparity models, and each
pixel is placed along its ray through a pinhole camera whose field of view across the
photo's longer side is `fov_degrees`. The camera sits at the origin looking down -z, y up
(glTF's frame); a pixel at distance d has z = -d.

A viewer's lights shade the relief by its vertex normals: by default the triangles' own
(as trimesh averages them), or, given a Lotus normal map of the same photo (`normal_model`),
the surface as Lotus sees it, each sample's predicted normal turned into the relief's frame
(`relief_normals`): finer than the grid's shape, which is only as good as the depth.

Pure numpy geometry (`relief_grid`); trimesh only writes the files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import Unprocessable

DEFAULT_FOV_DEGREES = 60.0
MIN_FOV_DEGREES, MAX_FOV_DEGREES = 10.0, 150.0
DEPTH_RANGE = 4.0  # the farthest point is assumed this many times as far as the nearest
MAX_GRID_SIDE = 512  # vertices along the grid's longer side (a 4K photo: 512 x 288)
MAX_TEXTURE_SIDE = 2048
# A triangle whose farthest corner is more than EDGE_RATIO times as far as its nearest spans
# a depth discontinuity (an object's edge in front of the background) and is left out.
EDGE_RATIO = 1.15
GEOMETRY = (f"relief: affine-invariant Lotus output, not metric depth; stretched onto "
            f"distances 1 (nearest) to {DEPTH_RANGE:g} (farthest), through 1/disparity for "
            "disparity models, on a pinhole camera with fov_degrees across the photo's longer "
            "side, looking down -z with y up; triangles whose corners' distances differ by "
            f"more than a factor {EDGE_RATIO:g} are dropped")
# A metric model's map (Depth Anything V2 Metric: depth in metres) is placed as it is.
GEOMETRY_METRIC = (f"true scale: each pixel placed at its predicted depth in metres along its "
                   "ray, on a pinhole camera with fov_degrees across the photo's longer side, "
                   "looking down -z with y up (units: metres); triangles whose corners' "
                   f"depths differ by more than a factor {EDGE_RATIO:g} are dropped")
MIN_METRIC_DEPTH = 1e-3  # metres: a map's zeros (its floor) kept in front of the camera
NORMALS_FROM_MESH = "from the relief's triangles"
NORMALS_FROM_LOTUS = ("from Lotus model {model}'s normal map of the photo: its x (to the left) "
                      "negated to the relief's x to the right, y up, z toward the camera, "
                      "renormalised to unit length")


@dataclass
class ReliefGrid:
    vertices: np.ndarray  # (n, 3) float32, one per grid sample, row-major
    faces: np.ndarray  # (m, 3) int64, counter-clockwise seen from the camera
    uvs: np.ndarray  # (n, 2) float32: the sample's place in the photo, v up (OpenGL)
    colors: np.ndarray  # (n, 3) uint8: the photo at each sample
    normals: np.ndarray | None = None  # (n, 3) float32 unit vectors, given a normal map


def relief_distance(prediction: np.ndarray, disparity: bool,
                    metric: bool = False) -> np.ndarray:
    """Distances in [1, DEPTH_RANGE]: larger disparity nearer, larger depth farther; a
    metric map's own depths (metres), at least MIN_METRIC_DEPTH."""
    if metric:
        return np.maximum(prediction, MIN_METRIC_DEPTH)
    low, high = float(prediction.min()), float(prediction.max())
    unit = (prediction - low) / (high - low) if high > low else np.zeros_like(prediction)
    if disparity:  # disparity 1/DEPTH_RANGE .. 1 -> distance DEPTH_RANGE .. 1
        return 1.0 / (1.0 / DEPTH_RANGE + unit * (1.0 - 1.0 / DEPTH_RANGE))
    return 1.0 + unit * (DEPTH_RANGE - 1.0)


def relief_normals(normal_map: np.ndarray) -> np.ndarray:
    """Unit normals in the relief's frame (x right, y up, z toward the camera) from a Lotus
    normal map (height, width, 3) in [0, 1], whose normal is 2 * value - 1 with x to the
    left, y up, z toward the camera (pipelines/maps.py, NORMAL_CONVENTION): x is negated.
    A zero-length prediction faces the camera."""
    vectors = normal_map.astype(np.float64) * 2.0 - 1.0
    vectors[..., 0] *= -1.0
    length = np.linalg.norm(vectors, axis=-1, keepdims=True)
    facing = np.zeros_like(vectors)
    facing[..., 2] = 1.0
    unit = np.divide(vectors, length, out=facing, where=length > 1e-6)
    return unit.astype(np.float32)


def _samples(size: int, count: int) -> np.ndarray:
    """`count` pixel indices spread evenly over `size` pixels (each a cell's centre)."""
    return ((np.arange(count) + 0.5) * size / count).astype(np.int64)


def relief_grid(prediction: np.ndarray, photo: Image.Image, disparity: bool,
                fov_degrees: float = DEFAULT_FOV_DEGREES, max_side: int = MAX_GRID_SIDE,
                normal_map: np.ndarray | None = None, metric: bool = False) -> ReliefGrid:
    """The prediction (height, width) as a grid of at most `max_side` samples along its
    longer side (nearest pixel, so no sample averages across an edge), coloured from the
    photo (resized to the prediction's size when they differ), with each sample's normal
    from `normal_map` (height, width, 3; Lotus's, of the same photo and size) if given."""
    height, width = prediction.shape
    if normal_map is not None and normal_map.shape != (height, width, 3):
        raise ValueError(f"normal map {normal_map.shape} does not match the depth map "
                         f"{prediction.shape}")
    scale = min(1.0, max_side / max(height, width))
    rows = _samples(height, max(1, round(height * scale)))
    cols = _samples(width, max(1, round(width * scale)))
    distance = relief_distance(prediction.astype(np.float64), disparity,
                               metric)[np.ix_(rows, cols)]

    focal = max(height, width) / 2 / np.tan(np.radians(fov_degrees) / 2)  # pixels
    u, v = np.meshgrid(cols + 0.5, rows + 0.5)
    vertices = np.stack([(u - width / 2) / focal * distance, -(v - height / 2) / focal * distance,
                         -distance], axis=-1).reshape(-1, 3).astype(np.float32)
    uvs = np.stack([u / width, 1.0 - v / height], axis=-1).reshape(-1, 2).astype(np.float32)

    rgb = np.asarray(photo.convert("RGB").resize((width, height), Image.BILINEAR)
                     if photo.size != (width, height) else photo.convert("RGB"))
    colors = rgb[np.ix_(rows, cols)].reshape(-1, 3)
    normals = (None if normal_map is None
               else relief_normals(normal_map[np.ix_(rows, cols)]).reshape(-1, 3))

    grid_rows, grid_cols = len(rows), len(cols)
    index = np.arange(grid_rows * grid_cols).reshape(grid_rows, grid_cols)
    top_left, top_right = index[:-1, :-1].ravel(), index[:-1, 1:].ravel()
    bottom_left, bottom_right = index[1:, :-1].ravel(), index[1:, 1:].ravel()
    faces = np.concatenate([np.stack([top_left, bottom_left, top_right], axis=1),
                            np.stack([top_right, bottom_left, bottom_right], axis=1)])
    corner = distance.ravel()[faces]
    faces = faces[corner.max(axis=1) <= EDGE_RATIO * corner.min(axis=1)]
    return ReliefGrid(vertices, faces, uvs, colors, normals)


def relief_glb(prediction: np.ndarray, photo: Image.Image, disparity: bool,
               fov_degrees: float, normal_map: np.ndarray | None = None,
               metric: bool = False) -> bytes:
    """The grid as a mesh textured with the photo (base colour, at most MAX_TEXTURE_SIDE
    pixels), matte, with vertex normals so a viewer's lights shade the relief: the
    normal map's, if given, else the triangles'."""
    import trimesh

    grid = relief_grid(prediction, photo, disparity, fov_degrees, normal_map=normal_map,
                       metric=metric)
    if not len(grid.faces):  # an empty GLB would open as nothing, without a word
        raise Unprocessable("no surface to mesh: the map is under 2 pixels on a side or every "
                            "triangle spans a depth jump; output ply keeps every point")
    texture = photo.convert("RGB")
    texture.thumbnail((MAX_TEXTURE_SIDE, MAX_TEXTURE_SIDE))
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=1.0, doubleSided=True)
    mesh = trimesh.Trimesh(grid.vertices, grid.faces, vertex_normals=grid.normals,
                           process=False,
                           visual=trimesh.visual.TextureVisuals(uv=grid.uvs, material=material))
    return trimesh.Scene(mesh).export(file_type="glb", include_normals=True)


def relief_ply(prediction: np.ndarray, photo: Image.Image, disparity: bool,
               fov_degrees: float, normal_map: np.ndarray | None = None,
               metric: bool = False) -> bytes:
    """One point per grid sample, coloured from the photo (binary PLY, vertex colours), with
    the normal map's normals as nx, ny, nz if given (a point has no triangles to take them
    from)."""
    import trimesh

    grid = relief_grid(prediction, photo, disparity, fov_degrees, normal_map=normal_map,
                       metric=metric)
    cloud = trimesh.PointCloud(grid.vertices, colors=grid.colors)
    if grid.normals is None:
        return cloud.export(file_type="ply")
    cloud.vertex_normals = grid.normals  # what trimesh's PLY writer reads for nx, ny, nz
    return cloud.export(file_type="ply", vertex_normal=True)


# output name -> (encoder, suffix, media type, download name), as outputs.DEPTH_FORMATS
RELIEF_FORMATS = {
    "glb": (relief_glb, ".glb", "model/gltf-binary", "relief.glb"),
    "ply": (relief_ply, ".ply", "application/octet-stream", "relief.ply"),
}
