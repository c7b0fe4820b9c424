"""`vla doctor` on a tiny policy and data generated in the SO-101 simulator: every check runs for
real (simulator, local server, a memorization run), and a planted fault is found and named."""

import json

import pytest

from vla.evaluation.testing import make_tiny_env_checkpoint
from vla.commands.doctor import main as doctor_main
from vla.doctor import diagnose, format_report, markdown_summary
from vla.finetune.overfit import memorize_and_replay
from vla.sim.generate import generate_dataset


@pytest.fixture(scope="module")
def so101(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor")
    data = root / "so101"
    generate_dataset("so101", None, 2, 0, 32, data, progress=False)
    return make_tiny_env_checkpoint(root / "ckpt", "so101", image_size=32, chunk_size=4), data


def test_doctor_runs_every_check_and_gives_a_verdict(so101, tmp_path):
    ckpt, data = so101
    report = diagnose(str(ckpt), [str(data)], replay_episodes=2, frame_episodes=1, overfit=memorize_and_replay, overfit_steps=20,
                      progress=False)
    (r,) = report["datasets"]
    c = r["checks"]
    assert [d["name"] for d in c["round_trip"]["dims"]] == ["delta_x", "delta_y", "delta_z", "grasp"]
    assert all(d["clipped_share"] == 0 for d in c["round_trip"]["dims"])  # auto normalization covers the data
    assert all(0 < d["max_error"] <= 2 / 32 for d in c["round_trip"]["dims"][:3])  # within one of 32 bins
    rp = c["replay"]
    assert rp["exact_successes"] == 2 and len(rp["episodes"]) == 2
    assert rp["hold_command"][:3] == [0.0, 0.0, 0.0]
    assert rp["hold_drift_exact"] < 1e-9 and rp["hold_drift_round_trip"] < 1e-9  # the zero bin decodes to 0
    assert c["frames"]["lossless_video"] and c["frames"]["pixel_max"] <= 2  # stored as rendered
    assert 0 <= c["frames"]["token_agreement"] <= 1
    assert len(c["tracking"]["episodes"]) == 1 and c["tracking"]["mean_error_of_range"] > 0  # the expert drove
    assert c["parity"]["frames"] > 0 and c["parity"]["max_abs_diff"] <= 1e-5  # a real `vla serve` answered
    dp = c["dtype_parity"]  # the same frames in fp32 and bf16, in-process
    assert dp["frames"] == 16 and 0.9 <= dp["token_agreement"] <= 1 and 0 <= dp["l1_normalized"] <= 0.05
    of = c["overfit"]
    assert of["mode"] == "closed loop" and of["steps"] == 20 and 0 <= of["token_accuracy"] <= 1
    # 20 steps do not memorize an episode on a random tiny model: the doctor says so and how to fix it
    assert not of["memorized"] and any(f.startswith("memorize:") and "--overfit-steps" in f for f in r["faults"])
    # the tiny policy has 32 bins: up to 1.6% of a dimension's range is lost, and the doctor says why
    assert any(f.startswith("round trip:") and "raise model.bins" in f for f in r["faults"]), r["faults"]
    assert not any(f.split(":")[0] in ("hold", "parity", "frames") for f in r["faults"]), r["faults"]
    assert "| so101 | auto | 0.0% |" in markdown_summary(report)  # the model card's table
    text = format_report(report)
    assert "replay in so101: exact 2/2" in text and "verdict: pipeline fault: " in text
    assert f"bf16 vs fp32 (in-process, 16 frames): token agreement {dp['token_agreement']:.1%}" in text


def test_doctor_finds_a_planted_hold_fault_and_the_cli_reports_it(so101, tmp_path, capsys):
    ckpt, data = so101
    config = json.loads((ckpt / "vla_config.json").read_text())
    for e in config["embodiments"]:
        e["snap_zero"] = False  # decode bin centres only, as checkpoints did before exact zero
    faulty = tmp_path / "faulty"
    faulty.mkdir()
    for f in ckpt.iterdir():
        (faulty / f.name).write_bytes(f.read_bytes())
    (faulty / "vla_config.json").write_text(json.dumps(config))
    out = tmp_path / "doctor.json"
    code = doctor_main(["--model", str(faulty), "--data", str(data), "--replay-episodes", "1", "--frame-episodes", "0",
                        "--no-parity", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1
    report = json.loads(out.read_text())
    rp = report["datasets"][0]["checks"]["replay"]
    assert rp["hold_drift_round_trip"] > 1e-3 > rp["hold_drift_exact"]
    assert "fault: hold: " in printed and "exactly 0" in printed and "verdict: pipeline fault: round trip; hold" in printed


def test_doctor_bad_input_names_the_thing_and_the_fix(tmp_path, capsys):
    assert doctor_main(["--no-model", "--data", str(tmp_path / "nope"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "vla doctor:" in err and "nope" in err
    with pytest.raises(SystemExit) as e:
        doctor_main(["--help"])
    assert e.value.code == 0 and "memorize" in capsys.readouterr().out
