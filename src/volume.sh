# shellcheck shell=bash
# Sourced by bootstrap.sh and prefetch.sh: the one volume layout every path derives from.
#
# RunPod mounts a network volume at /runpod-volume on serverless workers and at /workspace on
# pods (runpod-python docs/serverless/volume_cache.md:15; RunPod's pod template docs), so
# WORKSPACE defaults to <mount>/Lotus on whichever is there. Set WORKSPACE to choose.
if [ -z "${WORKSPACE:-}" ]; then
  if [ -d "${SERVERLESS_VOLUME:-/runpod-volume}" ]; then
    WORKSPACE=${SERVERLESS_VOLUME:-/runpod-volume}/Lotus
  else
    WORKSPACE=${POD_VOLUME:-/workspace}/Lotus
  fi
fi
export WORKSPACE
export HF_HOME=${HF_HOME:-$WORKSPACE/cache}
export CHECKPOINTS_DIR=${CHECKPOINTS_DIR:-$WORKSPACE/models}
export OUTPUT_DIR=${OUTPUT_DIR:-$WORKSPACE/output_images}
# bootstrap.sh sets the worker's own (venv-<hash of its requirements>) before prefetch.sh runs
export VENV=${VENV:-$WORKSPACE/venv}
