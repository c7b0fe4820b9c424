"""Does an ALOHA policy grasp the cube or knock it? Closed loop (in process, every chunk executed
in full), per seed: the furthest milestone, the cube's highest point, how close the right gripper's
fingers came to it and how far it ended from where it started; then the scripted expert on the
same seeds for reference. gym-aloha's "lifted" (reward 2) only asks that the cube touch the right
gripper and not the table, which a cube tipped or flung by the fingers also does; a cube carried
in the jaws stays aloft (centre 3 cm above its resting height) for many steps, one knocked over
does not. The expert's episodes end at success, when the left fingers touch the cube at the
meeting point, about 35 steps after the lift.

    python research/aloha_grasp_check.py [--model DIR] [--seeds 100000 100003 100015]
"""

from __future__ import annotations

import argparse

import numpy as np

from vla import VLAPolicy
from vla.defaults import default_policy_path
from vla.sim import make_env

FINGERS = ("vx300s_right/left_finger_link", "vx300s_right/right_finger_link")
RESTING, ALOFT = 0.02, 0.05  # m: the cube's centre on the table, and 3 cm above it


def run(env, seed: int, policy=None) -> str:
    render = policy is not None  # the expert needs no images
    obs = env.reset(seed=seed, render=render)
    start, top, closest, aloft = None, RESTING, np.inf, 0
    while not env.done:
        actions = [env.expert_action()] if policy is None else policy.predict(
            obs["images"], env.instruction, "aloha").actions
        for action in actions:
            obs, _, _ = env.step(action, render=render)
            box = env.body_position("box")
            fingers = sum(env.body_position(f) for f in FINGERS) / 2
            closest = min(closest, float(np.linalg.norm(fingers - box)))
            if start is None and box[2] < RESTING + 0.005:  # gym-aloha drops the cube from 5 cm at reset
                start = box
            if start is not None:
                top, aloft = max(top, box[2]), aloft + int(box[2] > ALOFT)
            if env.done:
                break
    milestone = env.stages[env.stage_reached - 1] if env.stage_reached else "none"
    moved = np.linalg.norm(env.body_position("box")[:2] - start[:2]) if start is not None else np.nan
    return (f"{'success' if env.success else milestone:>18}  cube top {top * 100:5.1f} cm, aloft {aloft:3d} steps,"
            f" moved {moved * 100:5.1f} cm  fingers closest {closest * 100:5.1f} cm  ({env.steps} steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="policy directory (default: the shipped default policy)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[100_000, 100_003, 100_015])
    args = parser.parse_args()

    policy = VLAPolicy.from_pretrained(args.model or default_policy_path())
    emb = policy.embodiments["aloha"]
    cameras = [c.removeprefix("observation.images.") for c in emb.cameras]
    with make_env("aloha", cameras=cameras, image_size=emb.image_size or 128) as env:
        for who, p in (("policy", policy), ("expert", None)):
            for seed in args.seeds:
                print(f"{who} seed {seed}: {run(env, seed, p)}", flush=True)


if __name__ == "__main__":
    main()
