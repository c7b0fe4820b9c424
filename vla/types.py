"""Plain data types shared by the policy, the server and the client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .errors import InvalidInputError

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


def state_array(state: Any) -> np.ndarray:
    """A flat float64 state vector; strings, booleans, overflowing and non-finite numbers are refused."""
    values = np.asarray(state, dtype=object).reshape(-1) if not isinstance(state, np.ndarray) else state.reshape(-1)
    if values.dtype == object and not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                                          for v in values):
        raise InvalidInputError("state must be a flat list of numbers (no strings, booleans or nulls)", code="invalid_state")
    if values.dtype != object and values.dtype.kind not in "iuf":
        raise InvalidInputError(f"state must hold numbers, got an array of {values.dtype}", code="invalid_state")
    try:
        arr = values.astype(np.float64)
    except (OverflowError, TypeError, ValueError):
        raise InvalidInputError("state holds a number too large for float64", code="invalid_state") from None
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("state contains NaN or inf", code="invalid_state")
    return arr
