"""Tracking: how far the policy is from the expert along the expert's own trajectory.

The scripted expert drives the simulator from an episode's seed; every H steps the policy is asked
for a chunk and compared with the expert's next H actions (mean error as a share of each
dimension's range). It finds no pipeline fault; it shows under-training, and where along the task
(e.g. the grasp) the policy loses the expert.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.data.lerobot import LeRobotDataset
from vla.policy import VLAPolicy


def expert_tracking(policy: VLAPolicy, embodiment: str, data: LeRobotDataset, episodes: list[int]) -> dict[str, Any]:
    from vla.sim import make_env

    prov = data.provenance
    emb = policy.embodiment(embodiment)
    stats = emb.action_stats
    span = np.maximum(stats.max - stats.min, 1e-6)
    rows, envs = [], {}
    try:
        for i in episodes:
            task, seed = prov["episodes"]["written_task_seed"][i]
            if task not in envs:
                envs[task] = make_env(prov["env"], task, cameras=prov.get("cameras"), image_size=tuple(prov["image_size"]))
            env, errors, instruction = envs[task], [], data.episode(i).task
            obs = env.reset(seed=int(seed))
            while not env.done:
                state = obs["state"] if policy.config.use_state else None
                chunk = policy.predict(obs["images"], instruction, emb.name, state=state).actions
                expert = []
                while len(expert) < emb.chunk_size and not env.done:
                    expert.append(env.expert_action())
                    obs, _, _ = env.step(expert[-1], render=len(expert) == emb.chunk_size)
                if len(expert) < emb.chunk_size:
                    break
                errors.append(float(np.mean(np.abs(chunk - np.asarray(expert)) / span)))
            rows.append({"episode": i, "seed": int(seed), "chunk_errors": errors})
    finally:
        for env in envs.values():
            env.close()
    thirds = [[e for r in rows for e in np.array_split(np.asarray(r["chunk_errors"]), 3)[k]] for k in range(3)]
    return {"episodes": rows, "mean_error_of_range": float(np.mean([e for r in rows for e in r["chunk_errors"]])),
            "by_third": [float(np.mean(t)) if t else None for t in thirds]}
