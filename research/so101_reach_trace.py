"""Where does an SO-101 policy put the gripper? Run it in closed loop (in process, every chunk
executed in full) and, at each chunk, print the grasp point's offset from where the scripted expert
closes the jaws (cube centre + GRASP_HEIGHT), the chunk's summed motion and its grasp commands.
A first chunk whose motion does not match the offset shows the reach, not the grasp, going wrong.

    python research/so101_reach_trace.py [--model DIR] [--seeds 100000 100001 100002] [--steps 64]
"""

from __future__ import annotations

import argparse

import numpy as np

from vla import VLAPolicy
from vla.defaults import default_policy_path
from vla.sim import make_env
from vla.sim.so101_env import ACTION_SCALE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="policy directory (default: the shipped default policy)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[100_000, 100_001, 100_002])
    parser.add_argument("--steps", type=int, default=64, help="closed-loop steps per seed")
    args = parser.parse_args()

    policy = VLAPolicy.from_pretrained(args.model or default_policy_path())
    emb = policy.embodiments["so101"]
    cameras = [c.removeprefix("observation.images.") for c in emb.cameras]
    for seed in args.seeds:
        with make_env("so101", cameras=cameras, image_size=emb.image_size or 128) as env:
            obs = env.reset(seed=seed)
            print(f"seed {seed}: cube at {np.round(env.cube_pos[:2] * 100, 1)} cm")
            while env.steps < args.steps and not env.done:
                chunk = policy.predict(obs["images"], env.instruction, emb.name).actions
                offset = (env.grasp_point - env.grasp_target) * 100
                motion = chunk[:, :3].sum(0) * ACTION_SCALE * 100
                grasp = "".join("o" if g > 0.5 else "c" for g in chunk[:, 3])
                print(f"  t={env.steps:3d}  offset x {offset[0]:+5.1f} y {offset[1]:+5.1f} z {offset[2]:+5.1f} cm"
                      f" | chunk moves x {motion[0]:+5.1f} y {motion[1]:+5.1f} z {motion[2]:+5.1f} cm, grasp {grasp}")
                for action in chunk:
                    obs, _, _ = env.step(action)
                    if env.done:
                        break
            reached = env.stages[env.stage_reached - 1] if env.stage_reached else "none"
            print(f"  furthest milestone: {reached}")


if __name__ == "__main__":
    main()
