#!/usr/bin/env bash
# Start the RunPod serverless worker with its venv, caches and outputs on a network volume.
#
# The Lotus plan's layout, <volume>/Lotus/{venv,src,cache,models,output_images,logs}, on the
# volume the platform really mounts (src/volume.sh), with three corrections: our code lives in
# the image (a volume would hide anything the image put under its mount), the worker starts as
# `handler.py` with no flag (`--rp_serve_api` starts the SDK's local test server), and the venv
# is built atomically: in a temporary folder, under a lock that lets one worker build while the
# others wait, moved into place only when complete and marked with the hash of what it holds.
# A half-built venv is never reused. The venv's path holds that hash (venv-<16 hex>): a changed
# requirements file builds a new venv beside the old one, which workers of the previous release
# may still be running from, so bootstrap never deletes a venv that was ever complete (it lists
# them; DEPLOY.md says when to remove them). Console scripts name their interpreter by path, so
# the paths in the venv are rewritten to where it is moved.
#
# Environment:
#   WORKSPACE               volume folder (default /runpod-volume/Lotus or /workspace/Lotus)
#   PYTHON                  interpreter for the venv (default python3.12)
#   PREFETCH                1 (default): download Lotus-D where the worker reads it when it is
#                           not there (src/prefetch.sh: models/, or MODEL_ID's HF cache); 0: never
#   BOOTSTRAP_SKIP_INSTALL=1  create the venv but install nothing: for tests, or a volume
#                           whose packages are provided another way (PYTHONPATH)
#   anything handler.py reads: LOTUS_API_KEY, MODEL_ID, PIPELINES, MAX_INLINE_BYTES, ...
# Arguments are passed to handler.py (e.g. --test_input '{...}' for a local check).
set -euo pipefail

APP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=src/volume.sh
source "$APP_DIR/src/volume.sh"
PYTHON=${PYTHON:-python3.12}
REQUIREMENTS=$APP_DIR/requirements-serverless.txt
TORCH=(torch==2.8.0 --index-url https://download.pytorch.org/whl/cu128)
export PIPELINES=${PIPELINES:-lotus}

mkdir -p "$WORKSPACE"/{src,cache,models,output_images,logs}
# relocated: venvs built before their paths were rewritten are rebuilt once
WANT=$({ echo "${TORCH[*]} skip=${BOOTSTRAP_SKIP_INSTALL:-0} relocated"; cat "$REQUIREMENTS"; } \
  | sha256sum | cut -d' ' -f1)
VENV=$WORKSPACE/venv-${WANT:0:16}
export VENV
venv_ready() { [ "$(cat "$VENV/.requirements-sha256" 2>/dev/null)" = "$WANT" ]; }

build_venv() {
  BUILDING=$(mktemp -d "$WORKSPACE/venv.building.XXXXXX")
  trap 'rm -rf "$BUILDING"' EXIT  # a failed build leaves nothing behind
  echo "bootstrap: building the venv in $BUILDING"
  "$PYTHON" -m venv --prompt venv "$BUILDING"
  if [ "${BOOTSTRAP_SKIP_INSTALL:-0}" != 1 ]; then
    "$BUILDING/bin/python" -m pip install --upgrade pip
    "$BUILDING/bin/python" -m pip install "${TORCH[@]}"
    "$BUILDING/bin/python" -m pip install -r "$REQUIREMENTS"
  fi
  # pip, hf and the rest start with #!$BUILDING/bin/python: point them at the final place
  { grep -rlIF "$BUILDING" "$BUILDING/bin" "$BUILDING/pyvenv.cfg" || true; } \
    | while IFS= read -r file; do
      sed -i "s|$BUILDING|$VENV|g" "$file"
    done
  echo "$WANT" > "$BUILDING/.requirements-sha256"
  # Something at this path without the marker was never complete, so no worker runs from it
  # (workers start only a marked venv): removing it is safe. A marked one is never removed.
  if [ -e "$VENV" ] || [ -L "$VENV" ]; then rm -rf "$VENV"; fi
  mv -T "$BUILDING" "$VENV"
  trap - EXIT
  echo "bootstrap: venv ready at $VENV"
}

if venv_ready; then
  echo "bootstrap: reusing $VENV"
else
  exec 9>"$WORKSPACE/.bootstrap.lock"
  echo "bootstrap: waiting for the venv lock"
  flock 9
  if venv_ready; then
    echo "bootstrap: reusing $VENV (built by another worker)"
  else
    build_venv
  fi
  flock -u 9
fi

for other in "$WORKSPACE"/venv-*; do
  if [ -d "$other" ] && [ "$other" != "$VENV" ]; then
    echo "bootstrap: another release's venv, kept (remove it once no worker runs that release): $other"
  fi
done

if [ "${PREFETCH:-1}" = 1 ] && { [ -n "${MODEL_ID:-}" ] \
    || [ ! -f "$CHECKPOINTS_DIR/lotus-depth-d-v2-0-disparity/model_index.json" ]; }; then
  bash "$APP_DIR/src/prefetch.sh"
fi

cd "$APP_DIR"
# --warmup: one small depth job in the serving process before the first real one.
exec "$VENV/bin/python" handler.py --warmup "$@"
