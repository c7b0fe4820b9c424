"""Plain data types shared by the policy, the server and the client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

# An image is a PIL image, a uint8 (H, W, 3) array, or encoded PNG/JPEG bytes.
Image = Union["PIL.Image.Image", np.ndarray, bytes]  # noqa: F821


@dataclass
class PredictRequest:
    """One observation: images (in camera order, or keyed by camera), instruction, embodiment."""

    images: list[Image] | dict[str, Image]
    instruction: str
    embodiment: str
    state: np.ndarray | None = None


@dataclass
class ActionChunk:
    """The next H actions in physical units, with what a controller needs to execute them."""

    actions: np.ndarray  # (H, D) float
    embodiment: str
    action_names: list[str]
    control_hz: float
    uncertainty: float  # mean entropy (nats) of the action-token distributions
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "actions": np.asarray(self.actions).tolist(),
            "embodiment": self.embodiment,
            "action_names": list(self.action_names),
            "control_hz": float(self.control_hz),
            "uncertainty": float(self.uncertainty),
            "timings": dict(self.timings),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ActionChunk":
        return cls(
            actions=np.asarray(d["actions"], dtype=np.float64),
            embodiment=d["embodiment"],
            action_names=list(d["action_names"]),
            control_hz=float(d["control_hz"]),
            uncertainty=float(d["uncertainty"]),
            timings=dict(d.get("timings", {})),
        )
