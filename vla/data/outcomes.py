"""What RL data carries per frame and ours did too little of: reward, success, done, and where each label came from.

The columns follow LeRobot's names (``next.reward``, ``next.success``, ``next.done``): they describe the
transition that frame t's action starts. ``label_source`` says who chose frame t's action label:

- ``demonstration``: the expert drove the robot and labelled its own states (`vla data generate`);
- ``expert_relabel``: the policy drove the robot here and the expert labelled the state (DAgger);
- ``policy``: the policy's own action, kept because the episode succeeded (self-imitation);
- ``expert_continuation``: the policy drove the robot here; the label is the expert's own plan from the
  state where the policy's chunk began (DAgger with continuation labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DatasetError

REWARD, SUCCESS, DONE, LABEL_SOURCE = "next.reward", "next.success", "next.done", "label_source"
COLUMNS = (REWARD, SUCCESS, DONE, LABEL_SOURCE)
LABEL_SOURCES = ("demonstration", "expert_relabel", "policy", "expert_continuation")
# Where a reward can come from; datasets name theirs in provenance["reward_source"].
REWARD_SOURCES = ("simulator success detector", "expert", "human", "dataset")
FEATURES = {
    REWARD: {"dtype": "float32", "shape": [1], "names": None},
    SUCCESS: {"dtype": "bool", "shape": [1], "names": None},
    DONE: {"dtype": "bool", "shape": [1], "names": None},
    LABEL_SOURCE: {"dtype": "int64", "shape": [1], "names": list(LABEL_SOURCES)},
}


@dataclass
class Outcomes:
    """Per-frame reward, success, done and label source of one episode (all of length T)."""

    reward: np.ndarray  # (T,) float32
    success: np.ndarray  # (T,) bool: the task is solved after this frame's transition
    done: np.ndarray  # (T,) bool: the episode ends after this frame's transition
    label_source: np.ndarray  # (T,) int64 index into LABEL_SOURCES

    def __post_init__(self) -> None:
        self.reward = np.asarray(self.reward, np.float32).reshape(-1)
        self.success = np.asarray(self.success, bool).reshape(-1)
        self.done = np.asarray(self.done, bool).reshape(-1)
        self.label_source = np.asarray(self.label_source, np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def succeeded(self) -> bool:
        """Whether the episode reached success at any frame."""
        return bool(self.success.any())

    def check(self, length: int, where: str) -> None:
        """Raise a DatasetError unless every column has ``length`` finite, valid values."""
        for name, col in zip(COLUMNS, (self.reward, self.success, self.done, self.label_source)):
            if len(col) != length:
                raise DatasetError(f"{where}: {name} has {len(col)} values for {length} frames")
        if not np.all(np.isfinite(self.reward)):
            raise DatasetError(f"{where}: {REWARD} contains NaN/inf")
        bad = sorted(set(self.label_source.tolist()) - set(range(len(LABEL_SOURCES))))
        if bad:
            raise DatasetError(f"{where}: {LABEL_SOURCE} codes {bad} are not in {list(enumerate(LABEL_SOURCES))}")


def label_code(source: str) -> int:
    """The ``label_source`` code of a source name."""
    if source not in LABEL_SOURCES:
        raise DatasetError(f"unknown label source {source!r}; valid: {list(LABEL_SOURCES)}")
    return LABEL_SOURCES.index(source)


def sparse_outcomes(length: int, success: bool, label_source: str | np.ndarray) -> Outcomes:
    """Outcomes of an episode scored by a success detector: reward 1 on the frame that reaches success, else 0.

    An episode ends at its first success, so success (when reached) is on the last frame.
    """
    reward = np.zeros(length, np.float32)
    succ = np.zeros(length, bool)
    if success:
        reward[-1], succ[-1] = 1.0, True
    done = np.zeros(length, bool)
    done[-1] = True
    labels = np.full(length, label_code(label_source), np.int64) if isinstance(label_source, str) else label_source
    return Outcomes(reward, succ, done, labels)
