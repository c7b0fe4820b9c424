"""MCAP (ROS 2 bag) recordings: find, inspect, map and convert them to LeRobot datasets."""

from __future__ import annotations

import importlib
from typing import Any

# Lazy, as in vla.data: inspecting a recording or decoding ROS messages does not load the LeRobot
# writer (pyarrow, PyAV) that only conversion needs.
_EXPORTS = {
    "McapMapping": "mapping",
    "CameraSpec": "mapping",
    "VectorSpec": "mapping",
    "McapFile": "source",
    "Recording": "source",
    "TruncatedRecording": "source",
    "find_recordings": "source",
    "EpisodeReader": "episodes",
    "inspect_mcap": "inspect",
    "format_inspection": "inspect",
    "starter_mapping": "inspect",
    "convert_mcap": "convert",
    "McapReport": "convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
