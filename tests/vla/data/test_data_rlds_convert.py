"""RLDS TFRecords (written here with `tfrecord` + Pillow JPEGs) and format conversion."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from vla.data.formats import convert, detect_format
from vla.data.lerobot import LeRobotDataset
from vla.data.rlds import BUILTIN_MAPPINGS, RLDSDataset, RLDSMapping
from vla.data.synthetic import write_rlds, write_synthetic
from vla.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def rlds(tmp_path_factory):
    d = tmp_path_factory.mktemp("rlds")
    path, eps = write_rlds(d / "fractal20220817_data-train.tfrecord-00000-of-00001", episodes=3)
    return d, eps


def test_rlds_reads_fractal_layout(rlds):
    d, ref = rlds
    ds = RLDSDataset(d, "fractal20220817_data")
    assert len(ds) == 3 and "steps/observation/image" in ds.keys()
    eps = list(ds.episodes())
    for ep, r in zip(eps, ref):
        np.testing.assert_allclose(ep.actions, r["actions"], rtol=1e-6)  # float32 round trip
        np.testing.assert_allclose(ep.states, r["states"], rtol=1e-6)
        assert ep.task == r["task"]
        img = ep.images["observation.images.image"]
        assert img.shape == r["images"]["observation.images.image"].shape and img.dtype == np.uint8
        assert np.abs(img.astype(float) - r["images"]["observation.images.image"]).mean() < 4  # JPEG q95
    assert ds.names(7) == (["x", "y", "z", "roll", "pitch", "yaw", "gripper_closedness"], None)


def test_builtin_mappings_and_aliases():
    assert BUILTIN_MAPPINGS["rt1"] is BUILTIN_MAPPINGS["fractal20220817_data"]
    assert BUILTIN_MAPPINGS["taco_play"].actions == ["steps/action/rel_actions_world"]
    assert BUILTIN_MAPPINGS["bridge_dataset"].instruction == "steps/language_instruction"
    m = RLDSMapping.resolve('{"images": ["observation/image"], "actions": "action", "fps": 5}')
    assert m.images == {"steps/observation/image": "observation.images.image"} and m.actions == ["steps/action"]
    with pytest.raises(ConfigError, match="Did you mean 'taco_play'"):
        RLDSMapping.resolve("taco_ply")
    with pytest.raises(ConfigError, match="not valid JSON"):
        RLDSMapping.resolve('{"images": ')
    with pytest.raises(ConfigError, match="unknown key 'image'"):
        RLDSMapping.resolve('{"image": {}, "actions": ["a"]}')


def test_rlds_wrong_mapping_names_the_key(rlds):
    d, _ = rlds
    with pytest.raises(DatasetError, match=r"key 'steps/action/rel_actions_world' of mapping 'taco_play' is not in the record.*Available keys"):
        next(RLDSDataset(d, "taco_play").episodes())
    m = {"images": {"observation/imag": "observation.images.x"}, "actions": ["action/world_vector"], "fps": 3}
    with pytest.raises(DatasetError, match="Did you mean 'steps/observation/image'"):
        next(RLDSDataset(d, m).episodes())
    with pytest.raises(ConfigError, match="no RLDS mapping given"):
        RLDSDataset(d)


def test_rlds_truncated_file(tmp_path, rlds):
    d, _ = rlds
    src = next(d.glob("*.tfrecord*"))
    bad = tmp_path / "x.tfrecord"
    data = src.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    ds = RLDSDataset(bad, "rt1")
    with pytest.raises(DatasetError, match=r"x\.tfrecord is truncated after \d complete record") as e:
        list(ds.episodes())
    complete = int(re.search(r"after (\d) complete record", str(e.value)).group(1))
    skipped = {}
    got = list(ds.episodes(skipped=skipped))
    assert complete >= 1 and len(got) == complete  # every complete record before the cut is kept
    assert list(skipped) == [-1] and "truncated" in skipped[-1]


def test_rlds_to_lerobot_v3(tmp_path, rlds):
    d, ref = rlds
    assert detect_format(d) == "rlds"
    report = convert(d, tmp_path / "out", mapping="rt1", progress=False)
    assert report.episodes_written == 3 and not report.skipped
    ds = LeRobotDataset(tmp_path / "out")
    assert ds.version == "v3.0" and ds.fps == 3 and ds.robot_type == "google_robot"
    assert ds.cameras == {"observation.images.image": (32, 48)}
    assert ds.action_names[-1] == "gripper_closedness" and len(ds.state_names) == 8
    assert ds.provenance["source_format"] == "rlds" and ds.provenance["rlds_mapping"] == "fractal20220817_data"
    for i, r in enumerate(ref):
        ep = ds.episode(i)
        np.testing.assert_allclose(ep.actions, r["actions"], rtol=1e-6)
        assert ep.task == r["task"]
        fr = ds.frames(i, "observation.images.image", range(ep.length))
        assert np.abs(fr.astype(float) - r["images"]["observation.images.image"]).mean() < 10  # JPEG then H.264
        # RLDS reward / is_terminal / is_last arrive as LeRobot's next.reward / next.success / next.done
        T = ep.length
        np.testing.assert_array_equal(ep.outcomes["next.reward"], [0.0] * (T - 1) + [1.0])
        np.testing.assert_array_equal(ep.outcomes["next.success"], [False] * (T - 1) + [True])
        np.testing.assert_array_equal(ep.outcomes["next.done"], [False] * (T - 1) + [True])
        assert set(ep.outcomes["label_source"].tolist()) == {0}  # the recording's own labels: demonstration
    assert ds.provenance["reward_source"] == "dataset"
    # and a LeRobot-to-LeRobot conversion keeps them
    convert(tmp_path / "out", tmp_path / "again", to="lerobot-v2.1", progress=False)
    again = LeRobotDataset(tmp_path / "again")
    for c in ("next.reward", "next.success", "next.done", "label_source"):
        np.testing.assert_array_equal(again.episode(1).outcomes[c], ds.episode(1).outcomes[c])


def test_v21_v30_round_trip(tmp_path):
    src, ref = write_synthetic(tmp_path / "v21", episodes=3, version="v2.1",
                               cameras={"observation.images.top": (32, 32)}, license="cc-by-4.0")
    convert(src, tmp_path / "v30", to="lerobot-v3.0", progress=False)
    back = convert(tmp_path / "v30", tmp_path / "v21b", to="lerobot-v2.1", codec="av1", progress=False)
    assert back.episodes_written == 3
    a, b = LeRobotDataset(tmp_path / "v30"), LeRobotDataset(tmp_path / "v21b")
    assert (a.version, b.version) == ("v3.0", "v2.1") and b.camera_codecs["observation.images.top"] == "av1"
    assert a.license == b.license == "cc-by-4.0"
    assert b.provenance["source_provenance"]["converted_from"] == str(src)
    for i, r in enumerate(ref):
        np.testing.assert_array_equal(b.episode(i).actions, r["actions"])  # exact through two conversions
        assert b.episode(i).task == r["task"]
        fr = b.frames(i, "observation.images.top", range(len(r["actions"])))
        assert np.abs(fr.astype(float) - r["images"]["observation.images.top"]).mean() < 10  # two lossy encodes
    np.testing.assert_allclose(b.stats["action"].q99, a.stats["action"].q99)


def test_convert_skips_and_reports_missing_episodes(tmp_path):
    src, ref = write_synthetic(tmp_path / "v21", episodes=3, version="v2.1", cameras={"observation.images.top": (32, 32)})
    (src / "data/chunk-000/episode_000001.parquet").unlink()
    with pytest.raises(DatasetError, match="episode_000001.parquet is missing"):
        convert(src, tmp_path / "out", progress=False)
    report = convert(src, tmp_path / "out", skip_bad=True, progress=False)
    assert report.episodes_written == 2 and list(report.skipped) == [1]
    assert "SKIPPED 1" in str(report) and "renumbered" in str(report)
    ds = LeRobotDataset(tmp_path / "out")
    assert ds.provenance["source_episode_indices"] == [0, 2]
    np.testing.assert_array_equal(ds.episode(1).actions, ref[2]["actions"])
    info = json.loads((tmp_path / "out/meta/info.json").read_text())
    assert info["total_episodes"] == 2


def test_the_package_exports_the_convert_function_whatever_was_imported_before():
    import vla.data
    import vla.data.formats  # noqa: F401  a submodule named like the function would shadow it here

    assert vla.data.convert is convert and vla.data.detect_format is detect_format
