"""Build-time check (Dockerfile): SAM 3D Objects' CUDA extensions were compiled.

A build without a GPU can silently install pytorch3d without its CUDA kernels (FORCE_CUDA
unset) or fail a compile only at first use; finding the compiled libraries here turns that
into a failed build instead of a failed first request. Imports nothing that needs a GPU.

On a GPU (`docker run --gpus all IMAGE python scripts/check_cuda_extensions.py`) it also
checks that torch itself was built for that GPU: torch 2.5.1+cu121 (the default image) has
no kernels for Blackwell cards (RTX 50xx, B200), which then fail at their first CUDA call;
the Blackwell image (CUDA_STACK=blackwell, torch 2.8.0+cu128) has.
"""

import glob
import os
import sys
import sysconfig

# (package, compiled library inside it); nvdiffrast >= 0.4 installs `_nvdiffrast_c` at top
# level; kaolin is NVIDIA's wheel on the default stack, built here on the Blackwell one
EXTENSIONS = [("pytorch3d", "_C*.so"), ("gsplat", "csrc*.so"), (None, "_nvdiffrast_c*.so"),
              ("kaolin", "_C*.so")]


def missing(site: str) -> list[str]:
    """The extensions with no compiled library under `site` (a site-packages folder)."""
    absent = []
    for package, pattern in EXTENSIONS:
        folder = os.path.join(site, package) if package else site
        if not glob.glob(os.path.join(folder, pattern)):
            absent.append(f"{package or 'nvdiffrast'} ({pattern} in {folder})")
    return absent


def runs_on(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether code built for `arch_list` (torch.cuda.get_arch_list(): sm_86, compute_90,
    ...) runs on a GPU of `capability` (8, 9): a cubin runs on its own major version at the
    same or a higher minor; PTX (compute_XY) is compiled by the driver for any newer GPU."""
    major, minor = capability
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        number = number.rstrip("af")  # sm_90a, sm_100f: arch-specific, same rule here
        if not number.isdigit():
            continue
        built = (int(number[:-1]), int(number[-1]))
        if kind == "sm" and built[0] == major and built[1] <= minor:
            return True
        if kind == "compute" and built <= (major, minor):
            return True
    return False


def torch_gpu_problem(torch) -> str | None:
    """What is wrong between torch's build and the GPU present, or None (also without one)."""
    if not torch.cuda.is_available():
        return None
    capability = tuple(torch.cuda.get_device_capability(0))
    arch_list = torch.cuda.get_arch_list()
    if runs_on(capability, arch_list):
        return None
    name = torch.cuda.get_device_name(0)
    return (f"torch {torch.__version__} has no kernels for this GPU: {name} is compute "
            f"capability {capability[0]}.{capability[1]} (sm_{capability[0]}{capability[1]}), "
            f"torch was built for {', '.join(arch_list) or 'no GPU'}. Every CUDA call will "
            "fail; use a GPU torch supports, or an image built with a torch for this GPU.")


if __name__ == "__main__":
    absent = missing(sysconfig.get_paths()["purelib"])
    if absent:
        sys.exit("CUDA extensions not compiled: " + ", ".join(absent))
    print("CUDA extensions present: pytorch3d, gsplat, nvdiffrast, kaolin")
    import torch

    problem = torch_gpu_problem(torch)
    if problem:
        sys.exit(problem)
    print("torch runs on this GPU" if torch.cuda.is_available() else
          "no GPU here: torch's architectures not checked")
