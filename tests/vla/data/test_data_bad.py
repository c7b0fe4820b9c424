"""Bad data: every case gives a DatasetError naming the file/episode/key and a fix; nothing is dropped silently."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vla.data.lerobot import LeRobotDataset
from vla.data.samples import ChunkDataset, embodiment_from_dataset
from vla.data.synthetic import write_synthetic
from vla.errors import DatasetError

CAM = {"observation.images.top": (32, 32)}


def _ds(tmp_path, version="v2.1"):
    root, eps = write_synthetic(tmp_path / "ds", episodes=3, version=version, cameras=CAM)
    return root, eps


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not a LeRobot dataset: meta/info.json is missing"):
        LeRobotDataset(tmp_path)


def test_truncated_json(tmp_path):
    root, _ = _ds(tmp_path)
    _truncate(root / "meta/info.json", 0.6)
    with pytest.raises(DatasetError, match=r"info\.json is not valid JSON \(line \d+.*truncated or corrupt"):
        LeRobotDataset(root)


def test_truncated_jsonl_names_the_line(tmp_path):
    root, _ = _ds(tmp_path)
    p = root / "meta/episodes.jsonl"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[:2] + [lines[2][:15]]) + "\n")
    with pytest.raises(DatasetError, match=r"episodes\.jsonl line 3 is not valid JSON"):
        LeRobotDataset(root)


def test_unsupported_version(tmp_path):
    root, _ = _ds(tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    info["codebase_version"] = "v1.6"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="codebase_version 'v1.6' is not supported"):
        LeRobotDataset(root)


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_truncated_parquet(tmp_path, version):
    root, _ = _ds(tmp_path, version)
    f = sorted((root / "data").rglob("*.parquet"))[0]
    _truncate(f)
    with pytest.raises(DatasetError, match=rf"cannot read parquet file .*{f.name} .*truncated or corrupt"):
        LeRobotDataset(root).episode(0)


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_truncated_video(tmp_path, version):
    root, _ = _ds(tmp_path, version)
    f = sorted((root / "videos").rglob("*.mp4"))[0]
    _truncate(f)
    with pytest.raises(DatasetError, match=rf"{f.name}.*truncated"):
        LeRobotDataset(root).frame(0, 0, "observation.images.top")


def test_missing_video_names_the_file(tmp_path):
    root, _ = _ds(tmp_path)
    (root / "videos/chunk-000/observation.images.top/episode_000002.mp4").unlink()
    ds = LeRobotDataset(root)
    with pytest.raises(DatasetError, match="episode 2: video file videos/chunk-000/observation.images.top/episode_000002.mp4 is missing"):
        ds.frame(2, 0, "observation.images.top")
    assert ds.available_episodes() == [0, 1]


def test_schema_does_not_match_info(tmp_path):
    root, _ = _ds(tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["action"]["shape"] = [4]
    (root / "meta/info.json").write_text(json.dumps(info))
    ds = LeRobotDataset(root)
    assert any("action names synthesized" in n for n in ds.notes)  # 3 names for 4 dims
    with pytest.raises(DatasetError, match=r"episode 0 .*column 'action': 3 values per row but meta/info.json says shape \[4\]"):
        ds.episode(0)


def test_missing_column(tmp_path):
    root, _ = _ds(tmp_path)
    f = root / "data/chunk-000/episode_000001.parquet"
    pq.write_table(pq.read_table(f).drop_columns(["observation.state"]), f)
    with pytest.raises(DatasetError, match=r"episode_000001.parquet lacks column\(s\) \['observation.state'\].*does not match"):
        LeRobotDataset(root).episode(1)


def test_episode_length_mismatch(tmp_path):
    root, _ = _ds(tmp_path)
    f = root / "data/chunk-000/episode_000001.parquet"
    t = pq.read_table(f)
    pq.write_table(t.slice(0, len(t) - 2), f)
    with pytest.raises(DatasetError, match="episode 1 .* has \\d+ rows but the episode metadata says length"):
        LeRobotDataset(root).episode(1)


def _poison(f, frame=2, dim=1):
    t = pq.read_table(f)
    a = np.stack(t.column("action").to_pylist()).astype(np.float32)
    a[frame, dim] = np.nan
    col = pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])
    pq.write_table(t.set_column(t.column_names.index("action"), "action", col), f)


def test_nan_actions_error_or_counted_exclusion(tmp_path):
    root, _ = _ds(tmp_path)
    emb = embodiment_from_dataset(root, "r", chunk_size=2)  # stats from metadata (written before the damage)
    _poison(root / "data/chunk-000/episode_000001.parquet")
    ds = LeRobotDataset(root)
    with pytest.raises(DatasetError, match="episode 1 .*episode_000001.parquet.* actions: 1 NaN/inf value.*frame 2 dim 1"):
        ds.episode(1)
    with pytest.raises(DatasetError, match="NaN/inf"):
        ChunkDataset(ds, emb)
    cd = ChunkDataset(ds, emb, on_bad_episode="exclude")
    assert cd.report.excluded == {"unreadable or invalid": [1]} and cd.episodes == [0, 2]
    assert "NaN" in cd.report.details[1] and "excluded 1" in str(cd.report)


def test_bad_statistics_file(tmp_path):
    root, _ = _ds(tmp_path, "v3.0")
    p = root / "meta/stats.json"
    st = json.loads(p.read_text())
    st["action"]["q99"] = st["action"]["q99"][:-1]
    p.write_text(json.dumps(st))
    with pytest.raises(DatasetError, match="meta/stats.json: statistics of 'action' are invalid"):
        LeRobotDataset(root).stats


def test_v3_episode_metadata_mismatch(tmp_path):
    root, _ = _ds(tmp_path, "v3.0")
    p = root / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(p)
    col = t.column("dataset_from_index").to_pylist()
    col[1] += 1
    pq.write_table(t.set_column(t.column_names.index("dataset_from_index"), "dataset_from_index", pa.array(col)), p)
    with pytest.raises(DatasetError, match="do not belong to episode 1|length"):
        LeRobotDataset(root).episode(1)
