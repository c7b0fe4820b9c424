"""LeRobot datasets: the reader (v2.0/v2.1, v3.0) and the writer (v3.0, v2.1)."""

from __future__ import annotations

from .reader import ACTION, STATE, Episode, LeRobotDataset
from .writer import LeRobotWriter

__all__ = ["ACTION", "STATE", "Episode", "LeRobotDataset", "LeRobotWriter"]
