"""Stand-in for upstream's Gaussian: `get_xyz` / `from_xyz` and `save_ply(path)` with upstream's
attribute layout (x y z, nx ny nz, f_dc_0..2, opacity, scale_0..2, rot_0..3;
gaussian_model.py:136-161). The tensors `make_scene` concatenates keep upstream's names."""
import numpy as np
import torch

ATTRIBUTES = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
              + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


class Gaussian:
    def __init__(self, xyz, colors):
        self._xyz, self._features_dc = xyz, colors
        self._opacity = torch.ones(len(xyz), 1)
        self._scaling = torch.full((len(xyz), 3), -4.0)
        self._rotation = torch.tensor([[1.0, 0, 0, 0]]).repeat(len(xyz), 1)
        self.mininum_kernel_size = 0.0

    @property
    def get_xyz(self):
        return self._xyz

    def from_xyz(self, xyz):
        self._xyz = xyz

    def save_ply(self, path):
        rows = np.zeros((len(self._xyz), len(ATTRIBUTES)), dtype="<f4")
        rows[:, 0:3] = self._xyz.numpy()
        rows[:, 6:9] = self._features_dc.numpy()
        rows[:, 9:10] = self._opacity.numpy()
        rows[:, 10:13] = self._scaling.numpy()
        rows[:, 13:17] = self._rotation.numpy()
        header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(rows)}"]
        header += [f"property float {name}" for name in ATTRIBUTES] + ["end_header"]
        with open(path, "wb") as file:
            file.write(("\n".join(header) + "\n").encode())
            file.write(rows.tobytes())
