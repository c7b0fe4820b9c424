"""Domain randomization on the three real simulators: seeded scenes, stored in the dataset, changing the
rendered frames and the physics; config errors; the robustness suite's report (tiny frames, short episodes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla.errors import ConfigError
from vla.sim import make_env
from vla.sim.randomization import DYNAMICS, FACTORS, VISUAL, load_config, parse_perturbation, perturbation_config, sample

PX = 16
TASKS = {"metaworld": "reach-v3", "so101": "pick-place", "aloha": "transfer-cube"}


def _only(env_name: str, factors) -> dict:
    return load_config(env_name, {f: "off" for f in FACTORS if f not in factors})


def _frames(obs: dict) -> np.ndarray:
    return np.concatenate([obs["images"][k] for k in sorted(obs["images"])])


def test_config_defaults_overrides_and_errors(tmp_path, capsys):
    cfg = load_config("so101")
    assert set(cfg) == set(FACTORS) and cfg["latency"] == {"steps": [0, 0]}  # bounded: the expert fails at 1
    assert perturbation_config("so101", "latency") == {"latency": {"steps": [0, 1]}}  # a policy is tested at 1
    f = tmp_path / "dr.yaml"
    f.write_text("light: {intensity: [0.9, 1.1]}\nlatency: off\n")
    cfg = load_config("so101", f)
    assert cfg["light"] == {"direction_deg": 30.0, "intensity": [0.9, 1.1]} and "latency" not in cfg
    with pytest.raises(ConfigError, match=r"unknown randomization factor 'lights'. Did you mean 'light'\?"):
        load_config("so101", {"lights": {}})
    with pytest.raises(ConfigError, match=r"unknown randomization parameter friction.range; friction takes \['scale'\]"):
        load_config("so101", {"friction": {"range": [1, 2]}})
    with pytest.raises(ConfigError, match=r"mass.scale is a multiplier: both ends must be > 0"):
        load_config("so101", {"mass": {"scale": [0, 2]}})
    with pytest.raises(ConfigError, match=r"latency.steps must have low <= high"):
        load_config("so101", {"latency": {"steps": [3, 1]}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("so101", tmp_path / "missing.yaml")
    from vla.commands.data_generate import main as generate_main

    f.write_text("camera: {position: 0.1}\n")
    assert generate_main(["--env", "so101", "--episodes", "1", "--randomize-config", str(f), "--out", str(tmp_path / "x")]) == 2
    assert "unknown randomization parameter camera.position; camera takes ['angle_deg', 'position_m']" in capsys.readouterr().err
    assert parse_perturbation("camera") == ("camera", 1.0) and parse_perturbation("latency=2") == ("latency", 2.0)
    assert perturbation_config("aloha", "latency", 2) == {"latency": {"steps": [0, 4]}}
    assert perturbation_config("so101", "friction", 0.5) == {"friction": {"scale": [0.85, 1.15]}}
    with pytest.raises(ConfigError, match="Did you mean 'friction'"):
        parse_perturbation("frictoin")
    with pytest.raises(ConfigError, match=r"level of 'light' must be a number > 0.*got 'x'"):
        parse_perturbation("light=x")


def test_scene_is_drawn_from_the_seed_factor_by_factor():
    cfg = load_config("metaworld")
    a, b = sample(cfg, 7, "metaworld"), sample(cfg, 8, "metaworld")
    assert a == sample(cfg, 7, "metaworld") and set(a) == set(FACTORS)
    assert all(a[f] != b[f] for f in FACTORS if f not in ("distractors", "latency"))  # integers may coincide
    # each factor has its own stream: a factor alone draws what it draws among all the others
    assert sample(_only("metaworld", ["camera"]), 7, "metaworld") == {"camera": a["camera"]}
    assert json.loads(json.dumps(a)) == a  # stored as JSON, rebuilt exactly


@pytest.mark.parametrize("env_name", list(TASKS))
def test_randomized_generation_lands_in_the_dataset(env_name, tmp_path, capsys):
    from vla.commands.data import main as data_main
    from vla.data.lerobot import LeRobotDataset
    from vla.sim.generate import generate_dataset

    cfg = load_config(env_name)
    generate_dataset(env_name, [TASKS[env_name]], 1, 4, PX, tmp_path / "ds", randomize=cfg, progress=False)
    prov = LeRobotDataset(tmp_path / "ds").provenance["randomization"]
    assert prov["config"] == cfg
    [ep] = prov["episodes"]
    assert (ep["episode_index"], ep["seed"]) == (0, 4) and ep["scene"] == sample(cfg, 4, env_name)
    assert data_main(["info", str(tmp_path / "ds")]) == 0
    text = capsys.readouterr().out
    assert "randomized   light(direction_deg=30.0" in text and f"episode 0 ({TASKS[env_name]}, seed 4): light " in text


@pytest.mark.parametrize("env_name", list(TASKS))
def test_visual_factors_change_frames_and_dynamics_change_physics(env_name):
    with make_env(env_name, TASKS[env_name], image_size=PX) as env:
        def run(config, seed=4):
            env.set_randomization(config)
            first = env.reset(seed)
            for _ in range(5):
                obs = env.step(env.expert_action(), render=False)[0]
            return first, obs["state"], dict(env.scene)

        nominal, nominal_state, scene = run(None)
        assert scene == {}
        visual, visual_state, scene = run(_only(env_name, VISUAL))
        assert set(scene) == set(VISUAL)
        assert not np.array_equal(_frames(visual), _frames(nominal))
        np.testing.assert_array_equal(visual_state, nominal_state)  # visual factors leave the physics alone
        again = run(_only(env_name, VISUAL))[0]
        np.testing.assert_array_equal(_frames(again), _frames(visual))  # same seed, same scene
        other = run(_only(env_name, VISUAL), seed=5)[0]
        assert set(np.flatnonzero((_frames(other) != _frames(visual)).any(-1)))  # another seed, another scene
        dynamic, dynamic_state, scene = run(_only(env_name, DYNAMICS))
        assert set(scene) == set(DYNAMICS)
        assert not np.allclose(dynamic_state, nominal_state)
        back, back_state, _ = run(None)  # off again: the nominal model is restored exactly
        np.testing.assert_array_equal(_frames(back), _frames(nominal))
        np.testing.assert_array_equal(back_state, nominal_state)


def test_dynamics_factors_write_the_model_fields():
    with make_env("so101", image_size=PX) as env:
        m = env._mj_model()
        nominal = {f: getattr(m, f).copy() for f in ("geom_friction", "body_mass", "dof_damping", "actuator_gainprm")}
        env.set_randomization(load_config("so101", {"friction": {"scale": [2, 2]}, "mass": {"scale": [3, 3]},
                                                    "damping": {"scale": [1.5, 1.5]}, "gain": {"scale": [0.5, 0.5]},
                                                    **{f: "off" for f in VISUAL + ("action_noise", "latency")}}))
        env.reset(0, render=False)
        block = m.body("block").id
        np.testing.assert_allclose(m.geom_friction[:, 0], 2 * nominal["geom_friction"][:, 0])
        assert m.body_mass[block] == pytest.approx(3 * nominal["body_mass"][block])
        assert m.body_mass[m.body("base").id] == nominal["body_mass"][m.body("base").id]  # only the task object
        np.testing.assert_allclose(m.dof_damping[:6], 1.5 * nominal["dof_damping"][:6])
        np.testing.assert_allclose(m.actuator_gainprm[:, 0], 0.5 * nominal["actuator_gainprm"][:, 0])
        np.testing.assert_allclose(m.actuator_biasprm[:, 1], -m.actuator_gainprm[:, 0])  # still a position servo

        # latency 2: the first two steps execute the hold action, whatever was commanded
        env.set_randomization(load_config("so101", {"latency": {"steps": [2, 2]},
                                                    **{f: "off" for f in FACTORS if f != "latency"}}))
        env.reset(0, render=False)
        delayed = [env.step(np.array([1.0, 0, 0, 1.0]), render=False)[0]["state"] for _ in range(2)]
        env.set_randomization(None)
        env.reset(0, render=False)
        held = [env.step(np.array([0.0, 0, 0, 1.0]), render=False)[0]["state"] for _ in range(2)]
        np.testing.assert_array_equal(delayed, held)


def test_perturbed_eval_reports_each_factor(tmp_path, capsys):
    from vla.commands.eval import main as eval_main

    code = eval_main(["--env", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--expert", "--max-steps", "150",
                      "--perturb", "latency=2", "--out", str(tmp_path / "rob"), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| nominal | 1/1 (100%) |" in text and "| latency=2 | 1/1 (100%) |" in text
    report = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert [r["condition"] for r in report["rows"]] == ["nominal", "latency=2"]
    assert report["rows"][1]["summary"] == "latency(steps=[0, 4])" and report["rows"][1]["verdict"] == "within noise"
    cond = json.loads((tmp_path / "rob" / "latency_2" / "results.json").read_text())
    assert cond["perturbation"]["factor"] == "latency" and cond["episodes"][0]["scene"] == sample(
        perturbation_config("metaworld", "latency", 2), 100000, "metaworld")
    assert (tmp_path / "rob" / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert eval_main(["--env", "metaworld", "--expert", "--perturb", "lightning", "--out", str(tmp_path / "x")]) == 2
    assert "unknown perturbation factor 'lightning'. Did you mean 'light'?" in capsys.readouterr().err


def test_difference_interval_reference_values():
    from vla.evaluation.robustness import difference_interval

    lo, hi = difference_interval(56, 70, 48, 80)  # Newcombe (1998), Table II, example (a), method 10
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)
