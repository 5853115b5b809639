#!/usr/bin/env bash
# Download Lotus-D into the volume, where the worker loads it from (CHECKPOINTS_DIR).
# Run once on a pod with the network volume mounted, or with PREFETCH=1 in bootstrap.sh.
set -euo pipefail

MODEL_ID=${MODEL_ID:-jingheya/lotus-depth-d-v2-0-disparity}
WORKSPACE=${WORKSPACE:-/workspace/Lotus}
TARGET=${CHECKPOINTS_DIR:-$WORKSPACE/models}/lotus-depth-d-v2-0-disparity

hf download "$MODEL_ID" --repo-type model --local-dir "$TARGET" \
  --include "*.json" "*.txt" "*.safetensors"
for part in model_index.json unet vae text_encoder tokenizer; do
  [ -e "$TARGET/$part" ] || { echo "prefetch: $TARGET/$part is missing" >&2; exit 1; }
done
echo "prefetch: $MODEL_ID is in $TARGET"
