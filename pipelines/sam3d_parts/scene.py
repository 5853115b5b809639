"""Several objects of one photo in one file, each where SAM 3D Objects says it stands.

Upstream predicts, per object, a pose in the PyTorch3D camera frame of the photo (the point
map is turned into that frame: inference_pipeline_pointmap.py:255; +X left, +Y up, +Z into
the scene): `rotation` (a w-first quaternion), `translation` and `scale`, shapes (1, 4),
(1, 3), (1, 3). `make_scene` (notebook/inference.py:255-312) places the Gaussians with them
through `SceneVisualizer.object_pointcloud` (scene_visualizer.py:169-195), a PyTorch3D
`Transform3d` of scale, then rotation, then translation acting on row vectors
(transforms_3d.py:20-30): world = (local * scale) @ R + translation, R =
`quaternion_to_matrix(rotation)`. PLY scenes are upstream's own `make_scene`. Meshes have
no upstream counterpart, so `place_mesh` applies the same transform to the mesh `to_glb`
wrote, then turns the camera frame into glTF's (the photo's camera at the origin looking
down -Z, +Y up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import trimesh

from ..base import Progress

# to_glb turns the decoded mesh from z-up to y-up: vertices @ Y_UP (postprocessing_utils.py:666)
Y_UP = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
# PyTorch3D camera (+X left, +Z forward) to glTF (+X right, +Z towards the viewer): a half
# turn about +Y, a rotation, so nothing is mirrored.
CAMERA_TO_GLTF = np.diag([-1.0, 1.0, -1.0])


def _values(tensor, size: int) -> list[float]:
    values = np.asarray(tensor.detach().float().cpu() if hasattr(tensor, "detach") else tensor,
                        dtype=np.float64).reshape(-1)
    if values.size != size:
        raise ValueError(f"expected {size} values, got {values.size}")
    return [float(value) for value in values]


@dataclass(frozen=True)
class Pose:
    """One object's place in the photo's camera frame, as upstream's `run()` returns it."""

    rotation: list[float]  # quaternion w, x, y, z
    translation: list[float]
    scale: list[float]

    @classmethod
    def of(cls, output: dict) -> "Pose":
        return cls(_values(output["rotation"], 4), _values(output["translation"], 3),
                   _values(output["scale"], 3))

    def as_dict(self) -> dict[str, list[float]]:
        return {"rotation": self.rotation, "translation": self.translation, "scale": self.scale}

    def rotation_matrix(self) -> np.ndarray:
        """PyTorch3D's `quaternion_to_matrix` (the usual matrix of a unit quaternion)."""
        return trimesh.transformations.quaternion_matrix(self.rotation)[:3, :3]

    def local_to_camera(self) -> np.ndarray:
        """4x4 for column vectors: x -> R^T (x * scale) + t, PyTorch3D's row-vector
        (x * scale) @ R + t written the other way round."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.rotation_matrix().T @ np.diag(self.scale)
        matrix[:3, 3] = self.translation
        return matrix


def place_mesh(mesh: trimesh.Trimesh, pose: Pose) -> trimesh.Trimesh:
    """A copy of `to_glb`'s y-up mesh, moved to where the object stands, in glTF's frame."""
    undo_y_up, to_gltf = np.eye(4), np.eye(4)
    undo_y_up[:3, :3] = Y_UP  # y-up row vectors v @ Y_UP back to z-up: Y_UP @ v as columns
    to_gltf[:3, :3] = CAMERA_TO_GLTF
    placed = mesh.copy()
    placed.apply_transform(to_gltf @ pose.local_to_camera() @ undo_y_up)
    return placed


def object_progress(progress: Progress, index: int, count: int) -> Progress:
    """One object's stages as part of the whole job: "object 2 of 3: structured latent"."""
    def report(stage: str, fraction: float) -> None:
        progress(f"object {index + 1} of {count}: {stage}", (index + fraction) / count)
    return report


def objects_info(poses: list[Pose], counts: list[dict[str, int]]) -> dict[str, Any]:
    """What a finished job's status says: each object's pose and size, and the totals."""
    totals = {key: sum(count[key] for count in counts) for key in counts[0]}
    return {**totals, "objects": [{**pose.as_dict(), **count}
                                  for pose, count in zip(poses, counts)]}
