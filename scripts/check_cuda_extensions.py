"""Build-time check (Dockerfile): SAM 3D Objects' CUDA extensions were compiled.

A build without a GPU can silently install pytorch3d without its CUDA kernels (FORCE_CUDA
unset) or fail a compile only at first use; finding the compiled libraries here turns that
into a failed build instead of a failed first request. Imports nothing that needs a GPU.
"""

import glob
import os
import sys
import sysconfig

# (package, compiled library inside it); nvdiffrast >= 0.4 installs `_nvdiffrast_c` at top level
EXTENSIONS = [("pytorch3d", "_C*.so"), ("gsplat", "csrc*.so"), (None, "_nvdiffrast_c*.so")]


def missing(site: str) -> list[str]:
    """The extensions with no compiled library under `site` (a site-packages folder)."""
    absent = []
    for package, pattern in EXTENSIONS:
        folder = os.path.join(site, package) if package else site
        if not glob.glob(os.path.join(folder, pattern)):
            absent.append(f"{package or 'nvdiffrast'} ({pattern} in {folder})")
    return absent


if __name__ == "__main__":
    absent = missing(sysconfig.get_paths()["purelib"])
    if absent:
        sys.exit("CUDA extensions not compiled: " + ", ".join(absent))
    print("CUDA extensions present: pytorch3d, gsplat, nvdiffrast")
