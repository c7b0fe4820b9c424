"""Small synthetic datasets for tests, benchmarks and examples (deterministic for a seed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .lerobot_writer import LeRobotWriter


def smooth_frames(T: int, H: int, W: int, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of drifting colour waves: smooth enough to survive lossy
    video coding with a small error, and different enough per frame to catch misaligned decodes."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    ph = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    out = np.empty((T, H, W, 3), np.uint8)
    for t in range(T):
        r = 128 + 100 * np.sin(2 * np.pi * (x + 3 * t) / W + ph[0])
        g = 128 + 100 * np.cos(2 * np.pi * (y - 2 * t) / H + ph[1])
        b = 128 + 60 * np.sin(4 * np.pi * (x + y + 4 * t) / (H + W) + ph[2])
        out[t] = np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)
    return out


def write_synthetic(
    root: str | Path,
    *,
    episodes: int = 3,
    lengths: list[int] | None = None,
    action_dim: int = 3,
    state_dim: int = 2,
    cameras: dict[str, tuple[int, int]] | None = None,
    fps: float = 10,
    version: str = "v3.0",
    codec: str = "h264",
    tasks: list[str] | None = None,
    seed: int = 0,
    robot_type: str = "synthetic",
    **writer_kwargs,
) -> tuple[Path, list[dict]]:
    """Write a small LeRobot dataset; returns its path and the episodes written
    (dicts with actions, states, images, task) for comparisons."""
    rng = np.random.default_rng(seed)
    cameras = {"observation.images.top": (32, 48)} if cameras is None else cameras
    lengths = lengths or [6 + 2 * (i % 3) for i in range(episodes)]
    tasks = tasks or ["pick up the cube", "open the drawer"]
    written = []
    with LeRobotWriter(
        root, fps=fps, robot_type=robot_type, action_names=[f"a{i}" for i in range(action_dim)],
        state_names=[f"s{i}" for i in range(state_dim)], cameras=cameras, version=version, codec=codec,
        **writer_kwargs,
    ) as w:
        for e, T in enumerate(lengths):
            # A random walk: consecutive actions are correlated like real control signals.
            actions = np.cumsum(rng.normal(0, 0.1, (T, action_dim)), 0).astype(np.float32)
            states = np.cumsum(rng.normal(0, 0.1, (T, state_dim)), 0).astype(np.float32) if state_dim else None
            images = {k: smooth_frames(T, h, w, seed=seed * 1000 + e * 10 + j) for j, (k, (h, w)) in enumerate(cameras.items())}
            task = tasks[e % len(tasks)]
            w.add_episode(actions, states, images, task)
            written.append({"actions": actions, "states": states, "images": images, "task": task})
    return Path(root), written
