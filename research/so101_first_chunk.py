"""How much does an SO-101 policy's first chunk follow the cube? For N held-out seeds, compare the
grasp point's first-chunk motion (x, y, summed over the chunk) with the offset to where the scripted
expert closes the jaws: spread, correlation and slope of a line fit (1 = reaches as far as needed,
0 = the same chunk whatever the scene). Each value is read from the 256-bin distributions of the
parallel-decoding slots twice: the argmax (what `predict` returns) and the expected value.

    python research/so101_first_chunk.py --model vla/default_policy runs/so101_only [--seeds 30]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from vla import VLAPolicy
from vla.action_codec import ActionCodec
from vla.decoding import parallel_logits
from vla.sim import make_env
from vla.sim.so101_env import ACTION_SCALE
from vla.types import PredictRequest


def slot_distributions(policy: VLAPolicy, requests: list[PredictRequest], slots: int) -> np.ndarray:
    """(B, slots, bins) probabilities of the action bins at the parallel-decoding query slots."""
    logits = parallel_logits(policy.model, policy.prepare(requests), policy.config.action_token_ids,
                             policy.config.query_token_id, slots)
    return torch.softmax(logits.float(), -1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, help="policy directories (parallel decoding, bins)")
    parser.add_argument("--seeds", type=int, default=30, help="held-out seeds from 100000")
    args = parser.parse_args()

    env = make_env("so101", cameras=["workspace", "gripper"], image_size=128)  # each policy takes what it needs
    needed, frames = [], []
    for seed in range(100_000, 100_000 + args.seeds):
        frames.append(env.reset(seed)["images"])
        needed.append((env.grasp_target - env.grasp_point)[:2] * 100)
    env.close()
    needed = np.array(needed)
    print(f"{'model':32s} {'readout':8s} {'axis':4s} {'needed std':>10s} {'moved std':>9s} {'corr':>5s} {'slope':>5s}")
    for path in args.model:
        policy = VLAPolicy.from_pretrained(path)
        if policy.config.decoding != "parallel" or policy.action_tokenizer.kind != "bins":
            parser.error(f"{path}: needs a parallel-decoding policy with bins")
        emb = policy.embodiments["so101"]
        H, D = emb.chunk_size, emb.action_dim
        instruction = "pick up the purple cube and place it on the green target"
        requests = [PredictRequest({c: f[c] for c in emb.cameras}, instruction, "so101") for f in frames]
        p = slot_distributions(policy, requests, H * D)
        centers = policy.action_tokenizer.centers
        for readout, values in (("argmax", centers[p.argmax(-1)]), ("expected", p @ centers)):
            moved = np.array([ActionCodec(emb).unnormalize(v.reshape(H, D))[:, :2].sum(0) * ACTION_SCALE * 100 for v in values])
            for d, axis in enumerate("xy"):
                corr = np.corrcoef(needed[:, d], moved[:, d])[0, 1] if moved[:, d].std() > 0 else float("nan")
                slope = np.polyfit(needed[:, d], moved[:, d], 1)[0]
                print(f"{path:32s} {readout:8s} {axis:4s} {needed[:, d].std():8.1f} cm {moved[:, d].std():6.1f} cm "
                      f"{corr:+5.2f} {slope:+5.2f}")


if __name__ == "__main__":
    main()
