"""Robot datasets: LeRobot v2.1/v3.0 read+write, RLDS (TFRecord) read, conversion,
streaming statistics, training samples (action chunks), mixtures and augmentation.

Imports are lazy so that ``import vla.data`` stays cheap (torch is only loaded by
``samples``/``mixture``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LeRobotDataset": "lerobot",
    "Episode": "lerobot",
    "LeRobotWriter": "lerobot",
    "RLDSDataset": "rlds",
    "RLDSMapping": "rlds",
    "RunningStats": "stats",
    "compute_stats": "stats",
    "convert": "formats",
    "detect_format": "formats",
    "ChunkDataset": "samples",
    "embodiment_from_dataset": "samples",
    "split_episodes": "samples",
    "Mixture": "mixture",
    "MixtureSampler": "mixture",
    "MixtureIterable": "mixture",
    "parse_weights": "mixture",
    "Augment": "augment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
