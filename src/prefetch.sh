#!/usr/bin/env bash
# Download Lotus-D into the volume, where the worker loads it from (CHECKPOINTS_DIR).
# Run once on a pod with the network volume mounted, or with PREFETCH=1 in bootstrap.sh.
set -euo pipefail

# shellcheck source=src/volume.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/volume.sh"
MODEL_ID=${MODEL_ID:-jingheya/lotus-depth-d-v2-0-disparity}
TARGET=$CHECKPOINTS_DIR/lotus-depth-d-v2-0-disparity

"${PYTHON:-python3}" - "$MODEL_ID" "$TARGET" <<'PY'
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], local_dir=sys.argv[2], allow_patterns=["*.json", "*.txt", "*.safetensors"])
PY
for part in model_index.json unet vae text_encoder tokenizer; do
  [ -e "$TARGET/$part" ] || { echo "prefetch: $TARGET/$part is missing" >&2; exit 1; }
done
echo "prefetch: $MODEL_ID is in $TARGET"
