"""Small synthetic datasets for tests, benchmarks and examples (deterministic for a seed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .lerobot import LeRobotWriter


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


def smooth_chunks(n: int, h: int, d: int, seed: int | np.random.Generator = 0, noise: float = 0.01) -> np.ndarray:
    """(n, h, d) action chunks in [-1, 1]: random sums of 3 low-frequency sinusoids per dim
    (<= 1.5 cycles per chunk) plus ``noise``. ``seed`` may be a Generator, which is advanced."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, h)[None, :, None]
    x = np.zeros((n, h, d))
    for _ in range(3):
        amp = rng.normal(0, 0.3, (n, 1, d))
        freq = rng.uniform(0.1, 1.5, (n, 1, d))
        phase = rng.uniform(0, 2 * np.pi, (n, 1, d))
        x += amp * np.sin(2 * np.pi * freq * t + phase)
    return np.clip(x + rng.normal(0, noise, x.shape), -1.0, 1.0)


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


def write_rlds(
    path: str | Path,
    *,
    episodes: int = 2,
    lengths: list[int] | None = None,
    image_size: tuple[int, int] = (32, 48),
    seed: int = 0,
    instructions: list[str] | None = None,
) -> tuple[Path, list[dict]]:
    """Write RLDS-style TFRecord episodes in the layout of OXE's fractal20220817_data (RT-1):
    JPEG images under steps/observation/image, action/world_vector + rotation_delta +
    gripper_closedness_action, the instruction repeated per step. Returns the file and the
    episodes written (actions/states/images/task) for comparisons."""
    import io

    from PIL import Image
    from tfrecord.writer import TFRecordWriter

    rng = np.random.default_rng(seed)
    lengths = lengths or [5 + i for i in range(episodes)]
    instructions = instructions or ["pick coke can", "move the sponge near the apple"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    w = TFRecordWriter(str(path))
    for e, T in enumerate(lengths):
        frames = smooth_frames(T, *image_size, seed=seed * 100 + e)
        jpegs = []
        for fr in frames:
            buf = io.BytesIO()
            Image.fromarray(fr).save(buf, format="JPEG", quality=95)
            jpegs.append(buf.getvalue())
        wv, rd = rng.normal(0, 0.05, (T, 3)), rng.normal(0, 0.1, (T, 3))
        grip = rng.choice([-1.0, 0.0, 1.0], (T, 1))
        pose, closed = rng.normal(0, 0.3, (T, 7)), rng.integers(0, 2, (T, 1)).astype(float)
        task = instructions[e % len(instructions)]
        w.write({
            "steps/observation/image": (jpegs, "byte"),
            "steps/observation/natural_language_instruction": ([task.encode()] * T, "byte"),
            "steps/observation/base_pose_tool_reached": (pose.reshape(-1).tolist(), "float"),
            "steps/observation/gripper_closed": (closed.reshape(-1).tolist(), "float"),
            "steps/action/world_vector": (wv.reshape(-1).tolist(), "float"),
            "steps/action/rotation_delta": (rd.reshape(-1).tolist(), "float"),
            "steps/action/gripper_closedness_action": (grip.reshape(-1).tolist(), "float"),
            "steps/action/terminate_episode": ([0, 1, 0] * T, "int"),
            "steps/is_first": ([1] + [0] * (T - 1), "int"),
            "steps/is_last": ([0] * (T - 1) + [1], "int"),
            "steps/is_terminal": ([0] * (T - 1) + [1], "int"),
            "steps/reward": ([0.0] * (T - 1) + [1.0], "float"),
        })
        written.append({
            "actions": np.concatenate([wv, rd, grip], 1).astype(np.float32),
            "states": np.concatenate([pose, closed], 1).astype(np.float32),
            "images": {"observation.images.image": frames},
            "task": task,
        })
    w.close()
    return path, written
