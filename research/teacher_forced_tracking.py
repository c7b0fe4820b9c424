"""Where along a task does a policy lose the expert? Drive a simulator with its scripted expert and,
every H steps, compare the policy's chunk with the expert's next H actions (error per chunk as a
fraction of the action range). Low error that jumps at one phase (e.g. the grasp) separates "cannot
do that phase" from "drifts off the demonstrations in closed loop".

    python research/teacher_forced_tracking.py [--model DIR] [--env aloha so101] [--seeds 0 100000] [--steps 64]
"""

from __future__ import annotations

import argparse

import numpy as np

from vla import VLAPolicy
from vla.defaults import default_policy_path
from vla.sim import ENVS, make_env

ROBOT = {"metaworld": "sawyer", "aloha": "aloha", "so101": "so101"}


def tracking_errors(policy: VLAPolicy, env_name: str, seed: int, steps: int, task: str | None = None) -> list[float]:
    """Per-chunk mean |policy - expert| / (q99 - q01) along the expert's own trajectory."""
    emb = policy.embodiments[ROBOT[env_name]]
    cameras = [c.removeprefix("observation.images.") for c in emb.cameras]
    scale = np.maximum(np.asarray(emb.action_stats.q99) - np.asarray(emb.action_stats.q01), 1e-6)
    errors = []
    with make_env(env_name, task=task, cameras=cameras, image_size=emb.image_size or 128) as env:
        obs = env.reset(seed=seed)
        while env.steps < steps and not env.done:
            state = obs["state"] if policy.config.use_state else None
            chunk = policy.predict(obs["images"], env.instruction, emb.name, state).actions
            expert = []
            for _ in range(emb.chunk_size):
                if env.done:
                    break
                expert.append(env.expert_action())
                obs, _, _ = env.step(expert[-1])
            errors.append(float(np.mean(np.abs(chunk[: len(expert)] - np.asarray(expert)) / scale)))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="policy directory (default: the shipped default policy)")
    parser.add_argument("--env", nargs="+", choices=sorted(ENVS), default=["aloha", "so101"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 100_000], help="0-39: training scenes; 100000+: held out")
    parser.add_argument("--steps", type=int, default=64, help="expert steps to follow")
    args = parser.parse_args()

    policy = VLAPolicy.from_pretrained(args.model or default_policy_path())
    for env_name in args.env:
        for seed in args.seeds:
            errors = tracking_errors(policy, env_name, seed, args.steps)
            h = policy.embodiments[ROBOT[env_name]].chunk_size
            per_chunk = " ".join(f"{e:.2f}" for e in errors)
            print(f"{env_name:9} seed {seed:>6}: mean {np.mean(errors):.3f} | per chunk of {h} steps: {per_chunk}")


if __name__ == "__main__":
    main()
