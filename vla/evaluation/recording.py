"""Episode videos: the cameras the policy saw, side by side, as MP4 (PyAV, H.264) or GIF (Pillow)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError

FORMATS = ("mp4", "gif")
GIF_MAX_FPS = 25.0  # browsers clamp faster GIFs; we drop frames instead


def compose_frame(images: Mapping[str, np.ndarray], min_height: int = 128) -> np.ndarray:
    """Cameras side by side (sorted by key), upscaled by an integer factor (nearest) to >= ``min_height``."""
    if not images:
        raise ConfigError("no camera images to record")
    frames = [np.asarray(images[k]) for k in sorted(images)]
    h = max(f.shape[0] for f in frames)
    padded = [np.pad(f, ((0, h - f.shape[0]), (0, 0), (0, 0))) for f in frames]
    out = np.concatenate(padded, axis=1)
    scale = max(1, math.ceil(min_height / h))
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    # H.264 with yuv420p needs even sizes
    return np.ascontiguousarray(out[: out.shape[0] // 2 * 2, : out.shape[1] // 2 * 2])


def write_episode_video(path: str | Path, frames: Sequence[np.ndarray], fps: float, fmt: str = "mp4") -> Path:
    """Write (T, H, W, 3) uint8 frames; returns the file path (suffix set from ``fmt``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown video format {fmt!r}; choose one of {FORMATS}")
    if not len(frames):
        raise ConfigError("an episode video needs at least one frame")
    path = Path(path).with_suffix("." + fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        from ..data.video import encode_video

        return encode_video(path, np.stack(frames), fps=fps, codec="h264", gop=30)
    from PIL import Image

    step = max(1, math.ceil(fps / GIF_MAX_FPS))
    picked = [Image.fromarray(f) for f in frames[::step]]
    if (len(frames) - 1) % step:
        picked.append(Image.fromarray(frames[-1]))  # always show the final state
    picked[0].save(path, save_all=True, append_images=picked[1:], duration=max(20, round(1000 * step / fps)), loop=0)
    return path
