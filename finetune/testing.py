"""Tiny, learnable LeRobot datasets and fast run arguments for tests and examples (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla.data.lerobot import LeRobotWriter
from vla.data.synthetic import smooth_frames


def learnable_actions(T: int, dim: int, phase: int = 0) -> np.ndarray:
    """Actions that depend only on the time step (which the frames show): a model can learn them."""
    t = np.arange(T)[:, None] + phase
    levels = np.array([-0.8, -0.3, 0.3, 0.8])
    return levels[(t // 2 + np.arange(dim)[None, :]) % 4].astype(np.float32) * (1 + 0.5 * np.arange(dim))[None, :]


def write_tiny_dataset(root: str | Path, *, episodes: int, length: int, action_dim: int, cameras: list[str],
                       robot_type: str, license: str = "apache-2.0", state_dim: int = 0, size: int = 32,
                       tasks: tuple[str, ...] = ("pick up the cube",), lengths: list[int] | None = None) -> Path:
    """A LeRobot v3.0 dataset written with LeRobotWriter: frame t looks alike in every episode, and the
    action at t is a fixed function of t."""
    lengths = lengths or [length] * episodes
    with LeRobotWriter(root, fps=10, robot_type=robot_type, action_names=[f"{robot_type}_a{i}" for i in range(action_dim)],
                       state_names=[f"s{i}" for i in range(state_dim)],
                       cameras={f"observation.images.{c}": (size, size) for c in cameras}, license=license,
                       provenance={"generator": "vla.finetune.testing.write_tiny_dataset", "robot": robot_type}) as w:
        for e, T in enumerate(lengths):
            actions = learnable_actions(T, action_dim)
            states = np.cumsum(np.full((T, state_dim), 0.1, np.float32), 0) if state_dim else None
            images = {f"observation.images.{c}": smooth_frames(T, size, size, seed=j) for j, c in enumerate(cameras)}
            w.add_episode(actions, states, images, tasks[e % len(tasks)])
    return Path(root)


def write_tiny_mixture(root: str | Path) -> dict[str, Path]:
    """Two robots: 'arm' (3-D actions, one camera, Apache-2.0) and 'biarm' (5-D, two cameras, CC BY-NC)."""
    root = Path(root)
    return {
        "arm": write_tiny_dataset(root / "arm", episodes=4, length=12, action_dim=3, cameras=["top"],
                                  robot_type="arm", state_dim=2),
        "biarm": write_tiny_dataset(root / "biarm", episodes=3, length=10, action_dim=5, cameras=["top", "wrist"],
                                    robot_type="biarm", license="cc-by-nc-4.0", tasks=("hand the cube over",)),
    }


def tiny_run_args(base: str | Path, data: dict[str, Path], out: str | Path, **overrides) -> list[str]:
    """Command-line arguments of a fast run on a tiny model (override any key: train__steps=5 -> --train.steps 5)."""
    args = ["--base", str(base), "--out", str(out)]
    for name, path in data.items():
        args += ["--data", f"{name}={path}"]
    opts = {"model.chunk_size": 4, "model.bins": 16, "train.batch_size": 4, "train.steps": 30,
            "train.lr": 5e-3, "train.warmup_steps": 2, "train.schedule": "constant", "lora.r": 8,
            "eval.every": 0, "eval.max_samples": 8, "eval.trace_steps": 12, "checkpoint.every": 0,
            "log.every": 1, "log.progress": "false", "data.val_fraction": 0.25}
    opts.update({k.replace("__", "."): v for k, v in overrides.items()})
    for k, v in opts.items():
        args += [f"--{k}", str(v)]
    return args
