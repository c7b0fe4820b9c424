"""Which chunk label should DAgger train a chunked policy on, from the states the policy reached?

Two candidates for the H-action label at a state s_t the policy visited:

- path: the expert's per-frame labels at s_t, s_t+1, ... along the path the policy actually took
  (what `vla improve` writes: one label per visited frame, chunks are cut from consecutive frames);
- continuation: the expert's own next H actions from s_t (replayed from the episode's seed and
  the executed prefix, then the expert drives H steps).

A chunked policy executes its chunk open loop, so the better label is the one that, executed open loop
from s_t as a perfect imitator would, leaves the robot where the expert can still finish. For every chunk
boundary of the shipped policy's closed-loop episodes: execute each label chunk open loop, then let the
expert take over; report success, steps to success and how far the two labels differ.

    nice -n 10 python research/dagger_label_choice.py --robots so101 reach push --seeds 10
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from vla import VLAPolicy
from vla.defaults import default_policy_path
from vla.evaluation.report import wilson_interval
from vla.sim import ExpertUnavailable, make_env

ROBOTS = {"so101": ("so101", "pick-place"), "reach": ("metaworld", "reach-v3"), "push": ("metaworld", "push-v3")}


def replay(env, seed: int, prefix: list[np.ndarray]) -> None:
    env.reset(seed, render=False)
    for a in prefix:
        env.step(a, render=False)


def finish_with_expert(env) -> tuple[bool, int]:
    try:
        while not env.done:
            env.step(env.expert_label(), render=False)
    except ExpertUnavailable:
        return False, env.steps
    return env.success, env.steps


def episode(env, policy, embodiment: str, seed: int, H: int, every: int) -> list[dict]:
    """The policy's closed-loop episode, then both labels at every ``every``-th chunk boundary."""
    obs = env.reset(seed)
    executed, path_labels, boundaries = [], [], []
    while not env.done:
        boundaries.append(len(executed))
        chunk = policy.predict(obs["images"], env.instruction, embodiment).actions
        for a in chunk[:H]:
            path_labels.append(env.expert_label())
            executed.append(np.asarray(a, np.float32))
            obs, _, done = env.step(a)
            if done:
                break
    rows = []
    for t in boundaries[::every]:
        if t + H > len(executed):
            break
        path = np.stack(path_labels[t:t + H])
        replay(env, seed, executed[:t])
        cont = []
        for _ in range(H):
            if env.done:
                break
            cont.append(env.expert_label())
            env.step(cont[-1], render=False)
        if len(cont) < H:
            break
        cont = np.stack(cont)
        row = {"seed": seed, "t": t, "diff": np.abs(path - cont).mean(axis=1).tolist()}
        for name, chunk in (("path", path), ("continuation", cont)):
            replay(env, seed, executed[:t])
            for a in chunk:
                if env.done:
                    break
                env.step(a, render=False)
            row[name] = finish_with_expert(env)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robots", nargs="+", default=list(ROBOTS), choices=list(ROBOTS))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--seed-start", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=2, help="label every n-th chunk boundary")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy = VLAPolicy.from_pretrained(default_policy_path())
    results = {}
    for robot in args.robots:
        env_name, task = ROBOTS[robot]
        emb = {"metaworld": "sawyer"}.get(env_name, env_name)
        cfg = policy.embodiments[emb]
        env = make_env(env_name, task, cameras=[c.removeprefix("observation.images.") for c in cfg.cameras],
                       image_size=cfg.image_size or 128)
        rows = [r for s in range(args.seed_start, args.seed_start + args.seeds)
                for r in episode(env, policy, emb, s, cfg.chunk_size, args.every)]
        env.close()
        summary = {"boundaries": len(rows), "mean_label_difference_per_step": np.mean([r["diff"] for r in rows], 0).round(3).tolist()}
        for name in ("path", "continuation"):
            k = sum(r[name][0] for r in rows)
            lo, hi = wilson_interval(k, len(rows))
            summary[name] = {"success": f"{k}/{len(rows)}", "ci95": [round(lo, 2), round(hi, 2)],
                             "mean_steps_when_successful": float(np.mean([r[name][1] for r in rows if r[name][0]] or [np.nan]))}
        results[robot] = summary
        print(robot, json.dumps(summary), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
