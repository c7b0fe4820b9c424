"""LeRobot v2.1 / v3.0 write -> read round trips and the real Unitree G1 v2.1 episode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vla.data.lerobot import LeRobotDataset, LeRobotWriter
from vla.data.lerobot.reader import feature_names
from vla.data.synthetic import smooth_frames, write_synthetic
from vla.data.video import VideoReader, encode_video
from vla.errors import ConfigError, DatasetError

G1 = Path(__file__).resolve().parents[2] / "fixtures" / "lerobot_v21_g1_real"
CAMS = {"observation.images.top": (32, 48), "observation.images.wrist": (32, 32)}


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize("version,codec", [("v3.0", "h264"), ("v2.1", "h264"), ("v3.0", "av1"), ("v2.1", "av1")])
def test_round_trip(tmp_path, version, codec):
    root, eps = write_synthetic(tmp_path / "ds", episodes=3, cameras=CAMS, version=version, codec=codec,
                                license="apache-2.0", provenance={"source": "unit test"})
    ds = LeRobotDataset(root)
    assert ds.version == version and ds.num_episodes == 3 and ds.fps == 10
    assert ds.num_frames == sum(len(e["actions"]) for e in eps)
    assert ds.cameras == CAMS and set(ds.camera_codecs.values()) == {codec}
    assert ds.action_names == ["a0", "a1", "a2"] and ds.state_names == ["s0", "s1"]
    assert ds.license == "apache-2.0" and ds.provenance["source"] == "unit test"
    assert sorted(ds.tasks.values()) == ["open the drawer", "pick up the cube"]
    for i, ref in enumerate(eps):
        ep = ds.episode(i)
        np.testing.assert_array_equal(ep.actions, ref["actions"])  # actions are exact
        np.testing.assert_array_equal(ep.states, ref["states"])
        assert ep.task == ref["task"] and ep.length == len(ref["actions"])
        np.testing.assert_allclose(ep.timestamps, np.arange(ep.length) / 10, atol=1e-6)
        for cam, frames in ref["images"].items():
            got = ds.frames(i, cam, range(ep.length))
            assert got.shape == frames.shape and got.dtype == np.uint8
            assert _mad(got, frames) < 8  # lossy codec + yuv420p chroma subsampling
            # each decoded frame is closest to its own original (no off-by-one across episodes)
            for t in (0, ep.length - 1):
                errs = [_mad(got[t], frames[k]) for k in range(ep.length)]
                assert int(np.argmin(errs)) == t
    # statistics from meta (exact here: small data) match numpy
    acts = np.concatenate([e["actions"] for e in eps]).astype(np.float64)
    st = ds.stats["action"]
    np.testing.assert_allclose(st.mean, acts.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(st.q01, np.quantile(acts, 0.01, axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(st.q99, np.quantile(acts, 0.99, axis=0), rtol=1e-6, atol=1e-7)
    assert st.count == len(acts)


def test_v3_layout_matches_lerobot(tmp_path):
    root, _ = write_synthetic(tmp_path / "ds", episodes=2, cameras={"observation.images.top": (32, 32)})
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["features"]["observation.images.top"]["info"]["video.codec"] == "h264"
    ep = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["dataset_from_index"] for r in ep] == [0, ep[0]["length"]]
    assert ep[1]["videos/observation.images.top/from_timestamp"] == pytest.approx(ep[0]["length"] / 10)
    assert "stats/action/q01" in ep[0]
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert set(tasks.column_names) == {"task", "task_index"}
    assert b"pandas" in tasks.schema.metadata  # LeRobot reads it with pandas, task strings as the index
    stats = json.loads((root / "meta/stats.json").read_text())
    assert {"mean", "std", "min", "max", "q01", "q99", "count"} <= set(stats["action"])
    assert np.array(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)
    assert (root / "data/chunk-000/file-000.parquet").exists()


def test_writer_is_atomic(tmp_path):
    root = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with LeRobotWriter(root, fps=10, robot_type="t", action_names=["a"], state_names=[],
                           cameras={"observation.images.top": (32, 32)}) as w:
            w.add_episode(np.zeros((4, 1)), None, {"observation.images.top": smooth_frames(4, 32, 32)}, "task")
            raise RuntimeError("crash mid-way")
    assert not root.exists() and list(tmp_path.iterdir()) == []  # nothing half-written left behind
    write_synthetic(root, episodes=1)
    with pytest.raises(DatasetError, match="already exists"):
        LeRobotWriter(root, fps=10, robot_type="t", action_names=["a"], state_names=[], cameras={})


def test_writer_rejects_bad_episodes(tmp_path):
    w = LeRobotWriter(tmp_path / "ds", fps=10, robot_type="t", action_names=["a", "b"], state_names=["s"],
                      cameras={"observation.images.top": (32, 32)})
    imgs = {"observation.images.top": smooth_frames(4, 32, 32)}
    with pytest.raises(DatasetError, match=r"actions must be \(T, 2\)"):
        w.add_episode(np.zeros((4, 3)), np.zeros((4, 1)), imgs, "t")
    bad = np.zeros((4, 2))
    bad[2, 1] = np.nan
    with pytest.raises(DatasetError, match="frame 2 dim 1 .b. is NaN"):
        w.add_episode(bad, np.zeros((4, 1)), imgs, "t")
    with pytest.raises(DatasetError, match="cameras"):
        w.add_episode(np.zeros((4, 2)), np.zeros((4, 1)), {"observation.images.wrist": imgs["observation.images.top"]}, "t")
    with pytest.raises(DatasetError, match="states are required"):
        w.add_episode(np.zeros((4, 2)), None, imgs, "t")
    with pytest.raises(DatasetError, match="task"):
        w.add_episode(np.zeros((4, 2)), np.zeros((4, 1)), imgs, "  ")
    w.abort()
    with pytest.raises(ConfigError, match="even"):
        encode_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8), fps=10)
    odd = np.random.default_rng(0).integers(0, 256, (2, 31, 33, 3), dtype=np.uint8)  # full chroma: any size
    with VideoReader(encode_video(tmp_path / "odd444.mp4", odd, fps=10, crf=0, pix_fmt="yuv444p")) as r:
        assert np.abs(r.read_all().astype(int) - odd).max() <= 2
    with pytest.raises(ConfigError, match="av1 .SVT-AV1. only yuv420p"):
        encode_video(tmp_path / "444.mp4", np.zeros((2, 32, 32, 3), np.uint8), fps=10, codec="av1", pix_fmt="yuv444p")
    with pytest.raises(ConfigError, match="pixel format 'rgb24'"):
        LeRobotWriter(tmp_path / "rgb", fps=10, robot_type="r", action_names=["a"], state_names=[],
                      cameras={"observation.images.top": (32, 32)}, pix_fmt="rgb24")


def test_v3_rolls_over_to_new_files(tmp_path):
    # A tiny size limit forces one data file and one video file per episode.
    root, eps = write_synthetic(tmp_path / "ds", episodes=3, cameras={"observation.images.top": (32, 32)},
                                data_file_size_mb=1e-6, video_file_size_mb=1e-6)
    assert len(list((root / "data").rglob("*.parquet"))) == 3
    assert len(list((root / "videos").rglob("*.mp4"))) == 3
    ds = LeRobotDataset(root)
    for i, ref in enumerate(eps):
        np.testing.assert_array_equal(ds.episode(i).actions, ref["actions"])
        assert _mad(ds.frame(i, 1, "observation.images.top"), ref["images"]["observation.images.top"][1]) < 8


def test_video_random_access_small_gop(tmp_path):
    frames = smooth_frames(40, 32, 32)
    path = encode_video(tmp_path / "v.mp4", frames, fps=20, gop=2)
    with VideoReader(path) as r:
        assert r.num_frames == 40 and r.codec == "h264"
        order = [37, 3, 4, 20, 0, 39, 21]
        got = r.frames_at(np.array(order) / 20)
        for k, t in enumerate(order):
            assert _mad(got[k], frames[t]) < 8
        assert r.decoded <= 3 * len(order)  # small GOP: a few decodes per random frame
        with pytest.raises(DatasetError, match="no frame at"):
            r.frame_at(5.0)


def test_feature_name_forms():
    assert feature_names({"names": ["x", "y"]}, 2, "action") == (["x", "y"], None)
    assert feature_names({"names": [["x", "y"]]}, 2, "action") == (["x", "y"], None)
    assert feature_names({"names": {"motors": ["x", "y"]}}, 2, "action") == (["x", "y"], None)
    names, why = feature_names({"names": None}, 3, "action")
    assert names == ["action_0", "action_1", "action_2"] and "no names" in why
    names, why = feature_names({"names": ["x"]}, 2, "state")
    assert names == ["state_0", "state_1"] and "1 entries for 2 dims" in why


# -- the real G1 episode ------------------------------------------------------------------------
def test_g1_real_episode_loads():
    ds = LeRobotDataset(G1)
    assert ds.version == "v2.1" and ds.robot_type == "Unitree_G1_Inspire" and ds.fps == 30
    assert ds.num_episodes == 100  # the metadata describes 100 episodes ...
    assert ds.available_episodes() == [1]  # ... but only episode 1's files exist
    assert ds.cameras == {"observation.images.cam_high": (480, 640)}
    assert ds.camera_codecs == {"observation.images.cam_high": "av1"}
    assert len(ds.action_names) == 26 and ds.action_names[0] == "kLeftShoulderPitch"
    assert ds.state_names[-1] == "kRightHandThumbRotation" and not ds.notes
    assert ds.license.startswith("MIT License")
    ep = ds.episode(1)
    assert ep.length == 393 and ep.actions.shape == (393, 26) and ep.states.shape == (393, 26)
    assert ep.actions.dtype == np.float32 and ep.task == "Pick up the yellow bottle on the table."
    frames = ds.frames(1, "observation.images.cam_high", [0, 200, 392], timestamps=ep.timestamps)
    assert frames.shape == (3, 480, 640, 3) and frames.dtype == np.uint8
    assert 20 < frames.mean() < 235 and _mad(frames[0], frames[2]) > 1  # real content, distinct frames
    raw, src = ds.raw_stats()
    assert "episodes_stats" in src and raw["action"]["mean"].shape == (26,)
    assert "action" not in ds.stats  # the v2.1 metadata has no q01/q99


def test_g1_missing_episode_names_the_file():
    ds = LeRobotDataset(G1)
    with pytest.raises(DatasetError, match=r"episode 0: data file data/chunk-000/episode_000000\.parquet is missing"):
        ds.episode(0)
    with pytest.raises(DatasetError, match="episode_000005.mp4 is missing"):
        ds.frame(5, 0, "observation.images.cam_high")
    with pytest.raises(DatasetError, match=r"episode 100 is not in .*100 episodes: 0\.\.99"):
        ds.episode(100)
    assert ds.missing_files()[0] == [
        "data/chunk-000/episode_000000.parquet",
        "videos/chunk-000/observation.images.cam_high/episode_000000.mp4",
    ]


def test_image_features_stored_in_parquet(tmp_path):
    """LeRobot also allows dtype "image": PNG bytes inside the parquet (struct<bytes, path>)."""
    import io

    import pyarrow as pa
    from PIL import Image

    root, eps = write_synthetic(tmp_path / "ds", episodes=2, version="v2.1", cameras={"observation.images.top": (32, 32)})
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.images.png"] = {"dtype": "image", "shape": [3, 16, 24], "names": ["channels", "height", "width"]}
    (root / "meta/info.json").write_text(json.dumps(info))
    refs = {}
    for i in range(2):
        f = root / f"data/chunk-000/episode_{i:06d}.parquet"
        t = pq.read_table(f)
        refs[i] = smooth_frames(len(t), 16, 24, seed=9 + i)
        pngs = []
        for img in refs[i]:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            pngs.append({"bytes": buf.getvalue(), "path": None})
        pq.write_table(t.append_column("observation.images.png", pa.array(pngs)), f)
    ds = LeRobotDataset(root)
    assert ds.cameras["observation.images.png"] == (16, 24)  # channels-first shape understood
    np.testing.assert_array_equal(ds.frames(1, "observation.images.png", [0, 3]), refs[1][[0, 3]])  # lossless
    # a corrupt PNG is a DatasetError naming the episode, camera and frame, not a raw PIL error
    f = root / "data/chunk-000/episode_000000.parquet"
    t = pq.read_table(f)
    col = t.column("observation.images.png").to_pylist()
    col[2] = {"bytes": b"not a png", "path": None}
    i = t.column_names.index("observation.images.png")
    pq.write_table(t.set_column(i, "observation.images.png", pa.array(col)), f)
    ds = LeRobotDataset(root)
    np.testing.assert_array_equal(ds.frames(0, "observation.images.png", [1]), refs[0][[1]])
    with pytest.raises(DatasetError, match=r"episode 0 observation.images.png frame 2: not a readable PNG or JPEG"):
        ds.frames(0, "observation.images.png", [2])
