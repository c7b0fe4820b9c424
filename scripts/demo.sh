#!/usr/bin/env bash
# The README's first command (`make demo`): build the offline default backbone, generate a few
# simulator demonstrations for three robots, fine-tune briefly, serve the result on 127.0.0.1 and
# send it one simulator-rendered observation. Everything lands in .cache/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false
VLA=.venv/bin/vla
DEMO=.cache/demo
PORT=${PORT:-3000}
mkdir -p "$DEMO"

step() { printf '\n== %s\n' "$*"; }

step "1/5 default backbone (EfficientNet-Lite0 + SmolLM2-135M, first 8 layers, 16 image tokens)"
$VLA backbone build --layers 8 --image-tokens 16

step "2/5 scripted-expert demonstrations (Meta-World Sawyer, ALOHA, SO-101; 64 px)"
[ -d $DEMO/data/metaworld ] || $VLA data generate --env metaworld --tasks reach-v3 push-v3 --episodes 3 --image-size 64 --out $DEMO/data/metaworld --no-progress
[ -d $DEMO/data/aloha ] || $VLA data generate --env aloha --episodes 2 --image-size 64 --out $DEMO/data/aloha --no-progress
[ -d $DEMO/data/so101 ] || $VLA data generate --env so101 --episodes 3 --image-size 64 --out $DEMO/data/so101 --no-progress

step "3/5 LoRA fine-tune for a couple of minutes (far too short to solve tasks: it shows the pipeline)"
if [ ! -f $DEMO/run/vla_config.json ]; then
  rm -rf $DEMO/run
  $VLA finetune --config finetune/configs/three_robots.yaml \
    --data sawyer=$DEMO/data/metaworld:0.4 --data so101=$DEMO/data/so101:0.4 --data aloha=$DEMO/data/aloha:0.2 \
    --train.steps 30 --train.batch_size 4 --train.warmup_steps 3 --eval.every 30 --eval.max_samples 4 \
    --checkpoint.every 30 --log.every 5 --out $DEMO/run
fi

step "4/5 serve it with BentoML on 127.0.0.1:$PORT"
if [ -f $DEMO/server.pid ] && kill -0 "$(cat $DEMO/server.pid)" 2>/dev/null; then
  kill "$(cat $DEMO/server.pid)"; sleep 2
fi
nohup $VLA serve --model $DEMO/run --port "$PORT" > $DEMO/server.log 2>&1 &
echo $! > $DEMO/server.pid
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$(cat $DEMO/server.pid)" 2>/dev/null || { cat $DEMO/server.log; echo "server died" >&2; exit 1; }
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { tail -20 $DEMO/server.log; echo "server not ready" >&2; exit 1; }

step "5/5 one SO-101 observation rendered by the simulator -> POST /predict -> action chunk"
.venv/bin/python scripts/demo_request.py --url "http://127.0.0.1:$PORT" --env so101

cat <<TXT

The server is still running (PID $(cat $DEMO/server.pid), log $DEMO/server.log).
  stop it:        kill \$(cat $DEMO/server.pid)
  its metadata:   curl http://127.0.0.1:$PORT/metadata
  next:           README.md sections "Serving", "Fine-tuning" and "Evaluation"; vla --help
TXT
