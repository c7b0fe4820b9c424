"""Round trip: a dataset's own actions through the normalization and action tokenizer a policy uses.

Whatever a policy learns, it can emit no more than what survives this trip: a clipped or coarse
dimension is a cap no training removes. For data from ``vla data generate`` the round-tripped
actions are also replayed in closed loop, next to the exact recorded ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.action_codec import ActionCodec
from vla.action_tokenizers import ActionTokenizer
from vla.data.lerobot import LeRobotDataset
from vla.embodiment import Embodiment


def action_report(emb: Embodiment, tokenizer: ActionTokenizer, data: LeRobotDataset, episodes: list[int],
                  max_error: float = 0.01) -> dict[str, Any]:
    """Per dimension: share of frames clipped, mean/max round-trip error (physical units) and the share
    of frames whose error exceeds ``max_error`` of the dimension's data range."""
    codec = ActionCodec(emb, tokenizer)
    originals, trips, clips = [], [], []
    for i in episodes:
        a = data.episode(i).actions.astype(np.float64)
        rt, clipped = codec.round_trip(a)
        originals.append(a)
        trips.append(rt)
        clips.append(clipped)
    a, rt, clipped = (np.concatenate(x) for x in (originals, trips, clips))
    err = np.abs(rt - a)
    span = np.maximum(a.max(0) - a.min(0), 1e-12)
    over = err > max_error * span
    dims = [{"name": name, "min": float(a[:, j].min()), "max": float(a[:, j].max()),
             "clipped_share": float(clipped[:, j].mean()), "mean_error": float(err[:, j].mean()),
             "max_error": float(err[:, j].max()), "over_share": float(over[:, j].mean())}
            for j, name in enumerate(emb.action_names)]
    return {"embodiment": emb.name, "normalization": emb.normalization, "snap_zero": emb.snap_zero,
            "tokenizer": tokenizer.config(), "episodes": len(episodes), "frames": int(len(a)),
            "max_error_of_range": max_error, "dims": dims,
            "frames_over_share": float(over.any(1).mean()), "frames_clipped_share": float(clipped.any(1).mean())}


def replay_report(emb: Embodiment, tokenizer: ActionTokenizer, data: LeRobotDataset, episodes: list[int],
                  progress: bool = True, hold_steps: int = 48) -> dict[str, Any]:
    """Closed loop in the simulator that generated ``data``: each episode's recorded actions, exact and
    round-tripped, from the same seed, and how far the round trip strays from the exact replay.

    Where the data commands the arm to hold still (every signed dimension exactly 0), also hold that
    command for ``hold_steps`` from each seed, exact and round-tripped, and measure the drift.
    """
    from vla.sim import make_env

    prov = data.provenance
    seeds = prov["episodes"]["written_task_seed"]
    hold = _hold_command(emb, data, episodes)
    codec = ActionCodec(emb, tokenizer)
    hold_trip = None if hold is None else codec.round_trip(np.repeat(hold[None], emb.chunk_size, 0))[0][0]
    rows, envs = [], {}
    bar = _bar(len(episodes), "replay", progress)
    try:
        for i in episodes:
            task, seed = seeds[i]
            if task not in envs:
                envs[task] = make_env(prov["env"], task, cameras=prov.get("cameras"), image_size=tuple(prov["image_size"]))
            env = envs[task]
            recorded = data.episode(i).actions.astype(np.float64)
            exact = _replay(env, seed, recorded)
            tripped = _replay(env, seed, codec.round_trip(recorded)[0])
            row = {"episode": i, "task": task, "seed": int(seed), "exact_success": exact[0],
                   "round_trip_success": tripped[0], "max_deviation": _deviation(exact[1], tripped[1])}
            if hold is not None:
                row["hold_drift_exact"] = _drift(env, seed, hold, hold, hold_steps)
                row["hold_drift_round_trip"] = _drift(env, seed, hold, hold_trip, hold_steps)
            rows.append(row)
            bar.update(1)
    finally:
        bar.close()
        for env in envs.values():
            env.close()
    out = {"env": prov["env"], "episodes": rows, "probe": _probe_name(next(iter(envs.values()), None)),
           "exact_successes": sum(r["exact_success"] for r in rows),
           "round_trip_successes": sum(r["round_trip_success"] for r in rows),
           "max_deviation": float(max((r["max_deviation"] for r in rows), default=0.0)),
           "hold_command": None if hold is None else hold.tolist(), "hold_steps": hold_steps,
           "hold_command_round_trip": None if hold_trip is None else hold_trip.tolist()}
    for key in ("hold_drift_exact", "hold_drift_round_trip"):
        out[key] = float(np.mean([r[key] for r in rows])) if hold is not None and rows else None
    return out


def _hold_command(emb: Embodiment, data: LeRobotDataset, episodes: list[int]) -> np.ndarray | None:
    """The first recorded action whose signed dims (deltas; a gripper in [0, 1] is not one) are all 0."""
    signed = emb.action_stats.min < 0
    if not signed.any():
        return None
    for i in episodes:
        a = data.episode(i).actions.astype(np.float64)
        still = np.flatnonzero(np.all(a[:, signed] == 0, axis=1))
        if len(still):
            return a[still[0]]
    return None


def _replay(env, seed: int, actions: np.ndarray) -> tuple[bool, np.ndarray]:
    """Execute ``actions`` open loop from ``seed``: success and the probe's path."""
    env.reset(seed=seed, render=False)
    path = [_probe(env)]
    for a in actions:
        env.step(a, render=False)
        path.append(_probe(env))
        if env.done:
            break
    return bool(env.success), np.stack(path)


def _drift(env, seed: int, still: np.ndarray, command: np.ndarray, steps: int) -> float:
    """How far the probe moves while ``command`` is held for ``steps``, after the exact ``still``
    command has let the arm come to rest from the reset state for as long."""
    env.reset(seed=seed, render=False)
    for _ in range(steps):
        env.step(still, render=False)
    start = _probe(env)
    for _ in range(steps):
        env.step(command, render=False)
        if env.done:
            break
    return float(np.linalg.norm(_probe(env) - start))


def _probe(env) -> np.ndarray:
    # the point the actions move, where the env names one (SO-101: the grasp point in metres)
    return np.asarray(env.grasp_point if hasattr(type(env), "grasp_point") else env.state(), dtype=np.float64)


def _probe_name(env) -> str:
    return "grasp point (m)" if hasattr(type(env), "grasp_point") else "state"  # the class: no getter on a closed env


def _deviation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.linalg.norm(a[:n] - b[:n], axis=-1).max()) if n else 0.0


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
