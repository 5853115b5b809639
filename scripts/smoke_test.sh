#!/usr/bin/env bash
# GPU smoke test, after `docker compose up`: waits until the models are loaded, then makes a
# textured GLB, a vertex-coloured GLB, a PLY, a USDZ, a two-object scene (from two bundled
# masks) and a depth map from a bundled image and checks what a viewer would show: a
# texture image, a colour per vertex, the 3D Gaussian fields, a USD package, two nodes.
#
#   scripts/smoke_test.sh [URL]   (default http://localhost:8000; API_KEY if set;
#                                  SMOKE_WAIT_SECONDS, default 900, for the models to load)
# The check_* functions are called through try(), which shellcheck cannot follow.
# shellcheck disable=SC2317
set -euo pipefail

URL=${1:-http://localhost:8000}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
AUTH=()
[ -n "${API_KEY:-}" ] && AUTH=(-H "Authorization: Bearer $API_KEY")
failures=0

pass() { echo "PASS  $*"; }
skip() { echo "SKIP  $*"; }
fail() { echo "FAIL  $*"; failures=$((failures + 1)); }

# Wait for loading to finish: /health answers 503 with "loading" pipelines until then.
deadline=$((SECONDS + ${SMOKE_WAIT_SECONDS:-900}))
while :; do
  curl -sS "$URL/health" -o "$WORK/health.json" 2>/dev/null \
    || { echo "FAIL  $URL/health unreachable"; exit 1; }
  grep -q '"loading"' "$WORK/health.json" || break
  [ "$SECONDS" -lt "$deadline" ] || break
  echo "      waiting for the models to load..."
  sleep 10
done
if grep -q '"model_loaded": *true' "$WORK/health.json"; then
  pass "health: $(tr -d '\n' < "$WORK/health.json" | cut -c1-200)"
else
  fail "health says the models are not loaded: $(cat "$WORK/health.json")"
fi

printf '{"image": "%s", ' "$(base64 -w 0 "$HERE/smoke_object.png")" > "$WORK/head.json"

# request NAME BODY-TAIL ENDPOINT: POST the bundled image with extra fields, save the answer
request() {
  local name=$1 tail=$2 endpoint=$3 started=$SECONDS code
  { cat "$WORK/head.json"; printf '%s}' "$tail"; } > "$WORK/$name.json"
  code=$(curl -sS -o "$WORK/$name.out" -w '%{http_code}' "${AUTH[@]}" -X POST \
    -H "Content-Type: application/json" --data-binary "@$WORK/$name.json" "$URL$endpoint")
  echo "      $name: HTTP $code in $((SECONDS - started)) s, $(wc -c < "$WORK/$name.out") bytes"
  [ "$code" = 200 ]
}

# glb_json FILE: the glTF JSON chunk of a GLB whose header is sound (magic "glTF", version 2,
# the header's length equals the file's size), or nothing
glb_json() {
  local magic version length chunk
  magic=$(head -c 4 "$1")
  version=$(od -An -tu4 -j4 -N4 "$1" | tr -d ' ')
  length=$(od -An -tu4 -j8 -N4 "$1" | tr -d ' ')
  chunk=$(od -An -tu4 -j12 -N4 "$1" | tr -d ' ')
  [ "$magic" = glTF ] && [ "$version" = 2 ] && [ "$length" = "$(wc -c < "$1")" ] || return 1
  head -c "$((20 + chunk))" "$1" | tail -c "$chunk"
}

# check_textured_glb FILE: a base-colour texture with an embedded image
check_textured_glb() {
  local json
  json=$(glb_json "$1") || return 1
  grep -q '"baseColorTexture"' <<< "$json" && grep -q '"images"' <<< "$json"
}

# check_vertex_colour_glb FILE: a colour per vertex (COLOR_0)
check_vertex_colour_glb() {
  local json
  json=$(glb_json "$1") || return 1
  grep -q '"COLOR_0"' <<< "$json"
}

# check_ply FILE: a PLY with vertices and the 3D Gaussian splat fields
check_ply() {
  local header
  header=$(head -c 4096 "$1" | tr -d '\0' | sed '/end_header/q')
  [[ $header == ply* ]] && grep -Eq 'element vertex [1-9]' <<< "$header" || return 1
  for field in x y z f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3; do
    grep -q "property float $field\$" <<< "$header" || return 1
  done
}

check_depth() { grep -q '"image_base64"' "$1" && grep -q '"max"' "$1"; }

# check_usdz FILE: a USDZ package (a zip whose first file is the USD layer)
check_usdz() { [ "$(head -c 2 "$1")" = PK ] && head -c 200 "$1" | grep -aq '\.usdc'; }

# check_scene FILE: a GLB with one node per mask (object_0, object_1)
check_scene() {
  local json
  json=$(glb_json "$1") || return 1
  grep -q '"object_0"' <<< "$json" && grep -q '"object_1"' <<< "$json"
}

health=$(tr -d ' \n' < "$WORK/health.json")
[[ $health == *'"sam3d":"ready"'* ]] || fail "SAM 3D Objects is not loaded: $health"

# try ID NEEDS FIELDS ENDPOINT CHECK: skipped when /health lacks NEEDS, else made and checked
try() {
  local id=$1 needs=$2 fields=$3 endpoint=$4 check=$5
  if [[ $health != *"$needs"* ]]; then
    skip "$id: this server cannot serve it ($needs is not in /health)"
  elif request "$id" "$fields" "$endpoint" && "$check" "$WORK/$id.out"; then
    pass "$id"
  else
    fail "$id: $(head -c 300 "$WORK/$id.out" | tr -cd '[:print:]\n')"
  fi
}

try textured-glb '"glb_textured":true' '"output_format": "glb", "with_texture": true' \
  /generate/sync check_textured_glb
try vertex-colour-glb '"glb":true' '"output_format": "glb", "with_texture": false' \
  /generate/sync check_vertex_colour_glb
try gaussian-splat-ply '"ply":true' '"output_format": "ply"' /generate/sync check_ply
try usdz '"glb":true' '"output_format": "usdz", "with_texture": false' /generate/sync check_usdz
masks=$(printf '"%s", "%s"' "$(base64 -w 0 "$HERE/smoke_mask_left.png")" \
  "$(base64 -w 0 "$HERE/smoke_mask_right.png")")
try two-object-scene '"glb":true' "\"output_format\": \"glb\", \"with_texture\": false, \"masks\": [$masks]" \
  /generate/sync check_scene
try depth-map '"lotus":"ready"' '"processing_res": 768' /depth/sync check_depth

echo "$failures failed"
exit "$((failures > 0))"
