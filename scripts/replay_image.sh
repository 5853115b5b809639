#!/usr/bin/env bash
# Replay the image's install steps here, as the Dockerfile runs them (docker/sam3d.sh,
# docker/server.sh), for one CUDA stack; ends with pip check and installed set == locks.
# Needs Python 3.11 and PyPI; no Docker, no GPU, downloads no torch wheel (what stands in
# for what: scripts/replay_image.py). Takes a few minutes per stack.
#
#   scripts/replay_image.sh default|blackwell [TREE]   (TREE: another checkout's root)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON311:-python3.11}" scripts/replay_image.py "${1:-default}" "${2:-.}"
