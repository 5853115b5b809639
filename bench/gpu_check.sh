#!/usr/bin/env bash
# The GPU check, one command for a lent machine (bench/README.md, "GPU check"):
#
#   bench/gpu_check.sh OUT               on the lent GPU machine (bare, no network): under
#                                        8 minutes; needs .whl/ from bench/gpu_check_prepare.sh
#   bench/gpu_check.sh --dry-run OUT     here or in CI: every step on the CPU, small sizes,
#                                        the GPU-only steps skipped (and said so)
#
# Writes OUT/figures.json (every step's figures, or why it was skipped or failed),
# OUT/health.json, OUT/env.txt and OUT/gpu_check.log: four files, within what the device
# tool brings back. Each step has its own time limit (GPU_CHECK_STEP_SECONDS); a step that
# fails or runs out of time is recorded and the next one runs.
set -uo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:?usage: bench/gpu_check.sh [--dry-run] OUT}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
STEP=${GPU_CHECK_STEP_SECONDS:-100}  # a step's limit (nvdiffrast's build: 1.5 times it)
# the whole check's: a step that would start with under 20 s left is skipped and said so
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-450}))
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
LOG="$OUT/gpu_check.log"
: >"$LOG"
cd "$ROOT" || exit 1
say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
record() {  # record STEP STATUS [DETAIL]: the step's entry in figures.json
    "$PY" - "$WORK/steps.json" "$@" <<'PY'
import json, sys, pathlib
path, step, status, detail = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
steps = json.loads(path.read_text()) if path.exists() else {}
figures = pathlib.Path(detail[0]) if detail else None
entry = {"status": status}
if figures and figures.suffix == ".json" and figures.exists():
    entry["figures"] = json.loads(figures.read_text())
elif detail:
    entry["why"] = " ".join(detail)
steps[step] = entry
path.write_text(json.dumps(steps, indent=2))
PY
}
run_step() {  # run_step NAME FIGURES.json COMMAND... (LIMIT=seconds overrides STEP)
    local name=$1 figures=$2 limit=${LIMIT:-$STEP}; shift 2
    [ $((DEADLINE - SECONDS)) -lt "$limit" ] && limit=$((DEADLINE - SECONDS))
    if [ "$limit" -lt 20 ]; then
        record "$name" skipped "out of time (GPU_CHECK_SECONDS)"; say "step $name: out of time"
        return
    fi
    say "step $name (limit ${limit} s): $*"
    if timeout "$limit" "$@" >>"$LOG" 2>&1; then record "$name" ok "$figures"
    else record "$name" "failed (exit $?, log: gpu_check.log)"; fi
}

# -- what travels: the wheels and sources bench/gpu_check_prepare.sh put in .whl/ ---------
CARRIED=$(du -cb .whl 2>/dev/null | tail -1 | cut -f1)
TREE=$(git ls-files -z 2>/dev/null | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
say "carried: .whl ${CARRIED:-absent} bytes, tracked tree ${TREE:-?} bytes (limit 67108864)"
if [ "$DRY" = 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || { say "wheels did not install"; exit 1; }
    export PYTHONPATH=/tmp/site:$ROOT
else
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
{ date -u; uname -a; nvidia-smi 2>&1 | head -20; "$PY" -c "import sys, torch, diffusers, transformers, flask; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'flask', flask.__version__)"; } >"$OUT/env.txt" 2>&1
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
say "cuda: $CUDA, dry run: $DRY"

# -- the weights: SD 2's size, random (bench/sd2_size.py); the tiny ones in a dry run ------
mkdir -p "$WORK/checkpoints"
if [ "$DRY" = 1 ]; then
    SIZE=(--tiny) JOBS=(--jobs 2 --res 64)
    "$PY" scripts/make_tiny_checkpoints.py "$WORK/checkpoints" >>"$LOG" 2>&1
else
    SIZE=() JOBS=(--jobs 20 --res 768)
    say "writing SD 2-size random weights"
    "$PY" bench/sd2_size.py "$WORK/checkpoints" >>"$LOG" 2>&1
fi
LOTUS_D=$(ls -d "$WORK"/checkpoints/lotus-depth-d-*)

# -- 1. Lotus-D: ours fp16 at batch 1, 4, 8 beside upstream's half path, peak memory ----------
run_step lotus "$WORK/lotus.json" "$PY" bench/gpu_check.py lotus "$WORK/lotus.json" "$LOTUS_D" \
    "${SIZE[@]}"

# -- 2. the server end to end: /depth/sync p50 over 20 jobs, the worker pinned to GPU 0 --------
if [ "$DRY" = 1 ]; then
    run_step server "$WORK/server.json" "$PY" bench/gpu_check.py server "$WORK/server.json" \
        "$WORK/checkpoints" "${JOBS[@]}"
else
    CUDA_VISIBLE_DEVICES=0 run_step server "$WORK/server.json" "$PY" bench/gpu_check.py \
        server "$WORK/server.json" "$WORK/checkpoints" --jobs 20 --res 768
fi
[ -f "$WORK/server.json" ] && "$PY" -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1])).get('health'), indent=2))" "$WORK/server.json" >"$OUT/health.json"

# -- 3. nvdiffrast built there (nvcc, sm_90) and rasterising ---------------------------------
if [ "$CUDA" = 1 ] && ls .whl/nvdiffrast-*.tar.gz >/dev/null 2>&1; then
    mkdir -p "$WORK/nvdiffrast" && tar -xzf .whl/nvdiffrast-*.tar.gz -C "$WORK/nvdiffrast"
    CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")}
    export CUDA_HOME
    LIMIT=$((STEP * 3 / 2)) TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 run_step nvdiffrast_build "" \
        "$PY" -m pip install -q \
        --no-index --no-deps --no-build-isolation --target /tmp/site "$WORK/nvdiffrast"
    run_step nvdiffrast "$WORK/nvdiffrast.json" "$PY" bench/gpu_check.py nvdiffrast \
        "$WORK/nvdiffrast.json"
else
    record nvdiffrast skipped "no CUDA here, or .whl/ has no nvdiffrast source (bench/gpu_check_prepare.sh)"
fi

# -- 4. SAM 3D's texture baking through upstream's code: does not fit -------------------------
record sam3d_texture_baking skipped "upstream's dependencies (pytorch3d, gsplat, kaolin, utils3d, \
open3d...: /work/shared/sam3d-cpu's environment is 7.5 GB) are far over the 64 MiB a call carries \
and the machine cannot download them"

"$PY" - "$WORK/steps.json" "$OUT/figures.json" "$DRY" "$CUDA" "${CARRIED:-0}" "${TREE:-0}" <<'PY'
import json, sys
steps = json.load(open(sys.argv[1]))
json.dump({"dry_run": sys.argv[3] == "1", "cuda": sys.argv[4] == "1",
           "carried_bytes": {"wheels_and_sources": int(sys.argv[5]), "tracked_tree": int(sys.argv[6])},
           "steps": steps}, open(sys.argv[2], "w"), indent=2)
for name, step in steps.items():
    print(f"{name:22s} {step['status']}")
PY
rm -rf "$WORK"
