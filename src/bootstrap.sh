#!/usr/bin/env bash
# Start the RunPod serverless worker with its venv, caches and outputs on a network volume.
#
# The Lotus plan's layout, /workspace/Lotus/{venv,src,cache,models,output_images,logs}, with
# two corrections: our code lives in the image (a volume mounted at /workspace would hide
# anything the image put there), and the worker starts as `handler.py` with no flag
# (`--rp_serve_api` starts the SDK's local test server, not the serverless worker).
#
# Environment:
#   WORKSPACE               volume folder (default /workspace/Lotus)
#   PYTHON                  interpreter for the venv (default python3.12)
#   PREFETCH=1              download MODEL_ID into models/ before starting (src/prefetch.sh)
#   BOOTSTRAP_SKIP_INSTALL=1  create the venv but install nothing: for tests, or a volume
#                           whose packages are provided another way (PYTHONPATH)
#   anything handler.py reads: LOTUS_API_KEY, MODEL_ID, PIPELINES, MAX_INLINE_BYTES, ...
# Arguments are passed to handler.py (e.g. --test_input '{...}' for a local check).
set -euo pipefail

APP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKSPACE=${WORKSPACE:-/workspace/Lotus}
VENV=$WORKSPACE/venv
PYTHON=${PYTHON:-python3.12}

mkdir -p "$WORKSPACE"/{src,cache,models,output_images,logs}
export HF_HOME=${HF_HOME:-$WORKSPACE/cache}
export OUTPUT_DIR=${OUTPUT_DIR:-$WORKSPACE/output_images}
export CHECKPOINTS_DIR=${CHECKPOINTS_DIR:-$WORKSPACE/models}
export PIPELINES=${PIPELINES:-lotus}

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PYTHON" -m venv "$VENV"
  if [ "${BOOTSTRAP_SKIP_INSTALL:-0}" != 1 ]; then
    "$VENV/bin/pip" install --upgrade pip
    "$VENV/bin/pip" install torch==2.8.0 --index-url https://download.pytorch.org/whl/cu128
    "$VENV/bin/pip" install -r "$APP_DIR/requirements-serverless.txt"
  fi
else
  echo "bootstrap: reusing $VENV"
fi

if [ "${PREFETCH:-0}" = 1 ]; then
  PATH="$VENV/bin:$PATH" bash "$APP_DIR/src/prefetch.sh"
fi

cd "$APP_DIR"
# Warm-up loads the models once so a broken volume shows in the logs; it never stops the start.
"$VENV/bin/python" handler.py --warmup || true
exec "$VENV/bin/python" handler.py "$@"
