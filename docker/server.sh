#!/usr/bin/env bash
# Our layer (run in /app, beside pyproject.toml): pyproject.toml's dependencies, its
# serverless extra (this image also starts as a serverless worker, `python handler.py`) and
# rembg[gpu], at the versions CI tests (docker/server.lock), every other package held at the
# version SAM 3D Objects' layer installed (/etc/sam3d-layer.txt, the Dockerfile's
# PIP_CONSTRAINT after this step). scripts/replay_image.sh runs this same script.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
layer=$here/sam3d_layer.py
etc=${SAM3D_ETC:-/etc}  # the replay points it elsewhere
# What the layer holds less what server.lock pins, by PEP 503 name (freeze writes
# huggingface_hub, the lock huggingface-hub: both at two versions is ResolutionImpossible).
python "$layer" layer "$etc/sam3d-freeze.txt" "$here/server.lock" > "$etc/sam3d-layer.txt"
export PIP_CONSTRAINT=$etc/sam3d-layer.txt
work=$(mktemp -d)
python "$layer" server-requirements pyproject.toml > "$work/requirements.txt"
# server.lock's pins of what the layer holds, asked for by name: pip leaves an installed
# package it is not asked for alone (pyOpenSSL 26.4 would stay beside runpod's cryptography).
python "$layer" replaced "$etc/sam3d-freeze.txt" "$here/server.lock" > "$work/replaced.txt"
pip install -c "$here/server.lock" -r "$work/requirements.txt" -r "$work/replaced.txt"
# One OpenCV: rembg's opencv-python-headless and upstream's opencv-python both write cv2/,
# so headless goes and opencv-python (upstream's pin) is written back whole.
pip uninstall -y opencv-python-headless
grep -i '^opencv-python==' "$etc/sam3d-layer.txt" > "$work/opencv.txt"
pip install --no-deps --force-reinstall -r "$work/opencv.txt"
{ pip check || true; } | tee "$etc/pip-check.txt"
rm -rf "$work"
