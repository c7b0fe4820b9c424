"""MCAP / ROS 2 bags -> LeRobot: real recordings written with mcap-ros2-support's writer and ROS 2
schemas (two cameras at 30 and 15 Hz, JointState at 50 Hz, a command topic at 20 Hz, one bgr8
stream and one JPEG stream), converted and checked tick by tick, colour by colour, cut by cut,
and every bad input's error message."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla.commands.data import main as data_main
from vla.data.formats import convert, detect_format
from vla.data.lerobot import LeRobotDataset
from vla.data.mcap import EpisodeReader, McapMapping, find_recordings
from vla.data.mcap.synthetic import (COMMAND, FRONT, JOINT_STATES, MARKER, T0, WRIST, BagSpec, frame_level,
                                     robot_mapping, stamps, write_robot_bag)
from vla.data.resample import NS
from vla.errors import ConfigError, DatasetError

FRONT_KEY, WRIST_KEY = "observation.images.front", "observation.images.wrist"


def aligned(paths, mapping):
    """Every source episode's alignment result, without writing video."""
    reader = EpisodeReader(McapMapping.resolve(mapping))
    return [reader.align(raw) for rec in find_recordings(paths) for raw in reader.episodes(rec)]


def held(times, tick):
    """Index of the latest time at or before ``tick`` (plain loop: independent of the implementation)."""
    return max(i for i, t in enumerate(times) if t <= tick)


def times_of(spec: BagSpec, topic: str, clock: str = "header") -> list[int]:
    t, keep = stamps(spec, topic)
    lat = int(spec.latency_s[topic] * NS) if clock == "log" else 0
    return [int(x) + lat for x in t[keep]]


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    d = tmp_path_factory.mktemp("mcap")
    spec = BagSpec()
    return write_robot_bag(d / "run_000.mcap", spec), spec


def test_streams_at_four_rates_are_aligned_to_each_tick(bag):
    path, spec = bag
    (res,) = aligned([path], robot_mapping())
    (ep,) = res.episodes
    front, wrist, joints = (times_of(spec, t) for t in (FRONT, WRIST, JOINT_STATES))
    command = times_of(spec, COMMAND, clock="log")  # Float64MultiArray has no header: the recorder's time
    start = max(front[0], wrist[0], joints[0], command[0])
    ticks = [start + round(k * NS / 10) for k in range(len(ep.actions))]
    assert len(ep.actions) == 30 and ticks[-1] <= max(front[-1], wrist[-1], joints[-1], command[-1]) < ticks[-1] + NS / 10
    for k, tick in enumerate(ticks):
        j, c = held(joints, tick), held(command, tick)
        np.testing.assert_array_equal(ep.states[k], [j, j + 0.25, j + 0.5])  # j0, j1, j2 out of [gripper, j2, j0, j1]
        np.testing.assert_array_equal(ep.actions[k], [1000 + c, 1000.25 + c, 1000.5 + c])
        assert ep.images[FRONT_KEY][k, 0, 0, 0] == frame_level(held(front, tick))
        assert abs(int(ep.images[WRIST_KEY][k, 0, 0, 0]) - frame_level(held(wrist, tick))) <= 3  # JPEG
    # The header stamp is what counts: on the recorder's clock (30 ms camera latency) other frames would be held.
    by_log = [frame_level(held(times_of(spec, FRONT, "log"), t)) for t in ticks[1:]]
    assert by_log != ep.images[FRONT_KEY][1:, 0, 0, 0].tolist()
    assert "30.0 Hz" in str(res.stats[FRONT]) and "50.0 Hz" in str(res.stats[f"{JOINT_STATES} (state[0])"])


@pytest.mark.parametrize("encoding,padding", [("bgr8", 0), ("rgb8", 0), ("bgr8", 5), ("mono8", 0)])
def test_colours_come_out_rgb_whatever_the_encoding(tmp_path, encoding, padding):
    path = write_robot_bag(tmp_path / "c.mcap", BagSpec(seconds=1.2, front_encoding=encoding, row_padding=padding))
    (ep,) = aligned([path], robot_mapping())[0].episodes
    lower_front, lower_wrist = ep.images[FRONT_KEY][:, -1, -1], ep.images[WRIST_KEY][:, -1, -1].astype(int)
    if encoding == "mono8":  # the red channel as grey, in all three channels
        assert (lower_front == 255).all()
    else:
        assert (lower_front == [255, 0, 0]).all()  # red stays red (bgr8 swapped, rgb8 kept, padding skipped)
    assert (np.abs(lower_wrist - [0, 0, 255]) <= 4).all()  # the JPEG stream: blue stays blue


def test_converted_dataset_reads_back_with_provenance(bag, tmp_path):
    path, spec = bag
    out = tmp_path / "ds"
    report = convert([path], out, mapping=robot_mapping(), license="cc-by-4.0", progress=False)
    assert report.episodes_written == 1 and report.frames_written == 30 and detect_format(path) == "mcap"
    ds = LeRobotDataset(out)
    ep = ds.episode(0)
    assert ds.fps == 10 and ds.robot_type == "test_arm" and ds.license == "cc-by-4.0"
    assert ds.action_names == ["a0", "a1", "a2"] and ds.state_names == ["j0", "j1", "j2"]
    assert ep.task == "pick up the cube" and ep.length == 30
    front = ds.frames(0, FRONT_KEY, range(ep.length), timestamps=ep.timestamps)
    wrist = ds.frames(0, WRIST_KEY, range(ep.length), timestamps=ep.timestamps)
    ref = aligned([path], robot_mapping())[0].episodes[0]
    np.testing.assert_allclose(ep.actions, ref.actions)
    assert np.abs(front[:, 4, 4].astype(int) - ref.images[FRONT_KEY][:, 4, 4]).max() <= 6  # through H.264
    assert (front[:, -4, 4, 0] > 230).all() and (front[:, -4, 4, 1:] < 25).all()  # red
    assert (wrist[:, -4, 4, 2] > 230).all() and (wrist[:, -4, 4, :2] < 25).all()  # blue
    prov = ds.provenance
    assert prov["source_format"] == "mcap" and prov["mapping_sha256"]
    assert prov["source_files"] == [{"recording": "run_000.mcap", "episodes": [0], "files": [
        {"file": "run_000.mcap", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]}]
    assert yaml.safe_load(prov["mapping_text"])["cameras"]["front"]["topic"] == FRONT


def test_episode_topic_cuts_episodes_and_gives_their_instructions(tmp_path):
    # a repeated marker within one tick (a service call's events) is one boundary
    spec = BagSpec(seconds=4.0, markers=[(0.5, "open the drawer"), (2.2, "close the drawer"), (2.2005, "close the drawer")])
    path = write_robot_bag(tmp_path / "long.mcap", spec)
    out = tmp_path / "ds"
    m = robot_mapping(episodes={"topic": MARKER}, instruction_topic=MARKER, instruction=None)
    report = convert([path], out, mapping=m, progress=False)
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 2 and [ds.episode(i).task for i in range(2)] == ["open the drawer", "close the drawer"]
    joints, command = times_of(spec, JOINT_STATES), times_of(spec, COMMAND, "log")
    for e, (lo, hi) in enumerate([(0.5, 2.2), (2.2, 4.0)]):
        ep = ds.episode(e)
        # messages belong to the episode whose marker the recorder logged before them; the first tick is
        # the latest first stamp of the streams
        first = max(next(t for t in times_of(spec, topic) if t + spec.latency_s[topic] * NS >= T0 + lo * NS)
                    if topic != COMMAND else next(t for t in command if t >= T0 + lo * NS)
                    for topic in (FRONT, WRIST, JOINT_STATES, COMMAND))
        assert ep.states[0, 0] == held(joints, first) and ep.actions[0, 0] == 1000 + held(command, first)
        assert abs(ep.length - (hi - lo) * 10) <= 1
    assert re.search(r"long.mcap: 0\.4\d s before the first episode marker are not an episode", str(report))


def test_files_are_episodes_with_per_file_instructions_and_next_state_actions(bag, tmp_path):
    path, spec = bag
    other = write_robot_bag(tmp_path / "run_001.mcap", BagSpec(seconds=2.0))
    m = robot_mapping(action="next_state", instructions={"run_001.mcap": "stack the cups"})
    results = aligned([path, other], m)
    assert [r.episodes[0].task for r in results] == ["pick up the cube", "stack the cups"]
    ep = results[0].episodes[0]
    assert len(ep.actions) == 29 and len(ep.images[FRONT_KEY]) == 29  # the last tick has no next state
    np.testing.assert_array_equal(ep.actions[:-1], ep.states[1:])


def test_a_gap_cuts_or_drops_the_episode_and_is_reported(tmp_path):
    spec = BagSpec(seconds=4.0, silent={FRONT: (1.5, 2.0)})
    path = write_robot_bag(tmp_path / "gap.mcap", spec)
    good = write_robot_bag(tmp_path / "good.mcap", BagSpec(seconds=1.5))
    (res,) = aligned([path], robot_mapping(min_episode_s=1.0))
    assert len(res.episodes) == 2  # before and after the silent camera
    first, second = res.episodes
    assert first.span_s[1] < 1.5 + 0.2 + 1e-6 and second.span_s[0] >= 2.0 - 0.05
    assert f"{FRONT}: " in res.notes[0] and "stale" in res.notes[0] or "older than its max_staleness" in res.notes[0]
    assert res.stats[FRONT].stale_ticks > 0 and res.stats[FRONT].max_gap_s > 0.5
    (short,) = aligned([path], robot_mapping(min_episode_s=1.8))
    assert len(short.episodes) == 1 and "shorter than min_episode_s=1.8; dropped" in short.dropped[0]
    report = convert([path, good], tmp_path / "ds", mapping=robot_mapping(on_gap="drop"), progress=False)
    assert report.episodes_written == 1 and "gap.mcap episode 0: dropped (on_gap: drop)" in str(report)
    assert LeRobotDataset(tmp_path / "ds").provenance["source_files"][0]["episodes"] == []


def test_truncated_bag_keeps_the_complete_episodes_with_skip_bad(tmp_path):
    spec = BagSpec(seconds=6.0, markers=[(0.0, "a"), (2.0, "b"), (4.0, "c")], chunk_size=4096)
    full = write_robot_bag(tmp_path / "full.mcap", spec)
    cut = tmp_path / "crashed.mcap"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.55)])  # dies during episode "b"
    m = robot_mapping(episodes={"topic": MARKER}, instruction_topic=MARKER)
    with pytest.raises(DatasetError, match=r"crashed.mcap is truncated or damaged after \d+ readable message.*--skip-bad"):
        convert([cut], tmp_path / "no", mapping=m, progress=False)
    report = convert([cut, full], tmp_path / "ds", mapping=m, skip_bad=True, progress=False)
    ds = LeRobotDataset(tmp_path / "ds")
    assert [ds.episode(i).task for i in range(ds.num_episodes)] == ["a", "a", "b", "c"]
    assert "crashed.mcap episode 1 and the rest of the recording: SKIPPED" in str(report)
    assert len(report.skipped) == 1 and not (tmp_path / "no").exists()


@pytest.mark.parametrize("change,error", [
    ({"cameras": {"front": {"topic": "/cam_frnt/image_raw"}}},
     r"run_000.mcap: topic\(s\) /cam_frnt/image_raw \(did you mean /cam_front/image_raw\?\).*Fix the mapping"),
    ({"cameras": {"front": {"topic": JOINT_STATES}}},
     r"run_000.mcap topic /joint_states: the topic is sensor_msgs/JointState, but camera observation.images.front needs"),
    ({"state": [{"topic": JOINT_STATES, "joints": ["j0", "elbow"]}]},
     r"run_000.mcap topic /joint_states: joint\(s\) \['elbow'\] are not in the messages.*Fix 'joints:'"),
    ({"action": [{"topic": FRONT}]},
     r"run_000.mcap topic /cam_front/image_raw: the topic is sensor_msgs/Image, which cannot give a state/action"),
    ({"state": [{"topic": COMMAND, "joints": ["j0"]}]}, r"'joints' needs a sensor_msgs/JointState topic"),
    ({"action": [{"topic": COMMAND, "indices": [0, 7]}]}, r"has 3 values; 'indices' asks for 7"),
    ({"instruction": None}, r"run_000.mcap episode 0: no instruction. Fix: set 'instruction"),
    ({"stamp": "header", "action": [{"topic": COMMAND, "stamp": "header"}]}, r"has no header.*set 'stamp: log'"),
])
def test_mapping_that_does_not_match_the_recording_names_file_topic_and_fix(bag, change, error):
    with pytest.raises(DatasetError, match=error):
        aligned([bag[0]], robot_mapping(**change))


@pytest.mark.parametrize("spec,change,error", [
    (BagSpec(seconds=1, front_encoding="yuv422"), {}, r"x.mcap topic /cam_front/image_raw: unknown image encoding 'yuv422'"),
    (BagSpec(seconds=1, front_encoding="16UC1"), {}, r"x.mcap topic /cam_front/image_raw: 16UC1 is a depth.*depth_range"),
    (BagSpec(seconds=1, front_encoding="8UC3"), {}, r"'8UC3' does not say the channel order.*'encoding: bgr8'"),
    (BagSpec(seconds=1, zero_stamps=(WRIST,)), {}, r"x.mcap topic /cam_wrist/image_raw/compressed: header.stamp is zero"),
])
def test_bad_recordings_name_file_topic_and_fix(tmp_path, spec, change, error):
    path = write_robot_bag(tmp_path / "x.mcap", spec)
    with pytest.raises(DatasetError, match=error):
        aligned([path], robot_mapping(**change))


def test_depth_is_converted_only_when_asked(tmp_path):
    path = write_robot_bag(tmp_path / "d.mcap", BagSpec(seconds=1.2, front_encoding="16UC1"))
    m = robot_mapping(cameras={"front": {"topic": FRONT, "depth_range": [0.0, 65.535]}, "wrist": {"topic": WRIST}})
    (ep,) = aligned([path], m)[0].episodes
    img = ep.images[FRONT_KEY]
    assert img.shape[-1] == 3 and (img[..., 0] == img[..., 2]).all()  # grey in three channels


def test_not_an_mcap_file_bag_folders_and_sqlite_bags(bag, tmp_path):
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not an mcap file at all")
    with pytest.raises(DatasetError, match=r"junk.mcap: not an MCAP file"):
        aligned([junk], robot_mapping())
    # a rosbag2 folder split in two files is one episode, the same as the single file
    spec = BagSpec()
    folder = tmp_path / "bag"
    every = {t: (1.5, 99) for t in spec.rates}
    write_robot_bag(folder / "bag_0.mcap", BagSpec(silent=every))
    write_robot_bag(folder / "bag_1.mcap", BagSpec(silent={t: (0, 1.5) for t in spec.rates}))
    (folder / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": {
        "version": 5, "storage_identifier": "mcap", "relative_file_paths": ["bag_0.mcap", "bag_1.mcap"]}}))
    (split,) = aligned([tmp_path / "bag"], robot_mapping())
    (whole,) = aligned([bag[0]], robot_mapping())
    np.testing.assert_array_equal(split.episodes[0].actions, whole.episodes[0].actions)
    (folder / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": {"storage_identifier": "sqlite3"}}))
    with pytest.raises(DatasetError, match=r"stored as 'sqlite3', not MCAP. Fix: `ros2 bag convert"):
        find_recordings([folder])


def test_mapping_file_errors():
    with pytest.raises(ConfigError, match="missing 'fps'"):
        McapMapping.resolve("cameras: {front: /x}\naction: next_state\nstate: [{topic: /j}]")
    with pytest.raises(ConfigError, match="unknown key 'camera'.*Did you mean 'cameras'"):
        McapMapping.resolve({"fps": 10, "camera": {}, "cameras": {"f": "/x"}, "action": "next_state"})
    with pytest.raises(ConfigError, match="on_gap must be 'cut'"):
        McapMapping.resolve(robot_mapping(on_gap="skip"))
    with pytest.raises(ConfigError, match="does not exist; write one"):
        McapMapping.resolve("no_such_mapping.yaml")
    with pytest.raises(ConfigError, match="MCAP needs a mapping file"):
        convert(["x.mcap"], "out", source_format="mcap")
    with pytest.raises(ConfigError, match="--episodes selects LeRobot episodes"):
        convert(["x.mcap"], "out", source_format="mcap", mapping=robot_mapping(), episodes=[0])


def test_cli_inspect_prints_rates_and_a_starter_mapping_that_converts(bag, tmp_path, capsys):
    path, _ = bag
    starter = tmp_path / "robot.yaml"
    assert data_main(["inspect-mcap", str(path), "--mapping-out", str(starter)]) == 0
    out = capsys.readouterr().out
    assert "/cam_front/image_raw" in out and "sensor_msgs/Image" in out and "encoding=bgr8, size=48x32" in out
    assert "30.00" in out and "50.00" in out and "joints=['gripper', 'j2', 'j0', 'j1']" in out
    assert data_main(["convert", str(path), "--mapping", str(starter), "--out", str(tmp_path / "ds"),
                      "--no-progress"]) == 2  # the starter's placeholders must be filled in first
    assert "TODO placeholder" in capsys.readouterr().err
    text = starter.read_text().replace("'TODO: describe the task'", "wave").replace("TODO_robot", "arm")
    starter.write_text(text)
    assert data_main(["convert", str(path), "--mapping", str(starter), "--out", str(tmp_path / "ds"),
                      "--no-progress", "--license", "mit"]) == 0
    assert "wrote 1 episodes" in capsys.readouterr().out
    assert data_main(["inspect-mcap", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["topics"][JOINT_STATES]["rate_hz"] == 50.0
    assert data_main(["convert", str(path), "--mapping", str(starter), "--out", str(tmp_path / "ds"),
                      "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_help_teaches_with_examples(capsys):
    for cmd in (["convert", "--help"], ["inspect-mcap", "--help"]):
        with pytest.raises(SystemExit):
            data_main(cmd)
        text = capsys.readouterr().out
        assert "examples:" in text and "mcap" in text.lower()
    root = Path(__file__).resolve().parents[3]
    for doc in ("docs/data.md", "docs/mcap_mapping.md"):  # the data reference and the mapping example
        assert "--from mcap --mapping robot.yaml" in (root / doc).read_text()
    assert "docs/mcap_mapping.md" in (root / "README.md").read_text()


def test_short_finetune_reads_the_converted_recordings_and_its_card_names_them(tmp_path):
    torch = pytest.importorskip("torch")
    from vla.commands.finetune import main as finetune_main
    from vla.finetune.testing import tiny_run_args
    from vla.backbones.tiny import save_tiny_vlm

    bags = [write_robot_bag(tmp_path / f"run_{i:03d}.mcap", BagSpec(seconds=1.6 + 0.2 * i)) for i in range(3)]
    data = tmp_path / "ds"
    convert(bags, data, mapping=robot_mapping(), license="cc-by-4.0", progress=False)
    base = save_tiny_vlm(tmp_path / "base", "llava")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path / "run"
        assert finetune_main(tiny_run_args(base, {"arm": data}, run, train__steps=3, eval__trace_episodes=0,
                                           data__val_fraction=0.34)) == 0
    finally:
        torch.set_num_threads(threads)
    card = (run / "README.md").read_text()
    assert "Source recordings" in card and "source_format=mcap" in card and "cc-by-4.0" in card
    for b in bags:
        assert f"`{b.name}` sha256 `{hashlib.sha256(b.read_bytes()).hexdigest()}`" in card
