"""Streaming statistics against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from vla.data.lerobot import LeRobotDataset
from vla.data.stats import RunningStats, aggregate, compute_stats
from vla.data.synthetic import write_synthetic
from vla.errors import DatasetError


def test_exact_on_small_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(997, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, -2, 0, 100]
    rs = RunningStats()
    for part in np.array_split(x, 13):
        rs.update(part)
    r = rs.result()
    assert rs.exact and r["count"][0] == 997
    for k, fn in {"mean": np.mean, "std": np.std, "min": np.min, "max": np.max}.items():
        np.testing.assert_allclose(r[k], fn(x, axis=0), rtol=1e-12, atol=1e-12)
    for k, q in {"q01": 0.01, "q10": 0.1, "q50": 0.5, "q90": 0.9, "q99": 0.99}.items():
        np.testing.assert_array_equal(r[k], np.quantile(x, q, axis=0))
    st = rs.stats()
    assert st.count == 997 and st.dim == 5


def test_bounded_memory_histogram_mode():
    rng = np.random.default_rng(1)
    # two modes and a range that keeps growing after the switch to histograms
    x = np.concatenate([rng.normal(0, 1, (30000, 2)), rng.normal(8, 0.5, (30000, 2)), rng.uniform(-40, 40, (200, 2))])
    x = rng.permutation(x)
    rs = RunningStats(exact_limit=2000, bins=2048)
    for part in np.array_split(x, 50):
        rs.update(part)
    assert not rs.exact and rs._hist.shape == (2, 2048)  # memory: bins per dim, not rows
    r = rs.result()
    np.testing.assert_allclose(r["mean"], x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(r["std"], x.std(0), rtol=1e-10)
    bound = 2 * (x.max(0) - x.min(0)) / 2048
    for k, q in {"q01": 0.01, "q50": 0.5, "q99": 0.99}.items():
        assert np.all(np.abs(r[k] - np.quantile(x, q, axis=0)) <= bound), k


def test_rejects_non_finite_and_shape_changes():
    rs = RunningStats()
    with pytest.raises(DatasetError, match="episode 3 actions: value nan .row 1, dim 0. is not finite"):
        rs.update(np.array([[0.0], [np.nan]]), what="episode 3 actions")
    rs.update(np.zeros((2, 3)))
    with pytest.raises(DatasetError, match="has 2 dims, earlier data had 3"):
        rs.update(np.zeros((2, 2)))


def test_aggregate_matches_pooled():
    rng = np.random.default_rng(2)
    parts = [rng.normal(i, 1 + i, (50 + 10 * i, 3)) for i in range(4)]
    per = [{"mean": p.mean(0), "std": p.std(0), "min": p.min(0), "max": p.max(0), "count": [len(p)]} for p in parts]
    agg, x = aggregate(per), np.concatenate(parts)
    np.testing.assert_allclose(agg["mean"], x.mean(0))
    np.testing.assert_allclose(agg["std"], x.std(0))
    assert agg["count"][0] == len(x)


def test_compute_stats_over_datasets(tmp_path):
    a, ea = write_synthetic(tmp_path / "a", episodes=3, seed=1)
    b, eb = write_synthetic(tmp_path / "b", episodes=2, seed=2)
    st = compute_stats([LeRobotDataset(a), LeRobotDataset(b)], episodes={1: [1]})
    acts = np.concatenate([e["actions"] for e in ea] + [eb[1]["actions"]]).astype(np.float64)
    np.testing.assert_allclose(st["action"].q99, np.quantile(acts, 0.99, axis=0), rtol=1e-6)
    np.testing.assert_allclose(st["action"].mean, acts.mean(0), rtol=1e-5)
    assert st["observation.state"].count == len(acts)
