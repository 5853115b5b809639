#!/usr/bin/env bash
# SAM 3D Objects' layer, one step per Dockerfile RUN, so a failed step is retried alone and
# each CUDA compile (pytorch3d: p3d, gsplat: inference, nvdiffrast) has its own layer.
# scripts/replay_image.sh runs these same steps on a machine without CUDA or Docker.
#
#   docker/sam3d.sh repin|check|dev|p3d|inference|nvdiffrast|freeze
#
# From the Dockerfile's environment: CUDA_STACK (default|blackwell), SAM3D_SOURCE_DIR
# (upstream's clone at SAM3D_COMMIT), SAM3D_EXTRA_INDEXES (NGC's and PyTorch's indexes for
# the stack's CUDA), SAM3D_KAOLIN_LINKS (NVIDIA's kaolin wheels for the stack's torch),
# NVDIFFRAST_COMMIT, MAX_JOBS (parallel compile jobs; each nvcc job can take 2-4 GB).
set -euo pipefail

step=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=${SAM3D_SOURCE_DIR:?}
stack=${CUDA_STACK:?}
# Every install in this layer is constrained to the lock (what `check` proved resolves),
# from the indexes upstream's doc/setup.md:18 names, with the stack's CUDA build of torch.
export PIP_CONSTRAINT="$here/sam3d-$stack.lock"
export PIP_EXTRA_INDEX_URL=${SAM3D_EXTRA_INDEXES-}

case $step in
  repin)  # the Blackwell stack's replacements in upstream's requirement files
    if [ -f "$here/$stack-pins.txt" ]; then
      python "$here/repin_sam3d.py" "$here/$stack-pins.txt" "$src"
    fi ;;
  check)  # the whole layer resolves to the lock, before anything is built (seconds)
    python "$here/sam3d_layer.py" check "$src" "$stack" ;;
  dev|p3d)  # upstream's doc/setup.md:21-22, in its order; p3d compiles pytorch3d
    cd "$src" && pip install -e ".[$step]" ;;
  inference)  # doc/setup.md:25-29: kaolin from NVIDIA's wheels, gsplat compiled, hydra patch
    cd "$src"
    PIP_FIND_LINKS=${SAM3D_KAOLIN_LINKS-} pip install -e '.[inference]'
    ./patching/hydra ;;
  nvdiffrast)  # v0.4.0 compiles its CUDA extension at install, for TORCH_CUDA_ARCH_LIST
    pip install ninja
    pip install --no-build-isolation \
      "git+https://github.com/NVlabs/nvdiffrast.git@${NVDIFFRAST_COMMIT:?}" ;;
  freeze)  # what the layer holds (PyPI packages only), for our layer's constraints
    pip freeze --exclude-editable | grep -v ' @ ' > "${SAM3D_ETC:-/etc}/sam3d-freeze.txt" ;;
  *) echo "unknown step: $step" >&2; exit 2 ;;
esac
