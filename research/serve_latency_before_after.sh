#!/usr/bin/env bash
# The shipped default policy served by an older checkout (BEFORE, e.g. the commit before the precision
# work) and by this one, in one run: closed-loop `vla eval --server` on each robot, alternating the two
# servers episode block by episode block so that other load hits both alike.
#   git worktree add ../before 191b331 && (cd ../before && make install)
#   BEFORE=../before bash research/serve_latency_before_after.sh        # ROUNDS=3 EPISODES=2 OUT=eval/latency
#   TORCH_THREADS=1 ...   # on a machine other jobs share (torch's spinning threads collapse under contention)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false
BEFORE=${BEFORE:?set BEFORE to an older checkout with its own .venv}
OUT=${OUT:-eval/latency}
ROUNDS=${ROUNDS:-3}
THREADS=${TORCH_THREADS:+--torch-threads $TORCH_THREADS}
EPISODES=${EPISODES:-2}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

(cd "$BEFORE" && exec .venv/bin/vla serve --port 3201 $THREADS > "$OUT/server_before.log" 2>&1) &
BEFORE_PID=$!
.venv/bin/vla serve --port 3202 $THREADS > "$OUT/server_after.log" 2>&1 &
AFTER_PID=$!
trap 'kill $BEFORE_PID $AFTER_PID 2>/dev/null || true' EXIT
for port in 3201 3202; do
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 1; done
done

for round in $(seq 1 "$ROUNDS"); do
  for side in before after; do
    port=$([ "$side" = before ] && echo 3201 || echo 3202)
    for env in aloha metaworld so101; do
      tasks=$([ "$env" = metaworld ] && echo "--tasks reach-v3" || echo "")
      .venv/bin/vla eval --env "$env" $tasks --episodes "$EPISODES" --seed-start $((100000 + round * 10)) \
        --server "http://127.0.0.1:$port" --out "$OUT/$side/$env/round$round" --no-progress > /dev/null
    done
  done
done

.venv/bin/python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

import numpy as np

from vla.precision import cpu_capability, cpu_name

out = Path(sys.argv[1])
print(f"CPU: {cpu_name()} | capability: {cpu_capability()}")
print("| robot | server | chunk latency p50 ms | p95 ms | x real time |")
print("|---|---|---|---|---|")
outcomes = {}
for env in ("aloha", "metaworld", "so101"):
    p50 = {}
    for side in ("before", "after"):
        runs = [json.loads(f.read_text()) for f in sorted((out / side / env).glob("round*/results.json"))]
        timing = [r["timing"] for r in runs]
        p50[side] = float(np.median([t["latency_ms"]["p50"] for t in timing]))
        p95 = float(np.median([t["latency_ms"]["p95"] for t in timing]))
        rt = float(np.median([t["realtime_factor"] for t in timing]))
        outcomes[env, side] = {(e["task"], e["seed"]): e["success"] for r in runs for e in r["episodes"]}
        print(f"| {env} | {side} | {p50[side]:.1f} | {p95:.1f} | {rt:.2f} |")
    print(f"| {env} | ratio | {p50['before'] / p50['after']:.2f}x | | |")
print()
for env in ("aloha", "metaworld", "so101"):
    a, b = outcomes[env, "before"], outcomes[env, "after"]
    same = sum(a[k] == b.get(k) for k in a)
    print(f"{env}: success before {sum(a.values())}/{len(a)}, after {sum(b.values())}/{len(b)}; "
          f"same outcome on {same}/{len(a)} seeds")
EOF
