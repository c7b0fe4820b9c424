#!/usr/bin/env bash
# One GPU, at most 10 minutes: what --dtype auto / train.precision=auto buy there, against fp32, in one run.
#   bash benchmarks/gpu_check.sh                 # OUT=gpu_check STEPS=300 EPISODES=6 to change sizes
# 1. data: a few episodes per robot of the default recipe (simulators on the CPU cores, in parallel)
# 2. train: the default recipe (finetune/configs/default_policy.yaml) for STEPS steps in bf16, then 20 in fp32
#    for the step-time ratio
# 3. predict: the shipped default policy, fp32 vs auto, every embodiment (bench_predict.py --model shipped)
# 4. serve: the same policy served in fp32 and in auto, closed loop on ALOHA, p50 chunk latency each
# Everything lands in $OUT (logs, metrics.jsonl, eval reports); a summary is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false MUJOCO_GL=${MUJOCO_GL:-egl}
PY=${PY:-.venv/bin/python}
VLA=${VLA:-.venv/bin/vla}
OUT=${OUT:-gpu_check}
STEPS=${STEPS:-300}
EPISODES=${EPISODES:-6}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

# 1. data (CPU)
$VLA data generate --env metaworld --tasks reach-v3 push-v3 --episodes "$EPISODES" --seed 0 --image-size 128 \
  --out "$OUT/data/metaworld" --no-progress > "$OUT/data_metaworld.log" 2>&1 &
$VLA data generate --env aloha --episodes "$EPISODES" --seed 0 --image-size 128 --out "$OUT/data/aloha" \
  --no-progress > "$OUT/data_aloha.log" 2>&1 &
$VLA data generate --env so101 --episodes "$EPISODES" --seed 0 --image-size 128 --out "$OUT/data/so101" \
  --no-progress > "$OUT/data_so101.log" 2>&1 &
wait

# 2. fine-tune: bf16 (auto) for STEPS steps, fp32 for 20 (step time only)
RECIPE=(--config finetune/configs/default_policy.yaml --datasets.sawyer.path "$OUT/data/metaworld"
        --datasets.so101.path "$OUT/data/so101" --datasets.aloha.path "$OUT/data/aloha"
        --eval.every 0 --checkpoint.every 0 --log.progress false)
timeout 300 $VLA finetune "${RECIPE[@]}" --out "$OUT/run_auto" --train.steps "$STEPS" --train.precision auto \
  > "$OUT/train_auto.log" 2>&1 || echo "bf16 fine-tune did not finish in 300 s (see $OUT/train_auto.log)"
timeout 120 $VLA finetune "${RECIPE[@]}" --out "$OUT/run_fp32" --train.steps 20 --train.precision fp32 \
  > "$OUT/train_fp32.log" 2>&1 || echo "fp32 fine-tune did not finish in 120 s (see $OUT/train_fp32.log)"

# 3. predict latency, fp32 vs auto (and the other levers), on the GPU
$PY benchmarks/bench_predict.py --model shipped --device cuda --repeats 20 > "$OUT/predict.md" 2>&1 || true

# 4. serving: closed loop on ALOHA through the server, fp32 vs auto
for dtype in float32 auto; do
  port=$([ "$dtype" = auto ] && echo 3102 || echo 3101)
  $VLA serve --port "$port" --device cuda --dtype "$dtype" > "$OUT/serve_$dtype.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 1; done
  timeout 120 $VLA eval --env aloha --episodes 2 --server "http://127.0.0.1:$port" --out "$OUT/eval_$dtype" \
    --no-progress > "$OUT/eval_$dtype.log" 2>&1 || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done

$PY - "$OUT" <<'EOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("GPU:", (out / "gpu.txt").read_text().strip())
for run in ("run_auto", "run_fp32"):
    rows = [json.loads(l) for l in (out / run / "metrics.jsonl").read_text().splitlines()] if (out / run / "metrics.jsonl").exists() else []
    train = [r for r in rows if r.get("split") == "train"]
    if train:
        print(f"{run}: {train[-1]['step']} steps, median {statistics.median(r['samples_per_s'] for r in train):.1f} "
              f"samples/s, last loss {train[-1]['loss']:.3f}")
print((out / "predict.md").read_text())
for dtype in ("float32", "auto"):
    for f in sorted((out / f"eval_{dtype}").glob("**/results.json")):
        t = json.loads(f.read_text())["timing"]
        print(f"serve {dtype}: ALOHA chunk latency p50 {t['latency_ms']['p50']} ms, {t['realtime_factor']:.2f}x real time")
EOF
