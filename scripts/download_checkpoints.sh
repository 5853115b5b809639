#!/usr/bin/env bash
# Fill checkpoints/ with every weight the image bakes in, then say what is missing.
#
#   HF_TOKEN=hf_... scripts/download_checkpoints.sh [checkpoints]
#
# Before: accept Meta's license at https://huggingface.co/facebook/sam-3d-objects and create
# a read token at https://huggingface.co/settings/tokens. Needs `hf` (pip install
# 'huggingface-hub[cli]<1.0') and, for DINOv2, python with torch (the CPU build will do).
# Steps already done are skipped; a tiny test Lotus-D (`make serve` writes one) is replaced,
# and so is a tiny test Depth Anything V2 folder. Depth Anything V2's three Small checkpoints
# (pipelines/depth_anything/catalog.py: relative, metric indoor, metric outdoor; Apache-2.0)
# go to checkpoints/<repository name>; DA2_MODEL_IDS picks others of the table, or none ("").
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
DEST=${1:-checkpoints}
LOTUS=$DEST/lotus-depth-d-v2-0-disparity
LOTUS_MODEL_ID=${LOTUS_MODEL_ID:-jingheya/lotus-depth-d-v2-0-disparity}
MOGE_MODEL_ID=${MOGE_MODEL_ID:-Ruicheng/moge-vitl}
DA2_MODEL_IDS=${DA2_MODEL_IDS-depth-anything/Depth-Anything-V2-Small-hf depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf}
DINOV2_MODEL=${DINOV2_MODEL:-dinov2_vitl14_reg}
U2NET_URL=${U2NET_URL:-https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx}
mkdir -p "$DEST"

if [ -n "${HF_TOKEN:-}" ]; then
  hf auth login --token "$HF_TOKEN"
fi
export HF_HUB_ENABLE_HF_TRANSFER=0

echo "== SAM 3D Objects (facebook/sam-3d-objects, license required)"
if [ ! -f "$DEST/pipeline.yaml" ]; then
  hf download --repo-type model --local-dir "$DEST/hf-download" --max-workers 1 \
    facebook/sam-3d-objects
  mv "$DEST"/hf-download/checkpoints/* "$DEST"/
  rm -rf "$DEST/hf-download"
fi

echo "== Lotus-D ($LOTUS_MODEL_ID)"
# the same check the image build runs (pipelines/lotus/catalog.py: the UNet's config)
if ! "$PYTHON" "$HERE/../pipelines/lotus/catalog.py" "$DEST" depth-d-v2-0-disparity >/dev/null 2>&1; then
  echo "$LOTUS holds the tiny test weights: replacing the whole folder"
  rm -rf "$LOTUS"
fi
hf download "$LOTUS_MODEL_ID" --repo-type model \
  --local-dir "$LOTUS" --include "*.json" "*.txt" "*.safetensors"

for DA2_MODEL_ID in $DA2_MODEL_IDS; do
  DA2="$DEST/${DA2_MODEL_ID##*/}"
  echo "== Depth Anything V2 ($DA2_MODEL_ID)"
  # the check the server makes (pipelines/depth_anything/catalog.py: the backbone's width)
  if ! "$PYTHON" "$HERE/../pipelines/depth_anything/catalog.py" "$DEST" "$DA2_MODEL_ID" \
      >/dev/null 2>&1; then
    echo "$DA2 holds the tiny test weights: replacing the whole folder"
    rm -rf "$DA2"
  fi
  hf download "$DA2_MODEL_ID" --repo-type model --local-dir "$DA2" \
    --include "config.json" "preprocessor_config.json" "model.safetensors" "README.md"
done

echo "== MoGe ($MOGE_MODEL_ID) into the Hugging Face cache the image reads offline"
HF_HOME="$DEST/hf-cache" hf download "$MOGE_MODEL_ID" --repo-type model

echo "== DINOv2 ($DINOV2_MODEL) into the torch hub cache"
if compgen -G "$DEST/torch/hub/checkpoints/${DINOV2_MODEL}*_pretrain.pth" >/dev/null \
    && [ -f "$DEST/torch/hub/facebookresearch_dinov2_main/hubconf.py" ]; then
  echo "already there"
else
  TORCH_HOME="$DEST/torch" "$PYTHON" -c \
    "import sys, torch; torch.hub.load('facebookresearch/dinov2', sys.argv[1])" "$DINOV2_MODEL"
fi

echo "== u2net for rembg"
mkdir -p "$DEST/u2net"
[ -f "$DEST/u2net/u2net.onnx" ] || curl -fL --retry 3 -o "$DEST/u2net/u2net.onnx" "$U2NET_URL"

echo "== Check"
missing=0
for path in pipeline.yaml ss_generator.ckpt slat_generator.ckpt ss_decoder.ckpt \
    slat_decoder_gs.ckpt slat_decoder_gs_4.ckpt slat_decoder_mesh.ckpt \
    lotus-depth-d-v2-0-disparity/model_index.json lotus-depth-d-v2-0-disparity/unet \
    lotus-depth-d-v2-0-disparity/vae lotus-depth-d-v2-0-disparity/text_encoder \
    lotus-depth-d-v2-0-disparity/tokenizer hf-cache/hub torch/hub u2net/u2net.onnx; do
  if [ -e "$DEST/$path" ]; then
    echo "ok       $path"
  else
    echo "MISSING  $path"
    missing=1
  fi
done
if ! "$PYTHON" "$HERE/../pipelines/lotus/catalog.py" "$DEST" depth-d-v2-0-disparity >/dev/null 2>&1; then
  echo "TEST     lotus-depth-d-v2-0-disparity holds test weights, not Lotus-D's"
  missing=1
fi
for DA2_MODEL_ID in $DA2_MODEL_IDS; do
  for path in config.json preprocessor_config.json model.safetensors; do
    if [ -e "$DEST/${DA2_MODEL_ID##*/}/$path" ]; then
      echo "ok       ${DA2_MODEL_ID##*/}/$path"
    else
      echo "MISSING  ${DA2_MODEL_ID##*/}/$path"
      missing=1
    fi
  done
done
for DA2_MODEL_ID in $DA2_MODEL_IDS; do
  if ! "$PYTHON" "$HERE/../pipelines/depth_anything/catalog.py" "$DEST" "$DA2_MODEL_ID" \
      >/dev/null 2>&1; then
    echo "TEST     ${DA2_MODEL_ID##*/} holds test weights, not Depth Anything V2 Small's"
    missing=1
  fi
done
du -sh "$DEST"
exit "$missing"
