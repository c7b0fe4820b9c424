#!/usr/bin/env bash
# The ablations behind the default policy card's "What limits it" section. Each part is one lever:
#   steps     closed loop (held-out seeds) of the run's step-1000 and step-2500 checkpoints
#   seeds     closed loop of the final policy on its own training seeds 0-9 (memorisation ceiling)
#   horizon   closed loop of the final policy executing k=4 of its 8 actions per chunk
#   capacity  two training arms to step 500 of the card's 3000-step schedule, one factor changed
#             each (49 image tokens; 16 decoder layers), then open loop on the held-out episodes,
#             with the card's own step-500 checkpoint as the baseline
#   bash research/ablate_default_policy.sh steps seeds horizon capacity    (~2 h on 2 CPU cores)
# Needs the autoregressive run (runs/default_policy_autoregressive) and its step-500/1000/2500 checkpoints in CKPTS (train it
# with --checkpoint.keep_last 10 and point CKPTS at runs/default_policy_autoregressive/checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false
VLA=.venv/bin/vla
OUT=${OUT:-eval/ablations}
CKPTS=${CKPTS:-runs/ablation_ckpts}
FINAL=${FINAL:-runs/default_policy_autoregressive}
MW_TASKS="reach-v3 push-v3 button-press-topdown-v3 drawer-close-v3 window-open-v3"
EVAL="$VLA eval --workers 2 --threads 1 --no-progress"
mkdir -p "$OUT"

steps() {
  for step in 00001000 00002500; do
    $EVAL --env metaworld --tasks $MW_TASKS --episodes 10 --model "$CKPTS/step-$step" --out "$OUT/steps/$step-metaworld"
  done
  # SO-101's validation loss was lowest at step 1000
  $EVAL --env so101 --episodes 10 --model "$CKPTS/step-00001000" --out "$OUT/steps/00001000-so101"
}

seeds() {
  $EVAL --env metaworld --tasks $MW_TASKS --episodes 10 --seed-start 0 --allow-seed-overlap --model "$FINAL" \
    --out "$OUT/train_seeds/metaworld"
  $EVAL --env so101 --episodes 10 --seed-start 0 --allow-seed-overlap --model "$FINAL" --out "$OUT/train_seeds/so101"
  $EVAL --env aloha --episodes 10 --seed-start 0 --allow-seed-overlap --model "$FINAL" --out "$OUT/train_seeds/aloha"
}

horizon() {
  $EVAL --env metaworld --tasks $MW_TASKS --episodes 10 --actions-per-chunk 4 --model "$FINAL" --out "$OUT/k4/metaworld"
}

# Train one arm to its step-500 checkpoint on the card's 3000-step schedule (the card's run had the
# same schedule until step 660), then stop it: same data order, seed and learning rates as the baseline.
train_arm() {
  local options=$2 run="runs/ablation_$1"
  if [ ! -d "$run/checkpoints/step-00000500" ]; then
    $VLA finetune --config finetune/configs/default_policy.yaml --model.decoding autoregressive --out "$run" --train.steps 3000 \
      --model.base_options "$options" --train.cache_vision off --checkpoint.keep_last 10 --log.progress false &
    local pid=$!
    until [ -f "$run/checkpoints/step-00000500/checkpoint.json" ] || ! kill -0 $pid 2>/dev/null; do sleep 10; done
    kill -INT $pid 2>/dev/null || true
    wait $pid || true
  fi
}

open_loop() {
  local name=$1 ckpt=$2
  for data in metaworld so101 aloha; do
    $EVAL --open-loop --data "data/$data" --model "$ckpt" --json --out "$OUT/capacity/$name-$data" > /dev/null
  done
}

capacity() {
  train_arm tokens49 '{"num_layers": 8, "image_tokens": 49}'
  train_arm layers16 '{"num_layers": 16, "image_tokens": 16}'
  open_loop baseline "$CKPTS/step-00000500"
  open_loop tokens49 runs/ablation_tokens49/checkpoints/step-00000500
  open_loop layers16 runs/ablation_layers16/checkpoints/step-00000500
}

for part in "${@:-steps seeds horizon capacity}"; do
  for p in $part; do echo "== $p $(date +%T)"; "$p"; done
done
echo "== done $(date +%T)"
