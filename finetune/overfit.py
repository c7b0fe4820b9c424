"""Memorize and replay: fine-tune a throwaway copy on one episode, then drive that episode with it.

If a copy that has memorized an episode (token accuracy >= 0.99) replays it, the path from frames
to tokens to actions to the robot is consistent, and a policy that fails needs more training or
data. If it cannot, the pipeline drops something. Simulated data replays in closed loop from the
episode's seed; recorded data is compared open loop, chunk by chunk, on its own frames.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vla.data.lerobot import LeRobotDataset
from vla.errors import VLAError

from .config import SECTIONS, DatasetSpec, FinetuneConfig

MEMORIZED = 0.99


def memorize_and_replay(model: str | None, data: LeRobotDataset, embodiment: str, episode: int, *, steps: int = 300,
                        tolerance: float = 0.05, progress: bool = True, work_dir: str | None = None) -> dict[str, Any]:
    """Train on ``episode`` of ``data`` from ``model`` (or the default base) and replay it.

    ``tolerance``: a step diverges when an action is off by more than this share of its dimension's
    range in the episode.
    """
    from . import run
    from vla.policy import VLAPolicy

    with tempfile.TemporaryDirectory(prefix="vla-doctor-overfit-", dir=work_dir) as tmp:
        one = _one_episode(data, episode, Path(tmp) / "episode")
        base = _mergeable(model, Path(tmp) / "base") if model else None
        cfg = _config(model, base, one, embodiment, steps, Path(tmp) / "run", progress)
        outcome = run(cfg)
        if outcome.code != 0:
            raise VLAError(f"the memorization run failed ({outcome.message or f'exit code {outcome.code}'})")
        accuracy = _last_token_accuracy(Path(tmp) / "run" / "metrics.jsonl")
        policy = VLAPolicy.from_pretrained(Path(tmp) / "run")
        recorded = data.episode(episode)
        if "written_task_seed" in data.provenance.get("episodes", {}):
            replay = _closed_loop(policy, embodiment, data, episode, recorded.actions, recorded.task, tolerance)
        else:
            replay = _open_loop(policy, embodiment, data, episode, recorded.actions, recorded.task, tolerance)
    memorized = accuracy is not None and accuracy >= MEMORIZED
    return {"episode": episode, "steps": steps, "token_accuracy": accuracy, "memorized": memorized,
            "tolerance": tolerance, **replay, "passed": memorized and replay["replayed"]}


def _one_episode(data: LeRobotDataset, episode: int, out: Path) -> Path:
    prov = data.provenance
    seeds = prov.get("episodes", {}).get("written_task_seed")
    if seeds:  # the simulator writes the identical episode again from its seed
        from vla.sim.generate import generate_dataset

        task, seed = seeds[episode]
        generate_dataset(prov["env"], [task], 1, int(seed), tuple(prov["image_size"]), out, prov.get("cameras"),
                         lossless=bool(prov.get("lossless_video")), progress=False)
    else:
        from vla.data.formats import convert

        convert(data.root, out, episodes=[episode], progress=False)
    return out


def _mergeable(model: str, out: Path) -> str:
    """Fine-tuning continues from a merged checkpoint: merge an adapter run into a throwaway copy."""
    if not (Path(model) / "adapter_config.json").is_file():
        return model
    from .export import export_merged

    return str(export_merged(model, out))


def _config(model: str | None, base: str | None, path: Path, embodiment: str, steps: int, out: Path,
            progress: bool) -> FinetuneConfig:
    """Continue from the checkpoint (its statistics, tokenizer and decoding) on one episode, with its LoRA recipe."""
    cfg = FinetuneConfig(base=base or "default", out=str(out))
    if model:
        saved = json.loads((Path(model) / "vla_config.json").read_text())
        kind = json.loads((Path(model) / "action_tokenizer.json").read_text())["kind"]
        cfg.model = dataclasses.replace(cfg.model, action_tokenizer=kind, decoding=saved["decoding"])
        recipe = (saved.get("training") or {}).get("config") or {}
        if "lora" in recipe:
            cfg.lora = SECTIONS["lora"](**recipe["lora"])
    cfg.datasets = {embodiment: DatasetSpec(path=str(path))}
    cfg.train = dataclasses.replace(cfg.train, steps=steps, lr=3e-4, schedule="cosine", warmup_steps=max(1, steps // 20))
    cfg.data = dataclasses.replace(cfg.data, val_fraction=0.0)
    cfg.eval = dataclasses.replace(cfg.eval, every=0, trace_episodes=0)
    cfg.checkpoint = dataclasses.replace(cfg.checkpoint, every=0)
    cfg.log = dataclasses.replace(cfg.log, every=10, progress=progress)
    return cfg


def _last_token_accuracy(metrics: Path) -> float | None:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    values = [r["token_accuracy"] for r in rows if "token_accuracy" in r]
    return float(values[-1]) if values else None


def _first_divergence(executed: np.ndarray, recorded: np.ndarray, tolerance: float) -> tuple[int | None, float]:
    n = min(len(executed), len(recorded))
    span = np.maximum(recorded.max(0) - recorded.min(0), 1e-6)
    off = np.abs(executed[:n] - recorded[:n]) / span
    bad = np.flatnonzero(off.max(1) > tolerance)
    return (int(bad[0]) if len(bad) else None), float(off.max()) if n else 0.0


def _closed_loop(policy, embodiment: str, data: LeRobotDataset, episode: int, recorded: np.ndarray, instruction: str,
                 tolerance: float) -> dict[str, Any]:
    from vla.sim import make_env

    prov = data.provenance
    task, seed = prov["episodes"]["written_task_seed"][episode]
    emb = policy.embodiment(embodiment)
    executed = []
    with make_env(prov["env"], task, cameras=prov.get("cameras"), image_size=tuple(prov["image_size"])) as env:
        obs = env.reset(seed=int(seed))
        while not env.done and len(executed) < 2 * len(recorded):
            state = obs["state"] if policy.config.use_state else None
            for a in policy.predict(obs["images"], instruction, emb.name, state=state).actions:
                obs, _, done = env.step(a, render=False)
                executed.append(a)
                if done:
                    break
            obs = env.observation()
        success = bool(env.success)
    step, worst = _first_divergence(np.asarray(executed), recorded, tolerance)
    return {"mode": "closed loop", "seed": int(seed), "success": success, "replayed": success,
            "first_divergence_step": step, "max_deviation_of_range": worst, "steps_executed": len(executed)}


def _open_loop(policy, embodiment: str, data: LeRobotDataset, episode: int, recorded: np.ndarray, instruction: str,
               tolerance: float) -> dict[str, Any]:
    emb = policy.embodiment(embodiment)
    predicted = []
    for t in range(0, len(recorded), emb.chunk_size):
        images = {cam: data.frame(episode, t, cam) for cam in emb.cameras}
        predicted.extend(policy.predict(images, instruction, emb.name).actions)
    step, worst = _first_divergence(np.asarray(predicted), recorded, tolerance)
    return {"mode": "open loop", "replayed": step is None, "first_divergence_step": step,
            "max_deviation_of_range": worst, "steps_executed": len(recorded)}
