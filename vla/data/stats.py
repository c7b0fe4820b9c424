"""Streaming statistics (mean/std/min/max and quantiles) in bounded memory.

Mean and variance use Chan et al.'s parallel update in float64 (exact up to
rounding). Quantiles are exact (numpy's linear interpolation) while at most
``exact_limit`` rows have been seen; beyond that the buffer turns into one
histogram per dimension whose range grows by doubling, so memory stays at
``bins`` counters per dimension; each order statistic is then placed within
one bin (at most 2 * (max - min) / bins wide) of its true value.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..normalize import Stats
from ..errors import DatasetError

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


class RunningStats:
    """Accumulates per-dimension statistics of (N, D) batches."""

    def __init__(self, dim: int | None = None, *, exact_limit: int = 100_000, bins: int = 4096):
        if bins < 2 or bins % 2:
            raise ValueError("bins must be an even number >= 2")
        self.dim, self.exact_limit, self.bins = dim, exact_limit, bins
        self.count = 0
        self._mean = self._m2 = self._min = self._max = None
        self._buffer: list[np.ndarray] | None = []
        self._buffered = 0
        self._hist: np.ndarray | None = None  # (D, bins) counts
        self._lo: np.ndarray | None = None  # (D,) left edge
        self._width: np.ndarray | None = None  # (D,) bin width

    # -- accumulation ------------------------------------------------------------------------
    def update(self, x: np.ndarray, what: str = "data") -> None:
        """Add a batch (N, D) (or (N,) for D = 1). ``what`` names the source in error messages."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise DatasetError(f"{what}: expected a (N, D) array for statistics, got shape {x.shape}")
        if len(x) == 0:
            return
        if self.dim is not None and x.shape[1] != self.dim:
            raise DatasetError(f"{what}: has {x.shape[1]} dims, earlier data had {self.dim}")
        if not np.all(np.isfinite(x)):
            row, col = np.argwhere(~np.isfinite(x))[0]
            raise DatasetError(f"{what}: value {x[row, col]} (row {row}, dim {col}) is not finite; fix or drop it")
        self.dim = x.shape[1]
        n = len(x)
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        if self.count == 0:
            self._mean, self._m2, self._min, self._max = mean_b, m2_b, x.min(0), x.max(0)
        else:
            tot = self.count + n
            delta = mean_b - self._mean
            self._mean = self._mean + delta * (n / tot)
            self._m2 = self._m2 + m2_b + delta**2 * (self.count * n / tot)
            self._min, self._max = np.minimum(self._min, x.min(0)), np.maximum(self._max, x.max(0))
        self.count += n
        if self._buffer is not None:
            self._buffer.append(x.copy())
            self._buffered += n
            if self._buffered > self.exact_limit:
                self._to_histogram()
        else:
            self._add_to_histogram(x)

    def _to_histogram(self) -> None:
        data = np.concatenate(self._buffer)
        self._buffer = None
        span = self._max - self._min
        # Start a little wider than the data seen so far so that growth is rare.
        span = np.where(span > 0, span * 1.25, np.maximum(np.abs(self._min), 1.0) * 1e-6)
        self._lo = self._min - span * 0.1
        self._width = span / self.bins
        self._hist = np.zeros((self.dim, self.bins), np.int64)
        self._add_to_histogram(data)

    def _add_to_histogram(self, x: np.ndarray) -> None:
        lo_x, hi_x = x.min(0), x.max(0)
        for d in range(self.dim):
            while lo_x[d] < self._lo[d]:  # double the range to the left
                h = self._hist[d]
                new = np.zeros_like(h)
                np.add.at(new, (np.arange(self.bins) + self.bins) // 2, h)
                self._hist[d] = new
                self._lo[d] -= self.bins * self._width[d]
                self._width[d] *= 2
            while hi_x[d] >= self._lo[d] + self.bins * self._width[d]:  # double to the right
                merged = self._hist[d].reshape(-1, 2).sum(1)
                self._hist[d] = 0
                self._hist[d, : self.bins // 2] = merged
                self._width[d] *= 2
            idx = np.clip(((x[:, d] - self._lo[d]) / self._width[d]).astype(np.int64), 0, self.bins - 1)
            self._hist[d] += np.bincount(idx, minlength=self.bins)

    # -- results -----------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """True while quantiles are exact (all rows still buffered)."""
        return self._buffer is not None

    def quantile(self, q: float) -> np.ndarray:
        if self.count == 0:
            raise DatasetError("no data was seen: cannot compute quantiles")
        if self._buffer is not None:
            return np.quantile(np.concatenate(self._buffer), q, axis=0)
        rank = q * (self.count - 1)  # numpy's 'linear' definition on the order statistics
        lo_k, frac = int(np.floor(rank)), rank - np.floor(rank)
        hi_k = min(lo_k + 1, self.count - 1)
        out = np.empty(self.dim)
        for d in range(self.dim):
            cum = np.cumsum(self._hist[d])
            a, b = self._order_stat(d, cum, lo_k), self._order_stat(d, cum, hi_k)
            out[d] = a + frac * (b - a)
        return np.clip(out, self._min, self._max)

    def _order_stat(self, d: int, cum: np.ndarray, k: int) -> float:
        """Estimate of the k-th smallest value (0-based) of dim d: rows spread evenly in their bin."""
        b = min(int(np.searchsorted(cum, k, side="right")), self.bins - 1)
        before = cum[b - 1] if b > 0 else 0
        frac = (k - before + 0.5) / max(self._hist[d, b], 1)
        return self._lo[d] + (b + min(max(frac, 0.0), 1.0)) * self._width[d]

    def result(self) -> dict[str, np.ndarray]:
        """All statistics as arrays: mean, std, min, max, q01, q10, q50, q90, q99 and count."""
        if self.count == 0:
            raise DatasetError("no data was seen: cannot compute statistics")
        out = {
            "mean": self._mean.copy(),
            "std": np.sqrt(np.maximum(self._m2 / self.count, 0.0)),
            "min": self._min.copy(),
            "max": self._max.copy(),
        }
        for k, q in QUANTILES.items():
            out[k] = self.quantile(q)
        out["count"] = np.array([self.count])
        return out

    def stats(self) -> Stats:
        r = self.result()
        return Stats(mean=r["mean"], std=r["std"], min=r["min"], max=r["max"], q01=r["q01"], q99=r["q99"],
                     count=self.count)


def exact_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Exact statistics of an in-memory (N, D) array, same keys as RunningStats.result()."""
    rs = RunningStats(exact_limit=max(len(x), 1))
    rs.update(x)
    return rs.result()


def aggregate(stats: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine per-episode mean/std/min/max/count (as in LeRobot's aggregate_stats); quantiles are dropped
    because they cannot be combined exactly."""
    if not stats:
        raise DatasetError("no per-episode statistics to aggregate")
    counts = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in stats])
    means = np.stack([np.asarray(s["mean"], np.float64) for s in stats])
    var = np.stack([np.asarray(s["std"], np.float64) ** 2 for s in stats])
    w = counts.reshape((-1,) + (1,) * (means.ndim - 1))
    total = counts.sum()
    mean = (means * w).sum(0) / total
    variance = ((var + (means - mean) ** 2) * w).sum(0) / total
    return {
        "mean": mean,
        "std": np.sqrt(np.maximum(variance, 0)),
        "min": np.min(np.stack([np.asarray(s["min"], np.float64) for s in stats]), 0),
        "max": np.max(np.stack([np.asarray(s["max"], np.float64) for s in stats]), 0),
        "count": np.array([int(total)]),
    }


def compute_stats(datasets, features: Iterable[str] = ("action", "observation.state"), *,
                  episodes: dict | Sequence[int] | None = None, progress: bool = False,
                  exact_limit: int = 100_000) -> dict[str, Stats]:
    """Streaming statistics of low-dimensional features over one or several LeRobot datasets.

    Reads one episode at a time (never the whole dataset). ``episodes``: a list of
    episode indices (one dataset) or ``{dataset_position: [indices]}``. Datasets
    lacking a feature are skipped for that feature; a feature no dataset has is
    left out of the result.
    """
    if hasattr(datasets, "episode_indices"):  # one dataset (anything with episode_indices and episode(i))
        datasets = [datasets]
        if episodes is not None and not isinstance(episodes, dict):
            episodes = {0: list(episodes)}
    acc = {f: RunningStats(exact_limit=exact_limit) for f in features}
    work = []
    for k, ds in enumerate(datasets):
        eps = ds.episode_indices if episodes is None or k not in episodes else list(episodes[k])
        work += [(ds, e) for e in eps]
    it = work
    if progress:
        from tqdm import tqdm

        it = tqdm(work, desc="statistics", unit="ep")
    for ds, e in it:
        ep = ds.episode(e)
        for f, rs in acc.items():
            arr = ep.actions if f == "action" else ep.states if f == "observation.state" else None
            if arr is not None:
                rs.update(arr, what=f"{ds.root} episode {e} feature {f!r}")
    return {f: rs.stats() for f, rs in acc.items() if rs.count}
