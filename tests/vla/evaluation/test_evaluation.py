"""`vla eval`: closed loop in real Meta-World, seed separation, report, open loop, server parity.

One tiny generated dataset (3 scripted reach-v3 episodes, seeds 0..2, 32 px) and one tiny random
policy whose embodiment is the simulator's, with fine-tuning-style training provenance pointing at
that dataset. The server is the real one (`vla serve` on 127.0.0.1), started early so
it boots while the in-process tests run, and stopped by PID.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from servers import start_server, stop_server, wait_ready
from vla.errors import ConfigError
from vla.evaluation.policies import PolicySource
from vla.evaluation.report import wilson_interval
from vla.evaluation.seeds import SeedOverlapError, check_seeds, collect_training_seeds, format_ranges

REPO = Path(__file__).resolve().parents[3]
TASK = "reach-v3"
STEPS = 8  # closed-loop step cap: a few chunks per episode
EVAL_SEEDS = dict(episodes=2, seed_start=3)  # the training data used seeds 0..2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from vla.sim.generate import generate_dataset

    out = tmp_path_factory.mktemp("evdata") / "mw"
    generate_dataset("metaworld", [TASK], 3, 0, 32, out, max_steps=150, progress=False)
    return out


@pytest.fixture(scope="module")
def ckpt(dataset, tmp_path_factory):
    from vla.data.lerobot import LeRobotDataset
    from vla.evaluation.testing import make_tiny_env_checkpoint

    # what `vla finetune` records: the config's split settings and each dataset's provenance
    training = {"tool": "vla finetune", "config": {"seed": 0, "data": {"val_fraction": 0.34}},
                "datasets": [{"name": "mw", "path": str(dataset), "provenance": LeRobotDataset(dataset).provenance}]}
    return make_tiny_env_checkpoint(tmp_path_factory.mktemp("evckpt") / "ckpt", "metaworld", task=TASK,
                                    training=training)


@pytest.fixture(scope="module")
def server_proc(ckpt, tmp_path_factory):
    """Start the server (not yet waiting for it): it boots while the in-process tests run."""
    proc, url, log = start_server(ckpt, tmp_path_factory.mktemp("evserve"))
    try:
        yield proc, url, log
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def server(server_proc):
    wait_ready(*server_proc)
    return server_proc[1]


@pytest.fixture(scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    yield 1  # tiny models on a shared 2-core machine: more threads only contend
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inproc(ckpt, server_proc, one_thread, tmp_path_factory):
    """One in-process closed-loop evaluation, shared by the report and the parity tests."""
    from vla.evaluation.closed_loop import evaluate

    out = tmp_path_factory.mktemp("evout")
    report = evaluate("metaworld", [TASK], source=PolicySource("model", model=str(ckpt), threads=one_thread),
                      max_steps=STEPS, actions_per_chunk=2, record_dir=str(out / "videos"), record_episodes=1,
                      record_format="gif", out_dir=str(out), **EVAL_SEEDS)
    return report, out


# ------------------------------------------------------------------------------------ statistics
def test_wilson_interval_reference_values():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)  # textbook Wilson score interval
    assert wilson_interval(0, 2)[0] == 0.0 and 0.6 < wilson_interval(0, 2)[1] < 0.7
    assert wilson_interval(5, 5)[1] == pytest.approx(1.0) and wilson_interval(5, 5)[0] > 0.5
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0  # exact, not 1e-17 off
    narrow, wide = wilson_interval(50, 100), wilson_interval(5, 10)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    assert format_ranges([5, 0, 1, 2, 7, 8]) == "0..2, 5, 7..8"


# ------------------------------------------------------------------------------------ seeds
def test_bar_plot_of_a_task_never_solved(tmp_path):
    from vla.evaluation.report import bar_plot

    block = {"successes": 0, "episodes": 10, "success_rate": 0.0, "ci95": list(wilson_interval(0, 10))}
    report = {"env": "metaworld", "policy": {"source": "model"}, "tasks": {"push-v3": block}, "overall": block}
    assert bar_plot(report, tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_training_seeds_from_dataset_and_checkpoint(dataset, ckpt):
    from_data, none, _ = collect_training_seeds(train_data=[dataset])
    from_ckpt, _, _ = collect_training_seeds(model_dirs=[ckpt])
    assert none == [] and [(s.env, s.task, s.seeds) for s in from_data] == [("metaworld", TASK, [0, 1, 2])]
    assert [(s.env, s.task, s.seeds) for s in from_ckpt] == [("metaworld", TASK, [0, 1, 2])]
    # a remote server publishes the same provenance in /metadata (policy.metadata())
    from vla import VLAPolicy
    from vla.evaluation.seeds import seeds_from_training

    meta = VLAPolicy.from_pretrained(ckpt).metadata()
    from_meta, _ = seeds_from_training({"datasets": meta["training_datasets"]}, "server")
    assert [(s.env, s.task, s.seeds) for s in from_meta] == [("metaworld", TASK, [0, 1, 2])]

    with pytest.raises(SeedOverlapError, match=r"(?s)seeds 2 were used.*first free seed: 3.*--allow-seed-overlap"):
        check_seeds("metaworld", [TASK], [2, 3], from_ckpt)
    allowed = check_seeds("metaworld", [TASK], [2, 3], from_ckpt, allow_overlap=True)
    assert allowed.overlap == {TASK: [2]} and "OVERLAP" in allowed.summary()
    # the same seed on another task or simulator is another initial state
    assert check_seeds("metaworld", ["push-v3"], [0, 1], from_ckpt).overlap == {}
    assert check_seeds("so101", ["pick-place"], [0, 1], from_ckpt).overlap == {}
    clean = check_seeds("metaworld", [TASK], [3, 4], from_ckpt)
    assert clean.verified and "disjoint" in clean.summary()


def test_cli_refuses_overlapping_seeds(ckpt, capsys):
    from vla.commands.eval import main

    rc = main(["--env", "metaworld", "--tasks", TASK, "--episodes", "2", "--seed-start", "1", "--model", str(ckpt),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "seeds 1..2 were used to generate training data" in err and "--seed-start 3" in err


def test_cli_help_teaches():
    from vla.commands.eval import build_parser

    text = build_parser().format_help()
    for needle in ("examples:", "--seed-start", "default: 100000", "Wilson", "--open-loop", "--parity", "--workers"):
        assert needle in text, needle


# ------------------------------------------------------------------------------------ closed loop
def test_closed_loop_report(inproc):
    report, out = inproc
    task = report["tasks"][TASK]
    assert task["episodes"] == 2 and 0 <= task["successes"] <= 2
    lo, hi = task["ci95"]
    assert 0 <= lo <= task["success_rate"] <= hi <= 1 and hi > lo
    assert report["overall"]["episodes"] == 2
    assert [e["seed"] for e in report["episodes"]] == [3, 4]
    for e in report["episodes"]:
        assert 1 <= e["length"] <= STEPS
        if not e["success"]:  # k=2 of H=4: one policy call per 2 executed actions
            assert e["length"] == STEPS and e["policy_calls"] == STEPS // 2
    t = report["timing"]
    assert t["latency_ms"]["n"] == sum(e["policy_calls"] for e in report["episodes"])
    assert 0 < t["latency_ms"]["p50"] <= t["latency_ms"]["p95"]
    assert t["achieved_hz"] > 0 and t["control_hz"] == 80.0
    assert t["realtime_factor"] == pytest.approx(t["achieved_hz"] / 80.0)
    assert report["policy"]["actions_per_chunk"] == 2 and report["policy"]["chunk_size"] == 4
    seeds = report["seeds"]
    assert seeds["verified"] and seeds["overlap"] == {} and seeds["eval"] == "3..4 per task"
    assert seeds["training"][0]["seeds"] == "0..2"
    assert report["settings"]["cameras"] == ["corner2"] and report["settings"]["image_size"] == [32, 32]
    assert "stages" not in task and all(e["stage"] is None for e in report["episodes"])  # Meta-World has none
    assert task["diverged"] == 0 and not any(e["diverged"] for e in report["episodes"])

    saved = json.loads((out / "results.json").read_text())
    assert saved["tasks"] == json.loads(json.dumps(report["tasks"]))
    assert (out / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    videos = report["files"]["videos"]
    assert len(videos) == 1 and videos[0].endswith(".gif") and Path(videos[0]).stat().st_size > 0
    from PIL import Image

    with Image.open(videos[0]) as gif:  # 80 Hz is shown at <= 25 fps; first and last frames kept
        assert gif.size[1] >= 128 and gif.n_frames >= 2


def test_realtime_mode_holds_the_control_rate(ckpt, one_thread):
    """Background inference, loop paced at 80 Hz: never faster than the robot's clock; k defaults to H/2."""
    from vla.evaluation.closed_loop import evaluate

    report = evaluate("metaworld", [TASK], 1, 3, PolicySource("model", model=str(ckpt), threads=one_thread),
                      max_steps=STEPS, realtime=True)
    t, e = report["timing"], report["episodes"][0]
    assert report["policy"]["prefetch"] and report["policy"]["actions_per_chunk"] == 2
    assert e["wall_s"] >= (e["length"] - 1) / 80.0 and t["achieved_hz"] <= 80.0 * 1.05
    assert t["starved_steps"] >= 1  # the first chunk is always waited for


def test_expert_through_the_loop_succeeds(one_thread):
    from vla.evaluation.closed_loop import evaluate

    report = evaluate("metaworld", [TASK], 2, 100, PolicySource("expert"), image_size=32)
    task = report["tasks"][TASK]
    assert task["success_rate"] == 1.0 and task["ci95"][0] > 0.3
    assert all(e["success"] and e["length"] < 150 for e in report["episodes"])
    assert "scripted expert" in report["seeds"]["summary"]


def test_summarize_combines_runs_into_a_suite(inproc, one_thread, tmp_path, capsys):
    from vla.commands.eval import main
    from vla.evaluation.closed_loop import evaluate

    report, out = inproc
    expert = evaluate("metaworld", [TASK], 2, 100, PolicySource("expert"), image_size=32, max_steps=150,
                      out_dir=str(tmp_path / "expert"))
    assert main(["--summarize", str(out), str(tmp_path / "expert" / "results.json"), "--out", str(tmp_path / "s")]) == 0
    table = capsys.readouterr().out
    suite = json.loads((tmp_path / "s" / "suite.json").read_text())
    rates = [report["tasks"][TASK]["success_rate"], expert["tasks"][TASK]["success_rate"]]
    assert [row["success_rate"] for row in suite["tasks"]] == rates
    assert suite["mean_task_success"] == pytest.approx(sum(rates) / 2) and suite["pooled"]["episodes"] == 4
    assert f"mean over 2 tasks | **{sum(rates) / 2:.1%}**" in table and "3..4 per task" in table
    assert (tmp_path / "s" / "suite.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "s" / "suite.md").is_file()

    (tmp_path / "other.json").write_text('{"kind": "vla.eval/open_loop"}')
    assert main(["--summarize", str(tmp_path / "other.json")]) == 2
    assert "not a closed-loop `vla eval` report" in capsys.readouterr().err


def test_stages_show_how_far_episodes_got(one_thread, tmp_path):
    """SO-101 declares milestones: each episode records the furthest; tasks, table and suite count them."""
    from vla.evaluation.closed_loop import evaluate
    from vla.evaluation.report import format_table
    from vla.evaluation.suite import format_suite_markdown, summarize_suite
    from vla.evaluation.testing import make_tiny_env_checkpoint

    ckpt = make_tiny_env_checkpoint(tmp_path / "so101", "so101")
    policy = evaluate("so101", None, 2, 100_000, PolicySource("model", model=str(ckpt), threads=one_thread),
                      max_steps=6)
    expert = evaluate("so101", None, 2, 100_000, PolicySource("expert"), image_size=32)
    for report in (policy, expert):
        block, eps = report["tasks"]["pick-place"], report["episodes"]
        assert list(block["stages"]) == ["reached", "lifted"]
        for i, name in enumerate(block["stages"], start=1):
            reached = sum(e["stage"] >= i for e in eps)
            assert block["stages"][name]["episodes"] == reached and block["stages"][name]["rate"] == reached / 2
            lo, hi = block["stages"][name]["ci95"]
            assert lo <= reached / 2 <= hi
    assert all(e["stage"] == 2 for e in expert["episodes"])  # success passes every milestone
    assert "stages:   pick-place: reached 2/2 · lifted 2/2" in format_table(expert)
    counts = [sum(e["stage"] >= i for e in policy["episodes"]) for i in (1, 2)]
    rows = format_suite_markdown(summarize_suite([policy, expert])).splitlines()
    assert rows[2].endswith(f"| reached {counts[0]}/2 · lifted {counts[1]}/2 |")
    assert rows[3].endswith("| reached 2/2 · lifted 2/2 |")


def test_diverged_episodes_are_counted_as_failures():
    from vla.evaluation.report import summarize

    def episode(success: bool, diverged: bool) -> dict:
        return {"task": "transfer-cube", "success": success, "length": 12 if diverged else 40, "wall_s": 1.0,
                "policy_s": 0.5, "policy_calls": 3, "latencies_ms": [10.0], "stage": 0, "diverged": diverged}

    report = summarize([episode(True, False), episode(False, True), episode(False, True)], ["transfer-cube"], 50.0)
    block = report["tasks"]["transfer-cube"]
    assert (block["successes"], block["diverged"]) == (1, 2) and report["overall"]["diverged"] == 2


def test_bad_configurations_are_explained(ckpt):
    from vla.evaluation.closed_loop import evaluate

    src = PolicySource("model", model=str(ckpt))
    with pytest.raises(ConfigError, match="no embodiment 'aloha'.*knows \\['sawyer'\\]"):
        evaluate("aloha", None, 1, 1000, src)
    with pytest.raises(ConfigError, match="between 1 and the chunk size H=4"):
        evaluate("metaworld", [TASK], 1, 1000, src, actions_per_chunk=5)
    with pytest.raises(ConfigError, match="unknown metaworld task 'reach-v2'.*reach-v3"):
        evaluate("metaworld", ["reach-v2"], 1, 1000, src)


# ------------------------------------------------------------------------------------ open loop
def test_open_loop_on_held_out_episodes(dataset, ckpt, one_thread, tmp_path):
    from vla.data.lerobot import LeRobotDataset
    from vla.data.samples import split_episodes
    from vla.evaluation.open_loop import open_loop_eval
    from vla.policy import VLAPolicy

    report = open_loop_eval(str(dataset), PolicySource("model", model=str(ckpt), threads=one_thread),
                            out_dir=str(tmp_path))
    _, val = split_episodes([0, 1, 2], 0.34, 0, "mw")
    assert report["episodes"] == val and "validation split" in report["episodes_note"]
    assert len(report["l1_per_dim"]) == 4 and len(report["l1_per_horizon_step"]) == 4
    # the first-action L1 recomputed independently from the policy and the recorded episode
    ds, policy = LeRobotDataset(dataset), VLAPolicy.from_pretrained(ckpt)
    ep = ds.episode(val[0])
    idx = np.arange(0, ep.length, 4)
    frames = ds.frames(val[0], "observation.images.corner2", idx)
    first = np.stack([policy.predict({"observation.images.corner2": f}, ep.task, "sawyer").actions[0] for f in frames])
    np.testing.assert_allclose(report["l1_first_action_per_dim"], np.abs(first - ep.actions[idx]).mean(0), atol=1e-9)
    for p in report["files"]["plots"]:
        assert Path(p).read_bytes()[:4] == b"\x89PNG"
    assert any("episode" in Path(p).name for p in report["files"]["plots"])


# ------------------------------------------------------------------------------------ through the server
def test_server_closed_loop_matches_in_process_with_workers(server, inproc, ckpt):
    """The robot's path (VLAClient + chunk executor, 2 spawned workers) gives the same episodes."""
    from vla.evaluation.closed_loop import evaluate

    report = evaluate("metaworld", [TASK], source=PolicySource("server", url=server), max_steps=STEPS,
                      actions_per_chunk=2, workers=2, **EVAL_SEEDS)
    ref = inproc[0]["episodes"]
    for a, b in zip(report["episodes"], ref, strict=True):
        assert (a["seed"], a["success"], a["length"], a["policy_calls"]) == (b["seed"], b["success"], b["length"],
                                                                             b["policy_calls"])
        assert a["action_l1"] == pytest.approx(b["action_l1"], abs=1e-6)
        np.testing.assert_allclose(a["final_state"], b["final_state"], atol=1e-6)
    # the server runs on this machine: its checkpoint's provenance is found through /metadata
    assert report["seeds"]["verified"] and report["seeds"]["training"][0]["seeds"] == "0..2"
    assert report["timing"]["server_model_ms"]["n"] > 0
    assert report["policy"]["source"] == "server" and report["policy"]["image_encoding"] == "png"


def test_parity_server_vs_in_process(server, dataset, ckpt, one_thread, tmp_path, capsys):
    from vla.commands.eval import main

    rc = main(["--parity", "--data", str(dataset), "--server", server, "--model", str(ckpt), "--episodes", "1",
               "--threads", str(one_thread), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "parity.json").read_text())
    assert rc == 0 and report["frames"] > 0 and report["max_abs_diff"] <= 1e-6, out
    assert "OK" in out and report["identical_frames"] >= 1
    assert math.isfinite(report["server_ms_per_frame"]) and report["server_model_id"] == str(ckpt)


def test_robustness_through_the_server_matches_in_process(server, ckpt, one_thread, tmp_path):
    """A perturbed scene is drawn from the seed: the server path and the in-process path run the same episode."""
    from vla.evaluation.closed_loop import evaluate
    from vla.evaluation.robustness import run_robustness

    seeds = dict(episodes=1, seed_start=3)
    report = run_robustness("metaworld", [TASK], source=PolicySource("server", url=server), max_steps=STEPS,
                            actions_per_chunk=2, perturbations=["camera"], out_dir=tmp_path, **seeds)
    local = evaluate("metaworld", [TASK], source=PolicySource("model", model=str(ckpt), threads=one_thread),
                     max_steps=STEPS, actions_per_chunk=2, perturb=("camera", 1.0), **seeds)
    served = json.loads((tmp_path / "camera" / "results.json").read_text())
    nominal = json.loads((tmp_path / "nominal" / "results.json").read_text())
    assert served["perturbation"]["factor"] == "camera" and served["policy"]["source"] == "server"
    assert served["episodes"][0]["scene"] == local["episodes"][0]["scene"] != {}
    assert served["episodes"][0]["action_l1"] == pytest.approx(local["episodes"][0]["action_l1"], abs=1e-6)
    assert nominal["perturbation"] is None and nominal["episodes"][0]["scene"] == {}
    assert [r["condition"] for r in report["rows"]] == ["nominal", "camera"]
