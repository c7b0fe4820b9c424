#!/usr/bin/env bash
# Reproduce the default policy's model card numbers: closed loop through the HTTP server (the path a
# robot uses) on held-out seeds (100000+; training used 0-39), then one suite table.
#   bash scripts/eval_default_policy.sh                 # serves the default policy on :3001 itself
#   URL=http://127.0.0.1:3000 bash scripts/eval_default_policy.sh   # or use a running `vla serve`
#   EPISODES=20 OUT=eval/mine bash scripts/eval_default_policy.sh
#   MODEL=runs/my_run OUT=eval/my_run bash scripts/eval_default_policy.sh   # a trained run, same suite
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false
VLA=.venv/bin/vla
EPISODES=${EPISODES:-10}
OUT=${OUT:-eval/default_policy}
MW_TASKS="reach-v3 push-v3 button-press-topdown-v3 drawer-close-v3 window-open-v3"
mkdir -p "$OUT"

if [ -z "${URL:-}" ]; then
  URL=http://127.0.0.1:3001
  $VLA serve ${MODEL:+--model "$MODEL"} --port 3001 --workers 2 --torch-threads 1 > "$OUT/server.log" 2>&1 &   # 2 model workers: one per core
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 1 180); do curl -sf "$URL/readyz" >/dev/null 2>&1 && break; sleep 1; done
fi

$VLA eval --env metaworld --tasks $MW_TASKS --episodes "$EPISODES" --server "$URL" --workers 2 \
  --record "$OUT/videos" --record-episodes 1 --record-format gif --out "$OUT/metaworld" --no-progress
$VLA eval --env so101 --episodes "$EPISODES" --server "$URL" --workers 2 \
  --record "$OUT/videos" --record-episodes 1 --record-format gif --out "$OUT/so101" --no-progress
$VLA eval --env aloha --episodes "$EPISODES" --server "$URL" --workers 2 \
  --record "$OUT/videos" --record-episodes 1 --record-format gif --out "$OUT/aloha" --no-progress
$VLA eval --summarize "$OUT/metaworld" "$OUT/so101" "$OUT/aloha" --out "$OUT"
