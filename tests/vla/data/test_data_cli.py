"""`vla data` command line: info (text/JSON), convert, and generate forwarding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla.commands.data import main
from vla.data.lerobot import LeRobotDataset
from vla.data.synthetic import write_rlds, write_synthetic

G1 = Path(__file__).resolve().parents[2] / "fixtures" / "lerobot_v21_g1_real"


def test_info_g1_text_and_json(capsys):
    assert main(["info", str(G1)]) == 0
    out = capsys.readouterr().out
    for s in ("LeRobot v2.1", "Unitree_G1_Inspire", "100  (1 with files, 99 missing)", "640x480 (av1)",
              "26-D: kLeftShoulderPitch", "Pick up the yellow bottle", "MIT License", "episodes_stats.jsonl",
              "lack q01/q99"):
        assert s in out, s
    assert main(["info", str(G1), "--json", "--compute-stats"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["episodes"] == 100 and d["episodes_with_files"] == 1 and d["fps"] == 30
    st = d["statistics"]
    assert "1 episode" in st["source"] and len(st["action"]["q01"]) == 26 and st["action"]["count"] == 393


def test_info_synthesized_names_are_reported(tmp_path, capsys):
    root, _ = write_synthetic(tmp_path / "ds", episodes=1)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["action"].pop("names")
    (root / "meta/info.json").write_text(json.dumps(info))
    assert main(["info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3-D: action_0, action_1, action_2" in out and "action names synthesized" in out


def test_info_and_convert_rlds(tmp_path, capsys):
    write_rlds(tmp_path / "rlds" / "data.tfrecord", episodes=2)
    assert main(["info", str(tmp_path / "rlds"), "--mapping", "rt1"]) == 0
    out = capsys.readouterr().out
    assert "RLDS (TFRecord)" in out and "7-D: x, y, z, roll, pitch, yaw, gripper_closedness" in out
    rc = main(["convert", str(tmp_path / "rlds"), "--from", "rlds", "--mapping", "rt1", "--to", "lerobot-v2.1",
               "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0 and "wrote 2 episodes" in capsys.readouterr().out
    assert LeRobotDataset(tmp_path / "out").version == "v2.1"


def test_convert_errors_are_clear(tmp_path, capsys):
    root, _ = write_synthetic(tmp_path / "ds", episodes=1)
    assert main(["convert", str(root), "--out", str(root), "--no-progress"]) == 2
    assert "already exists" in (err := capsys.readouterr().err) and "--overwrite" in err
    assert main(["convert", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "nothing: it does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot tell the format" in err and "no meta/info.json" in err
    with pytest.raises(SystemExit):
        main(["convert", str(root), "--out", str(tmp_path / "o"), "--episodes", "1,x"])


def test_help_texts_teach(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "vla data convert" in out and "generate" in out


def test_generate_is_forwarded(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0
    assert "vla data generate" in capsys.readouterr().out
