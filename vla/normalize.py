"""Normalization: per-dimension statistics of a feature and the map between physical units and [-1, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, InvalidInputError, MissingStatisticsError, check_keys

NORMALIZATION_MODES = ("auto", "quantile", "meanstd", "minmax")
# "auto": a tail beyond q01/q99 longer than this share of the q01-q99 range is outliers (clip them);
# a shorter one is part of the motion (covering both sides costs at most half the bin resolution)
OUTLIER_TAIL = 0.5
STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")



@dataclass
class Stats:
    """Per-dimension statistics of one array feature (actions or state)."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    count: int = 0

    def __post_init__(self) -> None:
        for k in STAT_KEYS:
            v = np.asarray(getattr(self, k), dtype=np.float64)
            if v.ndim != 1:
                raise ConfigError(f"statistic {k!r} must be a 1-D list, got shape {v.shape}")
            if not np.all(np.isfinite(v)):
                raise ConfigError(f"statistic {k!r} contains NaN or inf: {v.tolist()}")
            setattr(self, k, v)
        dims = {len(getattr(self, k)) for k in STAT_KEYS}
        if len(dims) != 1:
            raise ConfigError(f"statistics have inconsistent lengths: { {k: len(getattr(self, k)) for k in STAT_KEYS} }")

    @property
    def dim(self) -> int:
        return len(self.mean)

    @classmethod
    def from_array(cls, x: np.ndarray) -> "Stats":
        """Exact statistics of an (N, D) array (use a streaming accumulator for big data)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ConfigError(f"need a non-empty (N, D) array for statistics, got shape {x.shape}")
        return cls(
            mean=x.mean(0), std=x.std(0), min=x.min(0), max=x.max(0),
            q01=np.quantile(x, 0.01, axis=0), q99=np.quantile(x, 0.99, axis=0), count=len(x),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k).tolist() for k in STAT_KEYS}
        d["count"] = int(self.count)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Stats":
        check_keys(d, (*STAT_KEYS, "count"), "statistics")
        missing = [k for k in STAT_KEYS if k not in d]
        if missing:
            raise MissingStatisticsError(f"statistics lack {missing}; recompute them from the dataset")
        return cls(**{k: d[k] for k in STAT_KEYS}, count=int(d.get("count", 0)))


class Normalizer:
    """Maps physical values to roughly [-1, 1] and back, per dimension.

    quantile: q01/q99 -> [-1, 1] with clipping (OpenVLA, openpi); meanstd: z-score;
    minmax: min/max -> [-1, 1]; auto: per dimension and side, the data's min (max) unless the
    tail beyond q01 (q99) is longer than ``OUTLIER_TAIL`` of the q01-q99 range, then the
    quantile. Quantile clipping cuts real poses of absolute-position robots (ALOHA's joint
    targets by up to 0.4 rad); auto keeps them and still clips rare spikes. Dimensions with
    ``mask[i] == False`` pass through unchanged (e.g. a binary gripper already in [-1, 1]). The
    inverse is exact wherever no clipping happened.
    """

    def __init__(self, mode: str, stats: Stats | None, mask: np.ndarray | None = None, what: str = "actions"):
        if mode not in NORMALIZATION_MODES:
            raise ConfigError(f"unknown normalization mode {mode!r}; choose one of {NORMALIZATION_MODES}")
        if stats is None:
            raise MissingStatisticsError(
                f"no statistics for {what}: normalization {mode!r} needs them. Compute them from the "
                "training data (`vla data info` shows them; fine-tuning stores them in the checkpoint)."
            )
        self.mode, self.stats = mode, stats
        self.mask = np.ones(stats.dim, bool) if mask is None else np.asarray(mask, bool)
        if self.mask.shape != (stats.dim,):
            raise ConfigError(f"normalization mask has {self.mask.size} entries, {what} have {stats.dim} dims")
        if mode == "quantile":
            lo, hi = stats.q01, stats.q99
        elif mode == "auto":
            reach = OUTLIER_TAIL * (stats.q99 - stats.q01)
            lo = np.where(stats.q01 - stats.min <= reach, stats.min, stats.q01)
            hi = np.where(stats.max - stats.q99 <= reach, stats.max, stats.q99)
        elif mode == "minmax":
            lo, hi = stats.min, stats.max
        else:
            lo, hi = stats.mean - stats.std, stats.mean + stats.std
        # A constant dimension has zero range; keep it finite and map it to 0.
        self._center = (hi + lo) / 2
        self._half = np.maximum((hi - lo) / 2, 1e-8)
        self.clip = mode != "meanstd"

    def normalize(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape[-1] != self.stats.dim:
            raise InvalidInputError(f"expected {self.stats.dim} dims, got {x.shape[-1]}")
        y = (x - self._center) / self._half
        if self.clip:
            y = np.clip(y, -1.0, 1.0)
        return np.where(self.mask, y, x)

    def clipped(self, x: np.ndarray) -> np.ndarray:
        """True where ``normalize`` clips ``x``: the value lies outside the range this normalizer covers."""
        y = (np.asarray(x, dtype=np.float64) - self._center) / self._half
        return self.mask & self.clip & (np.abs(y) > 1.0)

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if y.shape[-1] != self.stats.dim:
            raise InvalidInputError(f"expected {self.stats.dim} dims, got {y.shape[-1]}")
        x = y * self._half + self._center
        return np.where(self.mask, x, y)
