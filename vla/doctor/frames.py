"""Frames: does the policy see its stored training frames and what a camera sends the server alike?

A robot or simulator sends raw frames (the client encodes them as lossless PNG); a dataset stores
them as video. For data from ``vla data generate`` the first frame of each episode is rendered
again from its seed and the policy is asked for a chunk from both versions of the same state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.data.lerobot import LeRobotDataset
from vla.policy import VLAPolicy


def codec_gap(policy: VLAPolicy, embodiment: str, data: LeRobotDataset, episodes: list[int]) -> dict[str, Any]:
    """Pixel difference, token agreement and chunk L1 between stored and re-rendered first frames."""
    from vla.sim import make_env

    prov = data.provenance
    emb, codec = policy.embodiment(embodiment), policy.codec(embodiment)
    seeds = prov["episodes"]["written_task_seed"]
    rows, envs = [], {}
    try:
        for i in episodes:
            task, seed = seeds[i]
            if task not in envs:
                envs[task] = make_env(prov["env"], task, cameras=prov.get("cameras"), image_size=tuple(prov["image_size"]))
            raw = envs[task].reset(seed=seed)["images"]
            stored = {key: data.frame(i, 0, key) for key in raw}
            instruction = data.episode(i).task
            a = policy.predict(stored, instruction, emb.name).actions
            b = policy.predict(raw, instruction, emb.name).actions
            ids_a, ids_b = (np.asarray(codec.encode(x)) for x in (a, b))
            pixels = np.concatenate([np.abs(raw[k].astype(int) - stored[k].astype(int)).ravel() for k in raw])
            rows.append({"episode": i, "seed": int(seed), "pixel_mean": float(pixels.mean()),
                         "pixel_max": int(pixels.max()), "token_agreement": float((ids_a == ids_b).mean()),
                         "l1": float(np.abs(a - b).mean())})
    finally:
        for env in envs.values():
            env.close()
    return {"episodes": rows, "lossless_video": bool(prov.get("lossless_video")),
            "pixel_mean": float(np.mean([r["pixel_mean"] for r in rows])),
            "pixel_max": int(max(r["pixel_max"] for r in rows)),
            "token_agreement": float(np.mean([r["token_agreement"] for r in rows])),
            "l1": float(np.mean([r["l1"] for r in rows]))}
