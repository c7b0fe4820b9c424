"""Embodiments: one robot's action space, cameras, control rate and statistics (the robot spec).

How its actions become tokens lives in :mod:`vla.action_codec`; statistics and normalization in
:mod:`vla.normalize`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError, check_keys
from .normalize import NORMALIZATION_MODES, Normalizer, Stats


@dataclass
class Embodiment:
    """A robot: its action space, cameras, control rate, chunk size and statistics."""

    name: str
    action_names: list[str]
    control_hz: float
    chunk_size: int
    cameras: list[str]
    state_names: list[str] = field(default_factory=list)
    normalization: str = "auto"
    unnormalized: list[bool] | None = None  # True = leave this action dim as is
    # True = a per-step increment of a position target (Δx of a mocap or IK target): a chunk encodes
    # it as the mean displacement so far, see ``vla.action_codec.ActionCodec.targets``
    displacement: list[bool] | None = None
    action_stats: Stats | None = None
    state_stats: Stats | None = None
    image_size: tuple[int, int] | None = None  # (height, width) the data was recorded at
    description: str = ""
    robot_type: str = ""  # LeRobot's robot_type (the hardware), where it differs from the name
    # the command range the robot accepts (a simulator clips to it); None: unbounded
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    # decode the token cell that holds physical 0 to exactly 0: a bin centre never is, and a robot
    # that holds still only on a zero command drifts otherwise (False in checkpoints made before)
    snap_zero: bool = True

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("an embodiment needs a non-empty name")
        if not self.action_names:
            raise ConfigError(f"embodiment {self.name!r} needs at least one action dimension")
        if not self.cameras:
            raise ConfigError(f"embodiment {self.name!r} needs at least one camera key")
        if self.chunk_size < 1:
            raise ConfigError(f"embodiment {self.name!r}: chunk_size must be >= 1, got {self.chunk_size}")
        if self.control_hz <= 0:
            raise ConfigError(f"embodiment {self.name!r}: control_hz must be > 0, got {self.control_hz}")
        if self.normalization not in NORMALIZATION_MODES:
            raise ConfigError(
                f"embodiment {self.name!r}: unknown normalization {self.normalization!r}; choose one of {NORMALIZATION_MODES}"
            )
        if self.unnormalized is not None and len(self.unnormalized) != self.action_dim:
            raise ConfigError(
                f"embodiment {self.name!r}: 'unnormalized' has {len(self.unnormalized)} entries for {self.action_dim} action dims"
            )
        if self.displacement is not None and len(self.displacement) != self.action_dim:
            raise ConfigError(
                f"embodiment {self.name!r}: 'displacement' has {len(self.displacement)} entries for {self.action_dim} action dims"
            )
        for key in ("action_low", "action_high"):
            bound = getattr(self, key)
            if bound is not None and len(bound) != self.action_dim:
                raise ConfigError(f"embodiment {self.name!r}: {key!r} has {len(bound)} entries for {self.action_dim} action dims")
        if isinstance(self.action_stats, dict):
            self.action_stats = Stats.from_dict(self.action_stats)
        if isinstance(self.state_stats, dict):
            self.state_stats = Stats.from_dict(self.state_stats)
        if self.action_stats is not None and self.action_stats.dim != self.action_dim:
            raise ConfigError(
                f"embodiment {self.name!r}: action statistics have {self.action_stats.dim} dims, actions have {self.action_dim}"
            )
        if self.state_stats is not None and self.state_stats.dim != self.state_dim:
            raise ConfigError(
                f"embodiment {self.name!r}: state statistics have {self.state_stats.dim} dims, state has {self.state_dim}"
            )
        if self.image_size is not None:
            self.image_size = tuple(int(v) for v in self.image_size)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def camera_shapes(self) -> dict[str, tuple[int, int] | None]:
        """Camera key -> (height, width) the data was recorded at (None where unknown)."""
        return {key: self.image_size for key in self.cameras}

    @property
    def action_normalizer(self) -> Normalizer:
        mask = None if self.unnormalized is None else ~np.asarray(self.unnormalized, bool)
        return Normalizer(self.normalization, self.action_stats, mask, what=f"the actions of embodiment {self.name!r}")

    @property
    def state_normalizer(self) -> Normalizer:
        return Normalizer(self.normalization, self.state_stats, what=f"the state of embodiment {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["action_stats"] = self.action_stats.to_dict() if self.action_stats else None
        d["state_stats"] = self.state_stats.to_dict() if self.state_stats else None
        d["image_size"] = list(self.image_size) if self.image_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Embodiment":
        check_keys(d, [f.name for f in dataclasses.fields(cls)], f"embodiment {d.get('name', '?')!r}")
        # saved before these fields existed: keep decoding as it was trained
        return cls(**{"snap_zero": False, **d})
