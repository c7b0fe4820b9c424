"""Closed-loop control rate: through the server (the robot's path) vs in-process, on real simulators.

    python benchmarks/bench_eval.py                      # tiny policies on Meta-World reach-v3 and SO-101
    python benchmarks/bench_eval.py --default-backbone   # also an (untrained) policy on the default backbone
    python benchmarks/bench_eval.py --envs so101 --episodes 3 --max-steps 100

For each simulator a policy whose embodiment is the simulator's is built (tiny random LLaVA, or the
offline default backbone EfficientNet-Lite0 + SmolLM2 with fresh action tokens: its actions are
meaningless, its latency is real), served with ``vla serve`` (``python -m vla.cli serve``) on 127.0.0.1, and driven
by ``vla.evaluation.evaluate`` on the same seeds:

* in-process  VLAPolicy in this process, k = H (the incumbent: no transport at all)
* server      VLAClient (PNG over HTTP) + ChunkExecutor, k = H
* server k=1  replanning every step (what a reactive policy costs)
* realtime    server, background inference, loop paced at the embodiment's control rate: does it keep up?

"achieved" is control steps per second of the closed loop (policy + simulation + rendering); the
ratio compares with in-process on the same seeds. The load generator, the simulator and the server
share this machine's cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
from vla.local_server import LocalServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = {"metaworld": "reach-v3", "so101": "pick-place", "aloha": "transfer-cube"}


class Server(LocalServer):
    """``vla serve --model MODEL`` started and ready, its log and BENTOML_HOME under ``root``."""

    def __init__(self, model: Path, root: Path, torch_threads: int | None):
        from vla.commands.serve import build_parser

        args = ["--max-latency-ms", "60000"]
        if torch_threads and "--torch-threads" in build_parser().format_help():
            args += ["--torch-threads", str(torch_threads)]
        super().__init__(model, root, args, cwd=REPO)
        self.start()
        try:
            self.wait_ready(300)
        except BaseException:
            self.stop()
            raise


def build_policy(kind: str, env: str, out: Path, image_size: int, chunk_size: int) -> Path:
    from vla.evaluation.testing import env_embodiment, make_tiny_env_checkpoint

    if kind == "tiny":
        return make_tiny_env_checkpoint(out, env, task=TASKS[env], image_size=image_size, chunk_size=chunk_size)
    from vla.action_tokenizers import make_action_tokenizer
    from vla.backbones.default import build_default_backbone
    from vla.policy import VLAPolicy

    backbone = build_default_backbone(num_layers=8, image_tokens=16)  # cached after the first build
    emb = env_embodiment(env, TASKS[env], image_size=image_size, chunk_size=chunk_size)
    policy = VLAPolicy.from_backbone(str(backbone), [emb], make_action_tokenizer("bins", bins=256), decoding="parallel")
    return policy.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", nargs="+", default=["metaworld", "so101"], choices=sorted(TASKS))
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=80)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, in-process and in the server")
    ap.add_argument("--default-backbone", action="store_true", help="also the default backbone (L8, 16 image tokens)")
    ap.add_argument("--skip-k1", action="store_true", help="skip the replan-every-step row (slow for big models)")
    args = ap.parse_args()

    from vla.evaluation.closed_loop import evaluate
    from vla.evaluation.policies import PolicySource

    kinds = ["tiny"] + (["default-L8-T16"] if args.default_backbone else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        for kind in kinds:
            for env in args.envs:
                t0 = time.perf_counter()
                ckpt = build_policy("tiny" if kind == "tiny" else "default", env, Path(tmp) / f"{kind}_{env}",
                                    args.image_size, args.chunk_size)
                server = Server(ckpt, Path(tmp) / f"{kind}_{env}", args.threads)
                print(f"[{kind} {env}] policy + server ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
                common = dict(episodes=args.episodes, seed_start=100_000, max_steps=args.max_steps)
                runs = [("in-process", PolicySource("model", model=str(ckpt), threads=args.threads), {}),
                        ("server", PolicySource("server", url=server.url), {}),
                        ("server k=1", PolicySource("server", url=server.url), {"actions_per_chunk": 1}),
                        ("realtime", PolicySource("server", url=server.url), {"realtime": True})]
                if args.skip_k1:
                    runs = [r for r in runs if r[0] != "server k=1"]
                base = None
                try:
                    for name, src, kw in runs:
                        rep = evaluate(env, [TASKS[env]], source=src, allow_seed_overlap=False, **common, **kw)
                        t = rep["timing"]
                        base = base or t["achieved_hz"]
                        rows.append((kind, env, name, rep["policy"]["actions_per_chunk"], rep["policy"]["chunk_size"],
                                     t["achieved_hz"], t["control_hz"], t["realtime_factor"], t["latency_ms"]["p50"],
                                     t["latency_ms"]["p95"], t["server_model_ms"]["p50"], t["achieved_hz"] / base,
                                     t["starved_steps"], t["stale_skipped"], t["steps"]))
                        print(f"  {name}: {t['achieved_hz']:.1f} steps/s", file=sys.stderr)
                finally:
                    server.stop()

    head = ("policy", "env", "path", "k/H", "achieved steps/s", "control Hz", "x real time", "latency p50/p95 ms",
            "server model p50 ms", "vs in-process", "starved/stale/steps")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for (kind, env, name, k, h, hz, chz, rt, p50, p95, mp50, ratio, starved, stale, steps) in rows:
        mp = "-" if mp50 != mp50 else f"{mp50:.1f}"
        print(f"| {kind} | {env} | {name} | {k}/{h} | {hz:.1f} | {chz:g} | {rt:.2f} | {p50:.1f} / {p95:.1f} | {mp} | "
              f"{ratio:.2f}x | {starved}/{stale}/{steps} |")


if __name__ == "__main__":
    main()
