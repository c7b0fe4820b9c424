"""Experts that label any state (DAgger): ``SimEnv.expert_label`` takes over from states other drivers reached."""

from __future__ import annotations

import numpy as np
import pytest

from vla.errors import VLAError
from vla.sim import ExpertUnavailable, make_env


@pytest.fixture(scope="module")
def mw():
    env = make_env("metaworld", task="push-v3")
    yield env
    env.close()


@pytest.fixture(scope="module")
def so101():
    env = make_env("so101")
    yield env
    env.close()


@pytest.fixture(scope="module")
def aloha():
    env = make_env("aloha")
    yield env
    env.close()


def _take_over(env) -> bool:
    """Let expert_label drive until the episode ends; each label asked twice must agree."""
    while not env.done:
        label = env.expert_label()
        assert np.array_equal(label, env.expert_label())  # idempotent without stepping
        assert label.dtype == np.float32 and label.shape == (env.embodiment.action_dim,)
        env.step(label, render=False)
    return env.success


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_so101_label_takes_over_after_random_actions(so101, seed):
    """Random motions and grasps move the arm and jaws off the expert's path (its phase counter would be
    out of step with the world); the state-read phase still places the cube."""
    rng = np.random.default_rng(seed)
    so101.reset(seed, render=False)
    for _ in range(15):
        so101.step(np.r_[rng.uniform(-1, 1, 3), rng.uniform(0, 1)], render=False)
    assert _take_over(so101)


def test_so101_label_takes_over_with_the_cube_in_the_jaws(so101):
    """Hand over mid-carry: the expert grasped and lifted, then a push moved the cube sideways in the air."""
    so101.reset(4, render=False)
    while so101.stage_reached < 2:
        so101.step(so101.expert_action(), render=False)
    for _ in range(3):
        so101.step([0.0, -1.0, 0.0, 0.0], render=False)  # carry it sideways, jaws still closed
    assert not so101.done
    assert _take_over(so101)


def test_so101_labels_follow_the_expert_on_its_path(so101):
    """On the expert's own path, the state-read phase gives the controller's action at most steps; the
    hold phases end when the jaws stop instead of after a fixed count, and there they differ."""
    same = total = 0
    for seed in (0, 1):
        so101.reset(seed, render=False)
        while not so101.done:
            action = so101.expert_action()
            same += int(np.allclose(action, so101.expert_label(), atol=1e-6))
            total += 1
            so101.step(action, render=False)
        assert so101.success
    assert same / total > 0.75, (same, total)


def test_metaworld_label_is_the_shipped_policy_and_takes_over(mw):
    mw.reset(0, render=False)
    for _ in range(5):
        assert np.array_equal(mw.expert_label(), mw.expert_action())  # stateless: the same policy
        mw.step(mw.expert_action(), render=False)
    for _ in range(30):  # push the hand away from the puck
        mw.step([-1.0, 1.0, 1.0, 0.0], render=False)
    assert _take_over(mw)


def test_aloha_labels_equal_the_plan_on_its_path(aloha):
    aloha.reset(1, render=False)
    for _ in range(60):
        action = aloha.expert_action()
        assert np.array_equal(action, aloha.expert_label())
        aloha.step(action, render=False)


@pytest.mark.parametrize("seed", [2, 3])
def test_aloha_replans_from_perturbed_states(aloha, seed):
    """Joint noise on top of the plan for 40 steps (the cube still on the table): the re-planned
    expert still hands the cube over."""
    rng = np.random.default_rng(seed)
    aloha.reset(seed, render=False)
    for _ in range(40):
        aloha.step(aloha.expert_action() + 0.02 * rng.standard_normal(14), render=False)
    assert aloha.task_stage() == "pick"
    assert _take_over(aloha)


def test_aloha_pries_a_hand_pushed_into_the_table_free(aloha):
    """A fast swing drives the right wrist through the tabletop, where the contact pushes it down and the
    joint-space homing alone leaves it stuck: the expert pries it free, homes and still hands the cube over."""
    aloha.reset(2, render=False)
    swing = aloha.expert_action()
    swing[7:10] = [0.0, 1.0, 0.0]  # right waist, shoulder forward, elbow straight
    for _ in range(13):
        aloha.step(swing, render=False)
    assert aloha.body_position("vx300s_right/gripper_link")[2] < 0.0  # under the tabletop's top
    assert aloha.task_stage() == "pick"
    assert _take_over(aloha)


def test_aloha_stage_reads_the_right_gripper_holding_the_cube(aloha):
    aloha.reset(3, render=False)
    while aloha.stage_reached < 2:  # lifted by the right gripper
        aloha.step(aloha.expert_action(), render=False)
    assert aloha.task_stage() == "carry"


def test_aloha_label_unavailable_when_the_cube_is_off_the_table(aloha):
    aloha.reset(0, render=False)
    aloha.step(aloha.expert_action(), render=False)
    physics = aloha._physics
    with physics.reset_context():  # drop the cube beside the table, as a flung cube lands
        physics.named.data.qpos["red_box_joint"][:3] = [0.0, 1.5, -0.5]
    with pytest.raises(ExpertUnavailable, match="cube is off the table.*End the episode") as err:
        aloha.expert_label()
    assert isinstance(err.value, VLAError)


def test_label_refuses_after_the_episode(so101):
    so101.reset(0, render=False)
    while not so101.done:
        so101.step(so101.expert_label(), render=False)
    with pytest.raises(RuntimeError, match="reset"):
        so101.expert_label()
