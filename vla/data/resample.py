"""Resampling timestamped streams onto a fixed control clock.

At each tick a stream contributes its latest message at or before the tick (sample and hold).
If that message is older than the stream's staleness limit, or there is none yet, the tick is
a gap for that stream. Ticks where every stream is fresh form the usable segments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NS = 1_000_000_000


@dataclass
class StreamStats:
    """Measured timing of one stream within an episode."""

    messages: int
    rate_hz: float  # messages per second over the stream's own span
    max_gap_s: float  # the longest interval between consecutive messages
    stale_ticks: int  # ticks where the latest message was older than the limit (or absent)

    def __str__(self) -> str:
        return (f"{self.messages} msgs, {self.rate_hz:.1f} Hz, max gap {self.max_gap_s * 1e3:.0f} ms, "
                f"{self.stale_ticks} stale ticks")


@dataclass
class Alignment:
    ticks: np.ndarray  # (T,) int64 ns
    index: dict[str, np.ndarray]  # stream -> (T,) index of the message held at each tick (-1: none)
    fresh: np.ndarray  # (T,) bool: every stream fresh at the tick
    stats: dict[str, StreamStats]

    def segments(self, min_ticks: int = 1) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Runs of fresh ticks as [start, end) pairs: (long enough, too short)."""
        f = np.concatenate([[False], self.fresh, [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(f))
        runs = list(zip(edges[::2].tolist(), edges[1::2].tolist()))
        return [r for r in runs if r[1] - r[0] >= min_ticks], [r for r in runs if r[1] - r[0] < min_ticks]


def stream_stats(stamps: np.ndarray, stale_ticks: int = 0) -> StreamStats:
    n = len(stamps)
    span = (stamps[-1] - stamps[0]) / NS if n > 1 else 0.0
    gap = float(np.diff(stamps).max()) / NS if n > 1 else 0.0
    return StreamStats(n, (n - 1) / span if span > 0 else 0.0, gap, stale_ticks)


def align(stamps: dict[str, np.ndarray], start_ns: int, end_ns: int, fps: float,
          staleness_s: dict[str, float]) -> Alignment:
    """Ticks every 1/fps from ``start_ns`` up to ``end_ns`` (inclusive); ``stamps`` sorted int64 ns per stream."""
    period = NS / fps
    n = int(np.floor((end_ns - start_ns) / period + 1e-9)) + 1 if end_ns >= start_ns else 0
    ticks = start_ns + np.round(np.arange(n) * period).astype(np.int64)
    fresh = np.ones(n, bool)
    index, stats = {}, {}
    for key, t in stamps.items():
        idx = np.searchsorted(t, ticks, side="right") - 1
        ok = idx >= 0
        age = np.where(ok, ticks - t[np.maximum(idx, 0)], np.iinfo(np.int64).max)
        ok &= age <= staleness_s[key] * NS
        index[key] = np.where(idx >= 0, idx, -1)
        fresh &= ok
        stats[key] = stream_stats(t, int((~ok).sum()))
    return Alignment(ticks, index, fresh, stats)


__all__ = ["align", "Alignment", "StreamStats", "stream_stats", "NS"]
