"""Scripted-expert success under the default domain randomization, per robot (physics only: the experts
read simulator state, so visual factors cannot change their outcome). Each failure is re-run with each
dynamics factor alone to name the factor that broke it.

    python research/expert_under_randomization.py --seeds 100
"""

from __future__ import annotations

import argparse
import time

import vla.sim  # noqa: F401  (headless GL first)
from vla.evaluation.report import wilson_interval
from vla.sim import make_env
from vla.sim.generate import rollout_expert
from vla.sim.randomization import DYNAMICS, FACTORS, load_config

ROBOTS = [("metaworld", "pick-place-v3"), ("metaworld", "drawer-close-v3"), ("so101", "pick-place"),
          ("aloha", "transfer-cube")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument("--robots", nargs="+", default=None, help="only these env names")
    args = p.parse_args()
    print("| robot | task | expert success (all default factors) | 95% CI | failed seeds: factor alone that fails |")
    print("|---|---|---|---|---|")
    for env_name, task in [r for r in ROBOTS if not args.robots or r[0] in args.robots]:
        t0 = time.perf_counter()
        env = make_env(env_name, task, image_size=32, randomize=load_config(env_name))
        failed = [s for s in range(args.seed_start, args.seed_start + args.seeds)
                  if not rollout_expert(env, s, render=False)[0]]
        blame = {}
        for s in failed:
            culprits = []
            for factor in DYNAMICS:
                env.set_randomization(load_config(env_name, {f: "off" for f in FACTORS if f != factor}))
                if not rollout_expert(env, s, render=False)[0]:
                    culprits.append(factor)
            blame[s] = culprits or ["only in combination"]
            env.set_randomization(load_config(env_name))
        env.close()
        ok = args.seeds - len(failed)
        lo, hi = wilson_interval(ok, args.seeds)
        text = "; ".join(f"{s}: {', '.join(c)}" for s, c in blame.items()) or "-"
        print(f"| {env_name} | {task} | {ok}/{args.seeds} ({ok / args.seeds:.0%}) | [{lo:.2f}, {hi:.2f}] | {text} |",
              f"<!-- {time.perf_counter() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
