"""`vla improve` for real: a tiny policy fine-tuned on SO-101 expert data, two DAgger rounds, a crash and a resume."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vla.backbones.tiny import save_tiny_vlm
from vla.data.lerobot import LeRobotDataset, LeRobotWriter
from vla.data.outcomes import LABEL_SOURCES, sparse_outcomes
from vla.errors import DatasetError
from vla.commands.finetune import main as finetune_main
from vla.commands.improve import main as improve_main
from vla.finetune.improve.loop import adapter_sha256
from vla.finetune.testing import tiny_run_args
from vla.sim.generate import generate_dataset

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A tiny policy fine-tuned (3 steps) on 3 SO-101 expert episodes rendered at 32 px."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("improve")
    generate_dataset("so101", None, 3, 0, 32, root / "demos", progress=False)
    base = save_tiny_vlm(root / "base", "llava")
    assert finetune_main(tiny_run_args(base, {"so101": root / "demos"}, root / "run", train__steps=3,
                                       data__val_fraction=0.34)) == 0
    yield root
    torch.set_num_threads(threads)


def _loop_args(start, *extra):
    return ["--from", str(start / "run"), "--sim", "so101", "--episodes", "2", "--eval-episodes", "1",
            "--steps", "2", "--max-steps", "16", "--no-baseline", "--no-progress", *extra]


@pytest.fixture(scope="module")
def loop(start):
    out = start / "loop"
    assert improve_main(_loop_args(start, "--out", str(out), "--rounds", "2")) == 0
    return out


def test_round_datasets_carry_expert_labels_rewards_and_provenance(start, loop):
    r1 = LeRobotDataset(loop / "round-01" / "rollouts" / "so101")
    assert r1.num_episodes == 2  # DAgger keeps failures too: their states are what the demonstrations lack
    prov = r1.provenance
    assert prov["round"] == 1 and prov["mode"] == "dagger" and prov["beta"] == 0.5
    assert prov["policy"]["sha256"] == adapter_sha256(start / "run")
    assert prov["expert"] == "lerobot_env_so101.scripted.PickPlaceController"
    assert prov["episodes"]["written_task_seed"] == [["pick-place", 1000], ["pick-place", 1001]]
    assert prov["reward_source"] == "simulator success detector"
    sources = set()
    for i in range(r1.num_episodes):
        ep = r1.episode(i)
        o = ep.outcomes
        assert o["next.done"][-1] and not o["next.done"][:-1].any()
        np.testing.assert_array_equal(o["next.reward"], o["next.success"].astype(np.float32))
        sources |= {LABEL_SOURCES[c] for c in o["label_source"]}
        # the expert's labels, not the random policy's actions: SO-101's controller commands the grasp 0 or 1
        assert set(np.unique(ep.actions[:, 3])) <= {0.0, 1.0}
    assert {"expert_continuation", "demonstration"} <= sources <= {"expert_continuation", "demonstration",
                                                                   "expert_relabel"}  # beta 0.5: both drove
    assert prov["labels"].startswith("DAgger: where a policy chunk began, the expert's own next actions")
    r2 = LeRobotDataset(loop / "round-02" / "rollouts" / "so101").provenance
    assert r2["beta"] == 0.25 and r2["episode_seeds"].startswith("1002..1003")
    assert r2["policy"]["sha256"] == adapter_sha256(loop / "round-01" / "train")
    # round 2 trained on the demonstrations and both rounds, warm-started from round 1
    train = json.loads((loop / "round-02" / "train" / "vla_config.json").read_text())["training"]
    assert sorted(d["name"] for d in train["datasets"]) == ["so101", "so101_round01", "so101_round02"]
    assert train["config"]["init_from"] == str(loop / "round-01" / "train")
    report = json.loads((loop / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert (loop / "improvement.png").is_file()
    assert "Self-improvement (`vla improve`)" in (loop / "round-02" / "train" / "README.md").read_text()


@pytest.mark.parametrize("labels", ["continuation", "path"])
def test_dagger_labels_are_the_experts_plan_from_each_chunk_start_or_its_label_at_each_frame(start, labels):
    from vla.finetune.improve.loop import _policy_fit
    from vla.finetune.improve.rollouts import RolloutPlan, RolloutRunner
    from vla.sim import make_env

    fit = _policy_fit(str(start / "run"), "so101")
    k = fit["chunk_size"]
    plan = RolloutPlan(env="so101", checkpoint=str(start / "run"), embodiment=fit["embodiment"],
                       cameras=fit["cameras"], image_size=fit["image_size"], actions_per_chunk=k,
                       uses_state=fit["uses_state"], expert="scripted", mode="dagger", beta=0.0, seed=0, round=1,
                       max_steps=3 * k, labels=labels)
    runner = RolloutRunner(plan)
    try:
        ro = runner.run("pick-place", 1000)
    finally:
        runner.close()
    assert ro.policy_steps == ro.length == 3 * k and not ro.expert_steps
    code = LABEL_SOURCES.index("expert_continuation" if labels == "continuation" else "expert_relabel")
    assert (ro.sources == code).all()
    with make_env("so101", "pick-place", image_size=32) as env:  # checked on a simulator of its own
        for t in range(0, ro.length, k):
            env.reset(1000, render=False)
            for a in ro.executed[:t]:
                env.step(a, render=False)
            if labels == "path":  # the expert's label at every state the policy visited
                for j in range(k):
                    np.testing.assert_array_equal(ro.labels[t + j], env.expert_label())
                    env.step(ro.executed[t + j], render=False)
            else:  # the expert's own next k actions from where the chunk began
                for j in range(k):
                    np.testing.assert_array_equal(ro.labels[t + j], env.expert_label())
                    env.step(ro.labels[t + j], render=False)
    # the policy's own actions were executed, not the labels
    assert not np.array_equal(ro.executed, ro.labels)


def test_resumed_loop_rewrites_the_same_round(start, loop, tmp_path):
    crashed = tmp_path / "crashed"
    shutil.copytree(loop, crashed)
    shutil.rmtree(crashed / "round-02")  # the crash: round 2 never happened
    assert improve_main(["--resume", str(crashed), "--no-progress"]) == 0
    for part in ("data/chunk-000/file-000.parquet",):
        a = pq.read_table(loop / "round-02" / "rollouts" / "so101" / part)
        b = pq.read_table(crashed / "round-02" / "rollouts" / "so101" / part)
        assert a.equals(b)
    da = LeRobotDataset(loop / "round-02" / "rollouts" / "so101")
    db = LeRobotDataset(crashed / "round-02" / "rollouts" / "so101")
    cam = next(iter(da.cameras))
    n = da.episode_length(0)
    np.testing.assert_array_equal(da.frames(0, cam, range(n)), db.frames(0, cam, range(n)))


def test_evaluation_seeds_and_bad_plans_are_refused(start, tmp_path, capsys):
    out = tmp_path / "overlap"
    assert improve_main(_loop_args(start, "--out", str(out), "--rollout-seed-start", "100000")) == 2
    err = capsys.readouterr().err
    assert "overlap" in err and "100000" in err
    assert "--rollout-seed-start at most 99996" in err and "--eval-seed-start 100004" in err  # its own options
    assert "--allow-seed-overlap" not in err
    assert not out.exists()  # refused before anything was written
    assert improve_main(_loop_args(start, "--out", str(out), "--expert", "none")) == 2
    assert "--mode dagger needs an expert" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        improve_main(_loop_args(start, "--out", str(out), "--labels", "future"))
    assert "invalid choice: 'future'" in capsys.readouterr().err
    assert improve_main(["--resume", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "no improve.json" in capsys.readouterr().err


def test_outcomes_are_required_when_declared_and_filter_training(tmp_path):
    from vla.finetune.config import FinetuneConfig
    from vla.finetune.data import select_episodes

    cams = {"observation.images.top": (16, 16)}
    frames = {"observation.images.top": np.zeros((4, 16, 16, 3), np.uint8)}
    with LeRobotWriter(tmp_path / "ds", fps=10, robot_type="arm", action_names=["a"], state_names=[], cameras=cams,
                       outcomes=True) as w:
        with pytest.raises(DatasetError, match="outcomes .* are required"):
            w.add_episode(np.zeros((4, 1)), None, frames, "t")
        w.add_episode(np.zeros((4, 1)), None, frames, "t", outcomes=sparse_outcomes(4, False, "policy"))
        w.add_episode(np.ones((4, 1)), None, frames, "t", outcomes=sparse_outcomes(4, True, "policy"))
    ds = LeRobotDataset(tmp_path / "ds")
    assert select_episodes(ds, "successful", "ds") == [1] and select_episodes(ds, "all", "ds") == [0, 1]
    from vla.data.info import describe, format_summary

    text = format_summary(describe(tmp_path / "ds"))
    assert "1/2 episodes succeed (50%)" in text and "policy 8 frames" in text
    assert FinetuneConfig.from_dict({"datasets": {"ds": {"path": "x", "episodes": "successful"}}})
