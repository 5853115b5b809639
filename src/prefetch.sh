#!/usr/bin/env bash
# Download Lotus-D to where the worker loads it from: models/ (CHECKPOINTS_DIR), or, with
# MODEL_ID set, the Hugging Face cache on the volume (HF_HOME), where the worker looks for
# MODEL_ID (pipelines/lotus/catalog.py, resolve_checkpoint). bootstrap.sh runs it (PREFETCH=1, the
# default); to fill a volume beforehand, run `bash /opt/lotus/src/prefetch.sh` on a pod with it.
# Python: the worker's venv on the volume once bootstrap.sh has built it; before that, a
# temporary venv with only huggingface-hub, at the version the worker pins.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=src/volume.sh
source "$HERE/volume.sh"
TARGET=$CHECKPOINTS_DIR/lotus-depth-d-v2-0-disparity

if "$VENV/bin/python" -c "import huggingface_hub" 2>/dev/null; then
  PY=$VENV/bin/python
else
  HUB=$(grep -E '^huggingface-hub==' "$HERE/../requirements-serverless.txt")
  TEMP_VENV=$(mktemp -d)
  trap 'rm -rf "$TEMP_VENV"' EXIT
  echo "prefetch: no worker venv at $VENV yet: $HUB in a temporary one"
  "${PYTHON:-python3}" -m venv "$TEMP_VENV"
  "$TEMP_VENV/bin/python" -m pip install -q "$HUB"
  PY=$TEMP_VENV/bin/python
fi

"$PY" - "${MODEL_ID:-}" "$TARGET" <<'PY'
import sys
from pathlib import Path

from huggingface_hub import snapshot_download

model_id, target = sys.argv[1:]
patterns = ["*.json", "*.txt", "*.safetensors"]  # what resolve_checkpoint asks for
if model_id:  # into HF_HOME's cache, as the worker reads it
    folder = snapshot_download(model_id, allow_patterns=patterns)
else:
    model_id = "jingheya/lotus-depth-d-v2-0-disparity"
    folder = snapshot_download(model_id, local_dir=target, allow_patterns=patterns)
missing = [part for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer")
           if not (Path(folder) / part).exists()]
if missing:
    sys.exit(f"prefetch: {folder} is missing {', '.join(missing)}")
print(f"prefetch: {model_id} is in {folder}")
PY
