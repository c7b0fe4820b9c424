# Over 400 lines: every simulator and the data generator, checked on shared headless renders.
"""Simulated environments and scripted-expert data generation (real MuJoCo, headless, tiny images)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla.errors import ConfigError, DatasetError, InvalidInputError
from vla.sim import camera_key, list_tasks, make_env
from vla.sim.generate import generate_dataset, rollout_expert

PX = 32  # tiny frames keep the suite fast; rendering cost is mostly per frame


@pytest.fixture(scope="module")
def mw():
    env = make_env("metaworld", task="reach-v3", cameras=["corner2", "topview"], image_size=PX)
    yield env
    env.close()


@pytest.fixture(scope="module")
def aloha():
    env = make_env("aloha", cameras=["top"], image_size=PX)
    yield env
    env.close()


@pytest.fixture(scope="module")
def so101():
    env = make_env("so101", image_size=PX)
    yield env
    env.close()


def _same(a: dict, b: dict) -> bool:
    return a["images"].keys() == b["images"].keys() and all(
        np.array_equal(a["images"][k], b["images"][k]) for k in a["images"]
    ) and np.array_equal(a["state"], b["state"])


def _images_differ(a: dict, b: dict) -> bool:
    return any(not np.array_equal(a["images"][k], b["images"][k]) for k in a["images"])


# -- interface ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mw", "aloha", "so101"])
def test_reset_is_deterministic_per_seed(name, request):
    env = request.getfixturevalue(name)
    a, b, c = env.reset(seed=3), env.reset(seed=3), env.reset(seed=4)
    assert _same(a, b)
    assert _images_differ(a, c)  # the object / goal placement depends on the seed
    emb = env.embodiment
    assert set(a["images"]) == set(emb.cameras) == {camera_key(cam) for cam in env.cameras}
    for key, img in a["images"].items():
        assert key.startswith("observation.images.")
        assert img.dtype == np.uint8 and img.shape == (*emb.camera_shapes[key], 3)
    assert a["state"].dtype == np.float32 and a["state"].shape == (emb.state_dim,)
    assert env.expert_action().shape == (emb.action_dim,)
    assert isinstance(env.instruction, str) and len(env.instruction.split()) >= 3
    assert emb.chunk_size == 1 and emb.action_stats is None  # a policy's embodiment adds its chunk and statistics


def test_trajectory_is_deterministic(mw):
    def run():
        obs = mw.reset(seed=11)
        out = [obs]
        for _ in range(15):
            obs, _, _ = mw.step(mw.expert_action())
            out.append(obs)
        return out

    assert all(_same(a, b) for a, b in zip(run(), run()))


def test_embodiments(mw, aloha, so101):
    specs = {e.env_name: e.embodiment for e in (mw, aloha, so101)}
    assert (specs["metaworld"].name, specs["metaworld"].action_dim, specs["metaworld"].control_hz) == ("sawyer", 4, 80.0)
    assert (specs["aloha"].name, specs["aloha"].action_dim, specs["aloha"].control_hz) == ("aloha", 14, 50.0)
    assert (specs["so101"].name, specs["so101"].action_dim, specs["so101"].control_hz) == ("so101", 4, 10.0)
    assert specs["aloha"].action_names == specs["aloha"].state_names  # absolute joint targets


def test_non_square_images_and_no_render():
    env = make_env("metaworld", task="reach-v3", cameras=["corner2", "topview"], image_size=(24, 40))
    obs = env.reset(seed=0)
    assert [img.shape for img in obs["images"].values()] == [(24, 40, 3)] * 2
    blind = env.reset(seed=0, render=False)
    assert blind["images"] == {} and np.array_equal(blind["state"], obs["state"])
    env.close()


def test_metaworld_has_mt10_with_instructions():
    from vla.sim.metaworld_env import INSTRUCTIONS, MT10

    assert len(MT10) == 10 and set(MT10) <= set(list_tasks("metaworld"))
    assert len(set(INSTRUCTIONS.values())) == len(INSTRUCTIONS)  # one distinct instruction per task


def test_corner_cameras_are_rotated():
    # Meta-World's corner cameras render upside down: ours are MuJoCo's frames turned by 180 degrees.
    from vla.sim.rendering import CameraRenderer

    cams = ["corner", "corner2", "topview"]
    env = make_env("metaworld", task="reach-v3", cameras=cams, image_size=PX)
    obs = env.reset(seed=0)
    raw = CameraRenderer(env._env.model, cams, (PX, PX)).render(env._env.data)
    for cam in cams:
        expected = raw[cam][::-1, ::-1] if cam.startswith("corner") else raw[cam]
        np.testing.assert_array_equal(obs["images"][camera_key(cam)], expected)
    env.close()


def test_so101_gripper_camera_follows_the_grasp_point():
    from vla.sim.so101_env import GRIPPER_CAMERA_AIM

    with make_env("so101", cameras=["workspace", "gripper"], image_size=PX) as env:
        first = env.reset(seed=3)
        start = env.grasp_point
        for _ in range(8):
            obs = env.step(env.expert_action())[0]
        assert np.linalg.norm(env.grasp_point - start) > 0.1  # the expert has moved the jaws
        view = env._renderer._views["gripper"]
        np.testing.assert_allclose(view.lookat, env.grasp_point + GRIPPER_CAMERA_AIM, atol=1e-9)
        assert _images_differ(first, obs)
        assert obs["images"][camera_key("gripper")].shape == (PX, PX, 3)


def test_headless_gl_is_set_up_by_the_package(mw):
    import os

    import vla.sim

    assert vla.sim.GL_BACKEND in ("egl", "osmesa")
    assert os.environ["MUJOCO_GL"] == os.environ["PYOPENGL_PLATFORM"] == vla.sim.GL_BACKEND


def test_osmesa_fallback_renders_the_same_pixels(mw):
    # The software fallback must give bit-identical frames, so data and evaluation agree across machines.
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib, vla.sim; from vla.sim import make_env; "
            f"e = make_env('metaworld', task='reach-v3', cameras=['corner2'], image_size={PX}); "
            "print(vla.sim.GL_BACKEND, hashlib.md5(e.reset(seed=0)['images']['observation.images.corner2'].tobytes()).hexdigest())")
    env = {k: v for k, v in os.environ.items() if k != "PYOPENGL_PLATFORM"}
    env["MUJOCO_GL"] = "osmesa"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    here = hashlib.md5(mw.reset(seed=0)["images"][camera_key("corner2")].tobytes()).hexdigest()
    assert out.stdout.split() == ["osmesa", here]


# -- experts ------------------------------------------------------------------------------------

def _run_expert(env, seed):
    """Physics-only expert episode (the experts read simulator state, never pixels)."""
    success, ep = rollout_expert(env, seed, render=False)
    assert ep["images"] == {} and len(ep["actions"]) == env.steps
    return success, env.steps


@pytest.mark.parametrize("seed", [0, 1])
def test_metaworld_expert_succeeds(mw, seed):
    success, steps = _run_expert(mw, seed)
    assert success and steps < mw.max_steps


def test_metaworld_pick_place_expert_succeeds():
    env = make_env("metaworld", task="pick-place-v3", image_size=PX)
    success, steps = _run_expert(env, 5)
    env.close()
    assert success and steps < 200


def test_so101_expert_succeeds(so101):
    for seed in (0, 1):
        success, steps = _run_expert(so101, seed)
        assert success and steps < 100
        goal, block = so101.goal_pos, so101._env.data.sensor("block_pos").data
        assert np.linalg.norm(goal[:2] - block[:2]) < 0.03  # the cube really is on the goal


def test_aloha_expert_succeeds_and_chunk_stops_at_success(aloha):
    success, steps = _run_expert(aloha, 0)
    assert success and steps < aloha.max_steps
    # step_chunk with the whole plan: stops at the first success, long before the plan ends.
    aloha.reset(seed=1)
    plan = aloha.plan_expert()
    obs, success, done = aloha.step_chunk(plan)
    assert success and done and aloha.steps < len(plan)
    assert obs["images"][camera_key("top")].shape == (PX, PX, 3)
    with pytest.raises(RuntimeError, match="reset"):
        aloha.step(plan[0])


@pytest.mark.parametrize("name", ["so101", "aloha"])
def test_stages_record_the_furthest_milestone(name, request):
    """The expert passes every milestone, in order, before it succeeds; a still arm passes none."""
    env = request.getfixturevalue(name)
    env.reset(seed=2, render=False)
    history = []
    while not env.done:
        env.step(env.expert_action(), render=False)
        history.append(env.stage_reached)
    assert env.success and history[-1] == len(env.stages)
    assert history == sorted(history)  # the furthest milestone so far never goes back
    # the milestones come from the simulator state, not from success (the last may coincide with it)
    assert set(history[:-1]) >= set(range(len(env.stages)))

    still = env.reset(seed=2, render=False)["state"]
    hold = np.array([0.0, 0.0, 0.0, 1.0]) if name == "so101" else still  # so101: no motion, jaws open
    for _ in range(20):
        env.step(hold, render=False)
    assert env.stage_reached == 0


def test_unstable_physics_ends_the_episode_as_a_failure(aloha):
    """Joint targets far outside the joints' range blow up dm_control's physics (PhysicsError): the episode
    ends there as a failure, flagged ``diverged``, and the next reset starts a clean one."""
    aloha.reset(seed=1, render=False)
    wild = np.full(14, 1e4)
    while not aloha.done:
        obs, success, done = aloha.step(wild * (-1) ** aloha.steps, render=True)
    assert aloha.diverged and not success and aloha.steps < 50  # far before max_steps (400)
    assert obs["images"][camera_key("top")].shape == (PX, PX, 3)
    with pytest.raises(RuntimeError, match="reset"):
        aloha.step(wild)
    aloha.reset(seed=2, render=False)
    assert not aloha.diverged and not aloha.done
    while not aloha.done:
        aloha.step(aloha.expert_action(), render=False)
    assert aloha.success and not aloha.diverged


def test_aloha_cube_follows_seed(aloha):
    from gym_aloha.utils import sample_box_pose

    aloha.reset(seed=7)
    np.testing.assert_allclose(aloha.cube_pose, sample_box_pose(7))
    np.testing.assert_allclose(aloha.body_position("box"), sample_box_pose(7)[:3], atol=1e-6)


def test_step_chunk_respects_max_steps():
    env = make_env("metaworld", task="reach-v3", image_size=PX, max_steps=5)
    env.reset(seed=0)
    obs, success, done = env.step_chunk(np.zeros((10, 4)))
    assert done and not success and env.steps == 5
    env.close()


# -- bad input ----------------------------------------------------------------------------------

def test_bad_names_list_valid_ones(mw):
    with pytest.raises(ConfigError, match=r"Valid environments: \['metaworld', 'aloha', 'so101'\]"):
        make_env("mujoco")
    with pytest.raises(ConfigError, match="pick-place-v3") as e:
        make_env("metaworld", task="pick-place")
    assert "Did you mean" in str(e.value)
    with pytest.raises(ConfigError, match="transfer-cube"):
        make_env("aloha", task="insertion")
    with pytest.raises(ConfigError, match="corner2"):
        make_env("metaworld", cameras=["nope"])
    with pytest.raises(ConfigError, match=r"\['front', 'workspace', 'gripper'\]"):
        make_env("so101", cameras=["wrist"])  # rejected before the simulator is built
    fresh = make_env("metaworld", task="reach-v3", image_size=8)
    with pytest.raises(RuntimeError, match="reset"):
        fresh.step(np.zeros(4))
    fresh.close()
    with pytest.raises(ConfigError, match="image_size"):
        make_env("so101", image_size=4)
    mw.reset(seed=0)
    with pytest.raises(InvalidInputError, match=r"shape \(4,\)"):
        mw.step(np.zeros(3))
    with pytest.raises(InvalidInputError, match="NaN"):
        mw.step(np.array([0, np.nan, 0, 0]))
    with pytest.raises(ConfigError, match="seed"):
        mw.reset(seed=-1)


# -- generation ---------------------------------------------------------------------------------

def test_generate_writes_deterministic_dataset(tmp_path):
    from vla.data.lerobot import LeRobotDataset

    reports = [
        generate_dataset("metaworld", ["reach-v3", "button-press-topdown-v3"], 1, 5, PX, tmp_path / name, progress=False)
        for name in ("a", "b")
    ]
    r = reports[0]
    assert (r.episodes_written, r.episodes_failed, r.episodes_attempted) == (2, 0, 2)
    assert r.written == [("reach-v3", 5), ("button-press-topdown-v3", 5)]
    a, b = LeRobotDataset(tmp_path / "a"), LeRobotDataset(tmp_path / "b")
    assert a.num_episodes == 2 and sum(a.episode_length(i) for i in range(2)) == r.frames
    for i in range(2):
        ea, eb = a.episode(i), b.episode(i)
        np.testing.assert_array_equal(ea.actions, eb.actions)
        np.testing.assert_array_equal(ea.states, eb.states)
    assert a.episode(0).task == "reach the red target point with the gripper"
    assert a.episode(1).task == "press the red button down from above"
    frames = a.frames(0, camera_key("corner2"), [0, 1])
    assert frames.shape == (2, PX, PX, 3) and frames.dtype == np.uint8
    info = json.loads((tmp_path / "a" / "meta" / "info.json").read_text())
    prov = info["provenance"]
    assert prov["seed"] == 5 and prov["episodes"]["written_task_seed"][1] == ["button-press-topdown-v3", 5]
    assert prov["simulator"].startswith("metaworld 3.1.1") and info["license"] == "mit" and info["fps"] == 80
    stats = json.loads((tmp_path / "a" / "meta" / "stats.json").read_text())
    assert {"q01", "q99", "mean", "std"} <= set(stats["action"])


def test_generate_lossless_frames_are_the_renders(tmp_path):
    # The default video blurs colour (yuv420p, crf 20); --lossless must give a policy the frames a
    # simulator sends at run time.
    from vla.data.lerobot import LeRobotDataset

    errors = {}
    for lossless in (False, True):
        out = tmp_path / f"lossless_{lossless}"
        generate_dataset("so101", None, 1, 3, 64, out, lossless=lossless, progress=False)
        ds = LeRobotDataset(out)
        with make_env("so101", image_size=64) as env:
            rendered = next(iter(env.reset(seed=3)["images"].values()))
        decoded = ds.frame(0, 0, camera_key("workspace"))
        errors[lossless] = np.abs(decoded.astype(int) - rendered.astype(int))
        info = json.loads((out / "meta" / "info.json").read_text())
        assert info["features"][camera_key("workspace")]["info"]["video.pix_fmt"] == ("yuv444p" if lossless else "yuv420p")
    assert errors[True].max() <= 2 and errors[False].max() > 20
    with pytest.raises(ConfigError, match="lossless video needs codec h264"):
        generate_dataset("so101", None, 1, 0, 64, tmp_path / "av1", codec="av1", lossless=True, progress=False)


def test_generate_drops_and_counts_failures(tmp_path):
    # Find how long the expert needs per seed, then cut episodes so that only the quick ones succeed.
    env = make_env("metaworld", task="reach-v3", image_size=8)
    lengths = {s: _run_expert(env, s)[1] for s in range(3)}
    env.close()
    limit = sorted(lengths.values())[1]  # the quickest seeds succeed, the slowest fails
    expect_ok = [s for s, n in lengths.items() if n <= limit]
    report = generate_dataset("metaworld", ["reach-v3"], 3, 0, PX, tmp_path / "ds", max_steps=limit, progress=False)
    assert [s for _, s in report.written] == expect_ok
    assert report.episodes_failed == 3 - len(expect_ok) >= 1
    info = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == len(expect_ok)
    assert [s for _, s in info["provenance"]["episodes"]["failed_task_seed"]] == [s for s in range(3) if s not in expect_ok]


def test_generate_all_failed_writes_nothing(tmp_path):
    with pytest.raises(DatasetError, match="all 2 expert episodes failed"):
        generate_dataset("metaworld", ["reach-v3"], 2, 0, PX, tmp_path / "ds", max_steps=3, progress=False)
    assert not any(tmp_path.iterdir())  # no dataset and no partial directory left behind


def test_rollout_pairs_observation_with_action(so101):
    success, ep = rollout_expert(so101, 2)
    T = len(ep["actions"])
    assert success and ep["states"].shape == (T, so101.embodiment.state_dim)
    assert ep["images"][camera_key("workspace")].shape == (T, PX, PX, 3)
    assert np.array_equal(ep["states"][0], so101.reset(seed=2)["state"])  # frame 0 is the reset observation


def test_cli(tmp_path, capsys):
    from vla.commands.data_generate import main as generate_main

    with pytest.raises(SystemExit) as e:
        generate_main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert "vla data generate --env" in help_text and "transfer-cube" in help_text and "(default: 128)" in help_text
    assert generate_main(["--env", "metaworld", "--tasks", "reach", "--episodes", "1", "--out", str(tmp_path / "x")]) == 2
    assert "Valid metaworld tasks" in capsys.readouterr().err
    code = generate_main(["--env", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--image-size", str(PX),
                          "--out", str(tmp_path / "ds"), "--json", "--no-progress"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["episodes_written"] == 1 and report["bytes"] > 0 and report["seconds_per_episode"] > 0


def _replay_states(env, seed: int, actions: np.ndarray) -> np.ndarray:
    states = [env.reset(seed, render=False)["state"]]
    for a in actions[:-1]:
        states.append(env.step(a, render=False)[0]["state"])
    return np.stack(states)


def test_dart_noise_perturbs_execution_but_records_the_expert(so101, tmp_path, monkeypatch):
    clean_ok, clean = rollout_expert(so101, 3, render=False)
    noisy_ok, noisy = rollout_expert(so101, 3, render=False, action_noise=0.15)
    executed, step = [], so101.step
    monkeypatch.setattr(so101, "step", lambda a, render=True: (executed.append(np.array(a)), step(a, render=render))[1])
    again_ok, again = rollout_expert(so101, 3, render=False, action_noise=0.15)
    monkeypatch.undo()
    assert clean_ok and noisy_ok and again_ok
    np.testing.assert_array_equal(noisy["actions"], again["actions"])  # seeded noise: deterministic
    assert not np.array_equal(noisy["states"], clean["states"])  # the robot went off the clean path
    # Clean data replays exactly; noisy data does not, because the recorded actions are the
    # expert's labels, not the perturbed actions the robot executed.
    np.testing.assert_array_equal(_replay_states(so101, 3, clean["actions"]), clean["states"])
    assert not np.allclose(_replay_states(so101, 3, noisy["actions"]), noisy["states"])
    executed = np.stack(executed)  # what the robot was told: position perturbed, grasp (noise_unit 0) exact
    assert np.all(np.abs(executed[:, :3] - again["actions"][:, :3]) > 0)
    np.testing.assert_array_equal(executed[:, 3], again["actions"][:, 3])

    generate_dataset("so101", None, 1, 3, PX, tmp_path / "ds", action_noise=0.15, progress=False)
    prov = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())["provenance"]
    assert prov["action_noise"]["std"] == 0.15 and prov["action_noise"]["unit"] == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ConfigError, match="action_noise must be a finite number >= 0"):
        generate_dataset("so101", None, 1, 3, PX, tmp_path / "bad", action_noise=-0.1, progress=False)
