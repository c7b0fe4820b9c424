"""Does the expert still succeed when it takes over from states the shipped policy reached?

For each robot and seed: run the shipped default policy in closed loop (whole chunks, as
``vla eval`` does) for K steps, then let ``SimEnv.expert_label()`` drive until the episode ends.
Reports takeover success with Wilson intervals next to the plain expert's success from reset, and
the cost of a label. An episode whose expert raises ExpertUnavailable counts as a failure.

    nice -n 10 python research/expert_takeover.py --seeds 20 --steps 40 80 120
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from vla import VLAPolicy
from vla.defaults import default_policy_path
from vla.evaluation.report import wilson_interval
from vla.sim import ExpertUnavailable, make_env

ROBOTS = {"aloha": ("aloha", "transfer-cube"), "so101": ("so101", "pick-place"),
          "push": ("metaworld", "push-v3"), "reach": ("metaworld", "reach-v3")}


def takeover(env, policy, embodiment: str, seed: int, k: int) -> dict:
    """K policy steps (or until the episode ends), then the expert's labels until done."""
    obs = env.reset(seed)
    policy_success = False
    while env.steps < k and not env.done:
        chunk = policy.predict(obs["images"], env.instruction, embodiment).actions
        obs, policy_success, _ = env.step_chunk(chunk[: k - env.steps])
    labels, label_s, reason = 0, 0.0, ""
    try:
        while not env.done:
            t0 = time.perf_counter()
            action = env.expert_label()
            label_s += time.perf_counter() - t0
            labels += 1
            env.step(action, render=False)
    except ExpertUnavailable as err:
        reason = str(err)
    return {"success": env.success, "by_policy": bool(policy_success), "steps": env.steps, "labels": labels,
            "label_ms": 1e3 * label_s / max(labels, 1), "unavailable": reason}


def expert_from_reset(env, seed: int) -> bool:
    env.reset(seed, render=False)
    while not env.done:
        env.step(env.expert_action(), render=False)
    return env.success


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robots", nargs="+", default=list(ROBOTS), choices=list(ROBOTS))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--seed-start", type=int, default=100000)
    ap.add_argument("--steps", type=int, nargs="+", default=[40])
    ap.add_argument("--so101-steps", type=int, nargs="+", default=[40, 80, 120])
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy = VLAPolicy.from_pretrained(default_policy_path())
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    rows = []
    for robot in args.robots:
        env_name, task = ROBOTS[robot]
        env = make_env(env_name, task)
        name = env.embodiment.name
        expert = sum(expert_from_reset(env, s) for s in seeds)
        lo, hi = wilson_interval(expert, len(seeds))
        print(f"{robot}: expert from reset {expert}/{len(seeds)} [{lo:.2f}, {hi:.2f}]", flush=True)
        for k in (args.so101_steps if robot == "so101" else args.steps):
            runs = [takeover(env, policy, name, s, k) for s in seeds]
            ok = sum(r["success"] for r in runs)
            lo_k, hi_k = wilson_interval(ok, len(runs))
            row = {"robot": robot, "task": task, "policy_steps": k, "takeover": ok, "n": len(runs),
                   "wilson": [round(lo_k, 3), round(hi_k, 3)], "solved_by_policy": sum(r["by_policy"] for r in runs),
                   "unavailable": sum(bool(r["unavailable"]) for r in runs),
                   "label_ms": round(float(np.mean([r["label_ms"] for r in runs if r["labels"]] or [0.0])), 2),
                   "expert_from_reset": expert, "expert_wilson": [round(lo, 3), round(hi, 3)]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        env.close()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
