"""Does a policy see its training frames and the simulator's raw frames alike? A train/serve check.

A dataset from `vla data generate` stores camera frames as video; a robot or simulator sends raw
renders. For the first frame of each training episode this script renders the same state again
(same seed), asks the policy for a chunk from the decoded frame and from the raw render, and
compares both with the recorded expert actions (mean |a - a_expert| over the chunk, physical units).
A policy that fits the decoded frame but not the raw render of the same state has learnt the
codec's artefacts; `vla data generate --lossless` stores frames that decode as rendered.

    python research/codec_gap.py --model runs/so101_only --data data/so101 [--episodes 10]
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack

import numpy as np

from vla import VLAPolicy
from vla.data.lerobot import LeRobotDataset
from vla.sim import make_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="policy directory")
    parser.add_argument("--data", required=True, help="a dataset written by `vla data generate` (one env)")
    parser.add_argument("--embodiment", default=None, help="the policy's name for the robot (default: the env's)")
    parser.add_argument("--episodes", type=int, default=10, help="first N episodes of the dataset")
    args = parser.parse_args()

    policy = VLAPolicy.from_pretrained(args.model)
    data = LeRobotDataset(args.data)
    prov = data.provenance
    if "written_task_seed" not in prov.get("episodes", {}):
        parser.error(f"{args.data} was not written by `vla data generate` (no provenance of episode seeds)")
    emb = policy.embodiment(args.embodiment or prov["env"])
    print(f"{'episode':>7s} {'task':24s} {'seed':>5s} {'|pixel diff| mean/max':>22s} "
          f"{'L1 decoded':>10s} {'L1 raw':>8s}")
    gaps, envs, stack = [], {}, ExitStack()
    for i, (task, seed) in enumerate(prov["episodes"]["written_task_seed"][:args.episodes]):
        if task not in envs:  # one simulator per task, reused across its episodes
            envs[task] = stack.enter_context(make_env(prov["env"], task, cameras=prov["cameras"],
                                                      image_size=tuple(prov["image_size"])))
        raw = envs[task].reset(seed=seed)["images"]
        instruction = envs[task].instruction
        decoded = {key: data.frame(i, 0, key) for key in raw}
        recorded = data.episode(i).actions[:emb.chunk_size]
        l1 = {}
        for name, images in (("decoded", decoded), ("raw", raw)):
            chunk = policy.predict(images, instruction, emb.name).actions[:len(recorded)]
            l1[name] = float(np.abs(chunk - recorded).mean())
        pixels = np.concatenate([np.abs(raw[k].astype(int) - decoded[k].astype(int)).ravel() for k in raw])
        gaps.append((l1["decoded"], l1["raw"]))
        print(f"{i:7d} {task:24s} {seed:5d} {pixels.mean():14.2f} / {pixels.max():3d} "
              f"{l1['decoded']:10.4f} {l1['raw']:8.4f}")
    stack.close()
    dec, raw_l1 = np.mean(gaps, axis=0)
    print(f"mean L1 to the expert's first chunk: decoded frames {dec:.4f}, raw renders {raw_l1:.4f} "
          f"({raw_l1 / max(dec, 1e-12):.1f}x)")


if __name__ == "__main__":
    main()
