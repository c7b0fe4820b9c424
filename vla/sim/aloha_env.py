"""ALOHA bimanual transfer-cube (gym-aloha's MuJoCo scene) with an end-effector waypoint expert.

We drive gym-aloha's dm_control physics and task logic directly instead of ``AlohaEnv``: that
class renders three 640x480 cameras on every step and draws the cube pose unseeded.
"""

from __future__ import annotations

import numpy as np

from .base import EmbodimentSpec, SimEnv, camera_key
from .rendering import CameraRenderer

INSTRUCTIONS = {"transfer-cube": "pick up the red cube with the right arm and hand it over to the left arm"}
CAMERAS = ("top", "angle", "front_close", "left_pillar", "right_pillar", "left_wrist", "right_wrist")
# MuJoCo 3 makes gym-aloha's soft mocap welds too compliant for the scripted hand-over (1/10
# successes measured); this stiffer weld brings it back to 10/10.
WELD_SOLIMP = [0.9, 0.95, 0.001, 0.5, 2]
_SUCCESS_REWARD = 4  # gym-aloha: the left gripper holds the cube off the table
_IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])
_ARMS = ("left", "right")
# ACT's start targets are gripper_link positions at START_ARM_POSE, but gym-aloha's MuJoCo 3 weld
# holds the mocap 13.5 cm ahead of gripper_link, so reaching them pulls the arms back. We ramp
# into them over _RAMP steps: jumping there at once jerks the shoulders by ~0.8 rad in 4 steps,
# and skipping them sends the right wrist through its singularity (forearm roll and wrist rotate
# flip by pi) and misses far cubes (46/50 instead of 50/50).
_ACT_START = {"left": np.array([-0.31718881, 0.5, 0.29525084]), "right": np.array([0.31718881, 0.49999888, 0.29525084])}
_RAMP = 20


def _quat_about(axis, degrees: float) -> np.ndarray:
    import mujoco

    q = np.zeros(4)
    mujoco.mju_axisAngle2Quat(q, np.asarray(axis, dtype=np.float64), np.deg2rad(degrees))
    return q


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mulQuat(q, a, b)
    return q


def _pose_mul(p1, q1, p2, q2) -> tuple[np.ndarray, np.ndarray]:
    import mujoco

    r = np.zeros(9)
    mujoco.mju_quat2Mat(r, q1)
    return p1 + r.reshape(3, 3) @ p2, _quat_mul(q1, q2)


def _pose_inv(p, q) -> tuple[np.ndarray, np.ndarray]:
    import mujoco

    qi = np.zeros(4)
    mujoco.mju_negQuat(qi, q)
    r = np.zeros(9)
    mujoco.mju_quat2Mat(r, qi)
    return -r.reshape(3, 3) @ p, qi


def transfer_cube_waypoints(cube_xyz: np.ndarray, start_left: tuple, start_right: tuple) -> tuple[list, list]:
    """Left and right mocap waypoints ``(step, xyz, quat, gripper 0..1)`` for the hand-over.

    From the mocap poses that hold the arms still (``start_*`` = (xyz, quat)) a short ramp leads
    into ACT's start targets; then the right arm descends on the cube with its gripper pitched
    60 degrees down and lifts it to a meeting point above the table centre; the left arm, rolled
    90 degrees, closes on it there. Targets are mocap poses: the weld keeps the gripper a fixed
    offset behind them.
    """
    pick_quat = _quat_about([0, 1, 0], -60)
    meet_quat_left = _quat_about([1, 0, 0], 90)
    meet = np.array([0.0, 0.5, 0.25])
    left = [
        (0, *start_left, 0.0),
        (_RAMP, _ACT_START["left"], _IDENTITY, 0.0),
        (100, meet + [-0.1, 0, -0.02], meet_quat_left, 1.0),  # open and approach the meeting point
        (260, meet + [0.02, 0, -0.02], meet_quat_left, 1.0),  # slide in around the cube
        (310, meet + [0.02, 0, -0.02], meet_quat_left, 0.0),  # close
        (360, meet + [-0.1, 0, -0.02], _IDENTITY, 0.0),  # pull the cube away
        (400, meet + [-0.1, 0, -0.02], _IDENTITY, 0.0),
    ]
    right = [
        (0, *start_right, 0.0),
        (_RAMP, _ACT_START["right"], _IDENTITY, 0.0),
        (90, cube_xyz + [0, 0, 0.08], pick_quat, 1.0),  # above the cube, open
        (130, cube_xyz + [0, 0, -0.015], pick_quat, 1.0),  # down around it
        (170, cube_xyz + [0, 0, -0.015], pick_quat, 0.0),  # close
        (200, meet + [0.05, 0, 0], pick_quat, 0.0),  # lift towards the meeting point
        (220, meet, pick_quat, 0.0),
        (310, meet, pick_quat, 1.0),  # let go once the left gripper holds it
        (360, meet + [0.1, 0, 0], pick_quat, 1.0),
        (400, meet + [0.1, 0, 0], pick_quat, 1.0),
    ]
    return left, right


def _interpolate(waypoints: list, t: int) -> np.ndarray:
    """Pose (xyz, unit quat) and gripper at step t, linear between waypoints (held after the last)."""
    for (t0, x0, q0, g0), (t1, x1, q1, g1) in zip(waypoints, waypoints[1:]):
        if t0 <= t < t1:
            f = (t - t0) / (t1 - t0)
            q1 = q1 if np.dot(q0, q1) >= 0 else -q1  # same rotation; take the short way round
            q = q0 + (q1 - q0) * f
            return np.concatenate([x0 + (x1 - x0) * f, q / np.linalg.norm(q), [g0 + (g1 - g0) * f]])
    _, x, q, g = waypoints[-1]
    return np.concatenate([x, q, [g]])


class AlohaTransferCubeEnv(SimEnv):
    """Bimanual ALOHA (two ViperX 300s) transfer-cube; each seed draws the cube position.

    Actions and state: 14 absolute joint targets (per arm 6 joints + gripper normalised 0 closed
    .. 1 open), 50 Hz. The cube pose for seed s is gym-aloha's ``sample_box_pose(s)``.
    The expert is ACT-style: it plays end-effector waypoints in gym-aloha's mocap-driven scene
    (with a stiffer weld), records the joint trajectory, and replays it here step by step.
    """

    env_name = "aloha"
    tasks = tuple(INSTRUCTIONS)
    default_cameras = ("top",)
    all_cameras = CAMERAS
    expert_name = "vla.sim.aloha_env end-effector waypoint expert (ACT-style, replayed as joint targets)"
    licence = "Apache-2.0 (gym-aloha)"
    noise_unit = (1.0,) * 6 + (0.0,) + (1.0,) * 6 + (0.0,)  # radians; grippers untouched
    stages = ("touched", "lifted", "handover attempted")  # gym-aloha rewards 1-3 (4 is success), as ACT reports

    def __init__(self, task: str = "transfer-cube", cameras: list[str] | None = None, image_size=128,
                 max_steps: int = 400):
        super().__init__(task, cameras, image_size, max_steps)
        from dm_control import mujoco as dm_mujoco
        from dm_control.rl.control import PhysicsError
        from gym_aloha.constants import ASSETS_DIR, DT, JOINTS
        from gym_aloha.tasks.sim import TransferCubeTask
        from gym_aloha.tasks.sim_end_effector import TransferCubeEndEffectorTask

        self._physics = dm_mujoco.Physics.from_xml_path(str(ASSETS_DIR / "bimanual_viperx_transfer_cube.xml"))
        self.unstable_errors = (PhysicsError,)  # joint targets far outside the joints' range (mjWARN_BADQACC)
        self._task = TransferCubeTask()
        self._ee_physics = None  # built on the first expert call: evaluation never needs it
        self._ee_task = TransferCubeEndEffectorTask()
        self._ee_xml = str(ASSETS_DIR / "bimanual_viperx_end_effector_transfer_cube.xml")
        self._n_substeps = int(round(DT / self._physics.model.opt.timestep))
        self._dt = DT
        self._joints = list(JOINTS)
        self._renderer = CameraRenderer(self._physics.model.ptr, self.cameras, self.image_size)
        self._cube_pose: np.ndarray | None = None
        self._plan: np.ndarray | None = None
        self._reward = 0

    @property
    def simulator(self) -> str:  # type: ignore[override]
        from importlib.metadata import version

        return f"gym-aloha {version('gym-aloha')} (dm-control {version('dm-control')}, mujoco {version('mujoco')})"

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS[self.task]

    def _make_spec(self) -> EmbodimentSpec:
        return EmbodimentSpec(
            name="aloha", robot_type="aloha",
            action_names=list(self._joints), state_names=list(self._joints),
            control_hz=1.0 / self._dt,
            cameras={camera_key(c): self.image_size for c in self.cameras},
            description="bimanual ALOHA (ViperX 300s): absolute joint positions, grippers normalised 0 closed .. 1 open",
        )

    @property
    def cube_pose(self) -> np.ndarray:
        return self._cube_pose.copy()

    def body_position(self, name: str) -> np.ndarray:
        """World xyz (m) of a body of the scene now, e.g. ``"box"`` or ``"vx300s_right/left_finger_link"``."""
        return self._physics.named.data.xpos[name].copy()

    def _reset_sim(self, seed: int) -> None:
        from gym_aloha.tasks import sim as aloha_sim
        from gym_aloha.utils import sample_box_pose

        self._cube_pose = sample_box_pose(seed)
        aloha_sim.BOX_POSE[0] = self._cube_pose  # gym-aloha's documented way to place the cube
        with self._physics.reset_context():
            self._task.initialize_episode(self._physics)
        self._plan = None
        self._reward = 0

    def _apply(self, action: np.ndarray) -> tuple[bool, bool]:
        self._task.before_step(action, self._physics)
        self._physics.step(self._n_substeps)
        self._reward = self._task.get_reward(self._physics)
        return self._reward == _SUCCESS_REWARD, False

    def _stage(self) -> int:
        return min(self._reward, len(self.stages))

    def _state(self) -> np.ndarray:
        return self._task.get_qpos(self._physics)

    def _render(self) -> dict[str, np.ndarray]:
        return self._renderer.render(self._physics.data.ptr)

    def _build_ee_physics(self) -> None:
        from dm_control import mujoco as dm_mujoco

        physics = dm_mujoco.Physics.from_xml_path(self._ee_xml)
        physics.model.eq_solimp[:] = WELD_SOLIMP
        # MuJoCo 3 welds keep the mocap-to-gripper pose they have in the reference configuration
        # (qpos0); remember it, to start each plan from mocap poses that hold the arms still.
        import mujoco

        m, d = physics.model.ptr, physics.data.ptr
        mujoco.mj_resetData(m, d)
        mujoco.mj_forward(m, d)
        self._weld_offset = {}
        for arm in _ARMS:
            grip, mocap = d.body(f"vx300s_{arm}/gripper_link"), m.body(f"mocap_{arm}")
            self._weld_offset[arm] = _pose_mul(*_pose_inv(grip.xpos.copy(), grip.xquat.copy()),
                                               mocap.pos.copy(), mocap.quat.copy())
        self._ee_physics = physics

    def plan_expert(self) -> np.ndarray:
        """Joint-target trajectory (max_steps, 14) of the waypoint expert for the current cube."""
        from gym_aloha.constants import normalize_puppet_gripper_position

        if self._ee_physics is None:
            self._build_ee_physics()
        physics, task = self._ee_physics, self._ee_task
        with physics.reset_context():
            task.initialize_robots(physics)
            box = physics.model.name2id("red_box_joint", "joint")
            adr = physics.model.jnt_qposadr[box]
            physics.data.qpos[adr:adr + 7] = self._cube_pose
        start = {}
        for i, arm in enumerate(_ARMS):  # mocap where the weld is already satisfied: no start-up jerk
            grip = physics.data.ptr.body(f"vx300s_{arm}/gripper_link")
            start[arm] = _pose_mul(grip.xpos.copy(), grip.xquat.copy(), *self._weld_offset[arm])
            physics.data.mocap_pos[i], physics.data.mocap_quat[i] = start[arm]
        left, right = transfer_cube_waypoints(self._cube_pose[:3], start["left"], start["right"])
        plan = np.empty((self.max_steps, 14))
        for t in range(self.max_steps):
            # Joint positions reached so far, with the commanded (not measured) gripper openings,
            # as in ACT: the joint-controlled replay then closes the grippers as hard as the expert.
            qpos = task.get_qpos(physics)
            ctrl = physics.data.ctrl
            qpos[6], qpos[13] = normalize_puppet_gripper_position(ctrl[0]), normalize_puppet_gripper_position(ctrl[2])
            plan[t] = qpos
            task.before_step(np.concatenate([_interpolate(left, t), _interpolate(right, t)]), physics)
            physics.step(self._n_substeps)
        return plan

    def _expert(self) -> np.ndarray:
        if self._plan is None:
            self._plan = self.plan_expert()
        return self._plan[min(self.steps, len(self._plan) - 1)]

    def _mj_model(self):
        return self._physics.model.ptr

    def _robot_roots(self) -> list[str | int]:
        return ["vx300s_left", "vx300s_right"]

    def _object_bodies(self) -> list[str | int]:
        return ["box"]

    def _hold_action(self) -> np.ndarray:
        return self._state()  # absolute joint targets: the pose it is in

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
