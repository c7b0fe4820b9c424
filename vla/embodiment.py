"""Embodiments: one robot's action space, cameras, control rate and statistics."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .errors import ConfigError, InvalidInputError, MissingStatisticsError

NORMALIZATION_MODES = ("auto", "quantile", "meanstd", "minmax")
# "auto": a tail beyond q01/q99 longer than this share of the q01-q99 range is outliers (clip them);
# a shorter one is part of the motion (covering both sides costs at most half the bin resolution)
OUTLIER_TAIL = 0.5
STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")


def check_keys(d: dict, allowed: Iterable[str], what: str) -> None:
    """Raise a ConfigError for unknown keys, with a "did you mean" hint."""
    allowed = list(allowed)
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {key!r} in {what}.{hint} Allowed keys: {allowed}")


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
    # it as the mean displacement so far, see ``encode_chunk``
    displacement: list[bool] | None = None
    action_stats: Stats | None = None
    state_stats: Stats | None = None
    image_size: tuple[int, int] | None = None  # (height, width) the data was recorded at
    description: str = ""
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
    def action_normalizer(self) -> Normalizer:
        mask = None if self.unnormalized is None else ~np.asarray(self.unnormalized, bool)
        return Normalizer(self.normalization, self.action_stats, mask, what=f"the actions of embodiment {self.name!r}")

    def encode_chunk(self, actions: np.ndarray) -> np.ndarray:
        """Physical (H, D) chunk -> the normalized values the action tokenizer cuts into tokens.

        Displacement dims hold the mean of the first t increments (the displacement after t steps
        over t) instead of the t-th increment: the chunk then says where the target goes, a smooth
        function of the scene, rather than the jitter of a feedback controller's per-step commands
        (Diffusion Policy and UMI report position-like chunks beating per-step deltas). The mean
        keeps the per-step statistics valid, so the same normalizer applies.
        """
        return self.action_normalizer.normalize(self.chunk_targets(actions))

    def chunk_targets(self, actions: np.ndarray) -> np.ndarray:
        """The physical values a chunk (H, D) encodes: the actions, displacement dims as mean displacement."""
        x = np.array(actions, dtype=np.float64)
        if self.displacement is not None:
            m = self._displacement_mask(x)
            x[..., m] = np.cumsum(x[..., m], -2) / self._steps(x)
        return x

    def decode_chunk(self, normalized: np.ndarray, zero_band: float = 0.0) -> np.ndarray:
        """The inverse of ``encode_chunk``: normalized (H, D) values -> physical per-step actions.

        ``zero_band``: half-width of the action tokenizer's decode cell (its ``zero_band``); with
        ``snap_zero``, a value within it of a dimension's physical zero decodes to exactly 0.
        """
        norm = self.action_normalizer
        y = np.asarray(normalized, dtype=np.float64)
        x = norm.unnormalize(y)
        if self.snap_zero and zero_band > 0:
            zero = np.zeros(self.action_dim)  # only where the normalizer covers 0 (clipping would move it)
            x = np.where((np.abs(y - norm.normalize(zero)) <= zero_band) & ~norm.clipped(zero), 0.0, x)
        if self.displacement is not None:
            m = self._displacement_mask(x)
            x[..., m] = np.diff(x[..., m] * self._steps(x), axis=-2, prepend=0.0)
        return x

    def _displacement_mask(self, x: np.ndarray) -> np.ndarray:
        if x.ndim < 2:
            raise InvalidInputError(f"embodiment {self.name!r} encodes displacement over a chunk: expected "
                                    f"(H, {self.action_dim}) actions, got shape {x.shape}")
        return np.asarray(self.displacement, bool)

    @staticmethod
    def _steps(x: np.ndarray) -> np.ndarray:
        return np.arange(1, x.shape[-2] + 1)[:, None]

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
