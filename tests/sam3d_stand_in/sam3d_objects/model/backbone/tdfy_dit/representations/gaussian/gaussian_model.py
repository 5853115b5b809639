"""Stand-in for upstream's Gaussian: `save_ply(path)` writes upstream's attribute layout
(x y z, nx ny nz, f_dc_0..2, opacity, scale_0..2, rot_0..3; gaussian_model.py:136-161)."""
import numpy as np

ATTRIBUTES = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
              + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


class Gaussian:
    def __init__(self, xyz, colors):
        self.xyz, self.colors = xyz, colors

    def save_ply(self, path):
        rows = np.zeros((len(self.xyz), len(ATTRIBUTES)), dtype="<f4")
        rows[:, 0:3] = self.xyz.numpy()
        rows[:, 6:9] = self.colors.numpy()
        rows[:, 10:13] = -4.0
        rows[:, 13] = 1.0
        header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(rows)}"]
        header += [f"property float {name}" for name in ATTRIBUTES] + ["end_header"]
        with open(path, "wb") as file:
            file.write(("\n".join(header) + "\n").encode())
            file.write(rows.tobytes())
