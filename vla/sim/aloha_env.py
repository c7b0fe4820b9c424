# Over 400 lines: the ALOHA scene, its waypoint expert and its re-planning labeller share the arm kinematics.
"""ALOHA bimanual transfer-cube (gym-aloha's MuJoCo scene) with an end-effector waypoint expert.

We drive gym-aloha's dm_control physics and task logic directly instead of ``AlohaEnv``: that
class renders three 640x480 cameras on every step and draws the cube pose unseeded.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..embodiment import Embodiment
from .base import ExpertUnavailable, SimEnv, camera_key
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
# Re-planned moves (expert_label): metres per step of the original plan's free moves and carry.
_FREE_SPEED, _CARRY_SPEED = 0.004, 0.008
_SLIDE_STEPS = 40  # the left gripper slides in around the cube once the right one brought it
# An executed action this close (rad) to the label plan's keeps the robot on it (labels are float32).
_FOLLOWED_ATOL = 1e-5
# Re-planned labels read the plan this many steps ahead (row 0 is the pose the arms are in now): 3 comes
# closest to the on-path expert, whose joint targets lead the arms it drives (measured on 2 seeds).
_REPLAN_LEAD = 3
# Where the expert can still pick the cube: gym-aloha's sampling area (x 0..0.2, y 0.4..0.6) grown by
# 10 cm, on the table (its top is at z = 0; the cube's centre rests 2 cm above it).
_PICKABLE = (np.array([-0.1, 0.3, -0.01]), np.array([0.3, 0.7, 1.0]))
_BOX_GEOM, _TABLE_GEOM = "red_box", "table"
_FINGERS = {arm: (f"vx300s_{arm}/10_left_gripper_finger", f"vx300s_{arm}/10_right_gripper_finger") for arm in _ARMS}
_ARM_JOINTS = [*range(6), *range(7, 13)]
_LOST = 0.5  # rad: an arm joint this far from where the plan has it now has left the plan (on it: < 0.2)
_LIFTED = 0.03  # m: the cube's centre (0.02 when it rests on the table) is up
_HOLDING = 0.8  # normalised gripper opening below which a gripper touching the cube holds it
_AROUND = 0.02  # metres from the right fingers' midpoint to the cube centre: the open jaws are around it
# A "pick" re-plan from arms away from their reset pose first commands that pose outright and holds it
# until every arm joint is within _HOMED (rad) of it and slower than _AT_REST (rad/s): the full joint error
# pulls most hands a policy pushed into the table out of it (slow joint or end-effector moves stay stuck,
# or sweep the cube), and the hold brakes arms left whipping (an arm still swinging when the plan starts
# strikes the table). The plan from reset's moves then follow, so the cube is approached only from above.
_HOMED, _AT_REST = 0.1, 1.0
_ARM_DOFS = [*range(6), *range(8, 14)]  # the arm joints' velocities (each arm has 2 finger joints)
_NEAR = 0.08  # m: right fingers this close to the cube re-plan from where they are (pulling them home flings it)
_MOVED = 0.02  # m: the cube moved this far from where the "pick" plan picks it: re-plan
# An arm touching the table may not come free by homing: a policy (or its arm's momentum) can push fingers
# or wrist past the 3 cm tabletop's mid-plane, where the contact pushes them down; pulling up (joint or
# end-effector lifts, even 1000 N up on the gripper) leaves them stuck while the weak wrist joints turn
# about the pinned fingertip. Such an arm is pried free: its gripper opens and its shoulder, elbow and
# wrist angle targets each stay or go to one of their joint limits (full torque), the combination after
# which the homing arrives soonest in a copy of the scene (which one works differs from state to state).
# A pry ends once the arm is off the table or after _PRY_STEPS; a homing looks again when an arm strikes
# the table or after _HOME_STEPS.
_PRY_STEPS, _HOME_STEPS = 30, 60
_PRY_JOINTS = (1, 2, 4)  # shoulder, elbow, wrist angle (indices within an arm's 6 joints and gripper)


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


def _keyposes(cube_xyz: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The hand-over's mocap poses (xyz, quat): the right arm picks with its gripper pitched 60 degrees
    down and lifts the cube to a meeting point above the table centre; the left arm, rolled 90
    degrees, closes on it there."""
    pick_quat = _quat_about([0, 1, 0], -60)
    meet_quat_left = _quat_about([1, 0, 0], 90)
    meet = np.array([0.0, 0.5, 0.25])
    return {
        "left_approach": (meet + [-0.1, 0, -0.02], meet_quat_left),
        "left_around": (meet + [0.02, 0, -0.02], meet_quat_left),
        "left_away": (meet + [-0.1, 0, -0.02], _IDENTITY),
        "right_above": (cube_xyz + [0, 0, 0.08], pick_quat),
        "right_down": (cube_xyz + [0, 0, -0.015], pick_quat),
        "right_lift": (meet + [0.05, 0, 0], pick_quat),
        "right_meet": (meet, pick_quat),
        "right_away": (meet + [0.1, 0, 0], pick_quat),
    }


def transfer_cube_waypoints(cube_xyz: np.ndarray, start_left: tuple, start_right: tuple) -> tuple[list, list]:
    """Left and right mocap waypoints ``(step, xyz, quat, gripper 0..1)`` for the hand-over.

    From the mocap poses that hold the arms still (``start_*`` = (xyz, quat)) a short ramp leads
    into ACT's start targets; then the right arm descends on the cube, closes and lifts it to the
    meeting point, where the left arm closes on it (``_keyposes``). Targets are mocap poses: the
    weld keeps the gripper a fixed offset behind them.
    """
    k = _keyposes(cube_xyz)
    left = [
        (0, *start_left, 0.0),
        (_RAMP, _ACT_START["left"], _IDENTITY, 0.0),
        (100, *k["left_approach"], 1.0),  # open and approach the meeting point
        (260, *k["left_around"], 1.0),  # slide in around the cube
        (310, *k["left_around"], 0.0),  # close
        (360, *k["left_away"], 0.0),  # pull the cube away
        (400, *k["left_away"], 0.0),
    ]
    right = [
        (0, *start_right, 0.0),
        (_RAMP, _ACT_START["right"], _IDENTITY, 0.0),
        (90, *k["right_above"], 1.0),  # above the cube, open
        (130, *k["right_down"], 1.0),  # down around it
        (170, *k["right_down"], 0.0),  # close
        (200, *k["right_lift"], 0.0),  # lift towards the meeting point
        (220, *k["right_meet"], 0.0),
        (310, *k["right_meet"], 1.0),  # let go once the left gripper holds it
        (360, *k["right_away"], 1.0),
        (400, *k["right_away"], 1.0),
    ]
    return left, right


def _then(waypoints: list, pose: tuple, gripper: float, min_steps: int, speed: float) -> int:
    """Append a waypoint reached at ``speed`` (m per step, at least ``min_steps``); return its step."""
    t, xyz = waypoints[-1][0], waypoints[-1][1]
    t += max(min_steps, int(np.ceil(np.linalg.norm(pose[0] - xyz) / speed)))
    waypoints.append((t, *pose, gripper))
    return t


def replan_waypoints(stage: str, cube_xyz: np.ndarray, now_left: tuple, now_right: tuple,
                     via_start: bool = False) -> tuple[list, list]:
    """Hand-over waypoints from now (step 0) for a task at ``stage``, on the poses of ``_keyposes``.

    ``now_*`` = (xyz, quat, gripper 0..1): the mocap poses holding the arms where they are.
    Stages: "pick" (cube on the table), "grasp" (open right jaws already around it), "carry"
    (right gripper holds it), "handed" (the left gripper holds it: the right lets go, the left
    pulls away). Segments take the original plan's durations; moves into the plan take as long
    as their distance needs at the original plan's speeds. ``via_start``: ramp into ACT's start
    targets first, as the plan from reset does (the arms are in their reset pose).
    """
    k = _keyposes(cube_xyz)
    left, right = [(0, *now_left)], [(0, *now_right)]
    if via_start:
        for arm, waypoints in (("left", left), ("right", right)):
            waypoints.append((_RAMP, _ACT_START[arm], _IDENTITY, waypoints[0][3]))
    if stage == "handed":
        for arm, grip, away in ((left, 0.0, k["left_away"]), (right, 1.0, k["right_away"])):
            arm.append((20, *arm[0][1:3], grip))
            _then(arm, away, grip, 50, _FREE_SPEED)
        return left, right
    if stage == "pick":
        _then(right, k["right_above"], 1.0, 30, _FREE_SPEED)
    if stage in ("pick", "grasp"):
        _then(right, k["right_down"], 1.0, 10 if stage == "grasp" else 40, _FREE_SPEED)
        _then(right, k["right_down"], 0.0, 40, _FREE_SPEED)  # close
    _then(right, k["right_lift"], 0.0, 20 if stage == "carry" else 30, _CARRY_SPEED)
    t_meet = _then(right, k["right_meet"], 0.0, 20, _CARRY_SPEED)
    t_approach = _then(left, k["left_approach"], 1.0, 30, _FREE_SPEED)
    t_around = max(t_meet, t_approach) + _SLIDE_STEPS  # slide in around the cube once it is at the meeting point
    left += [(t_around, *k["left_around"], 1.0), (t_around + 50, *k["left_around"], 0.0)]
    _then(left, k["left_away"], 0.0, 50, _FREE_SPEED)
    # Hold on until the left gripper is 40 steps from around the cube, then let go as it closes (the
    # original plan's opening rate: the right gripper is 0.44 open as the left arrives).
    if t_around - 40 > t_meet:
        right.append((t_around - 40, *k["right_meet"], 0.0))
    right.append((t_around + 50, *k["right_meet"], 1.0))
    _then(right, k["right_away"], 1.0, 50, _FREE_SPEED)
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


class _PlayedPlan:
    """Waypoints played in the end-effector physics, simulated only as far as rows are asked for.

    Row k holds the joint positions after k control steps, with the commanded (not measured)
    gripper openings, as in ACT: the joint-controlled replay then closes the grippers as hard as
    the expert. ``origin``: the episode step that reads row ``lead``. ``cube``: where a "pick" plan
    picks the cube.
    """

    def __init__(self, physics, task, left: list, right: list, n_substeps: int, origin: int = 0, lead: int = 0,
                 cube: np.ndarray | None = None):
        self.physics, self.task, self.left, self.right = physics, task, left, right
        self.n_substeps, self.origin, self.lead, self.cube = n_substeps, origin, lead, cube
        self.rows: list[np.ndarray] = []
        self.checked = origin  # executed steps before this one followed the plan
        self.held = False  # a gripper held the cube up while this plan ran

    def row(self, step: int) -> np.ndarray:
        """The joint targets the plan gives at episode ``step`` (simulating up to there)."""
        from gym_aloha.constants import normalize_puppet_gripper_position

        k = step - self.origin + self.lead
        while len(self.rows) <= k:
            t, physics = len(self.rows), self.physics
            qpos = self.task.get_qpos(physics)
            ctrl = physics.data.ctrl
            qpos[6], qpos[13] = normalize_puppet_gripper_position(ctrl[0]), normalize_puppet_gripper_position(ctrl[2])
            self.rows.append(qpos)
            self.task.before_step(np.concatenate([_interpolate(self.left, t), _interpolate(self.right, t)]), physics)
            physics.step(self.n_substeps)
        return self.rows[k]


class _Homing:
    """Hold a joint target (the reset pose, see ``_HOMED``, or a pry, see ``_PRY_STEPS``); ``_label`` replaces
    it once the arms are there or at step ``until``."""

    held = False

    def __init__(self, home: np.ndarray, cube: np.ndarray, origin: int, until: int, on_table: list[str],
                 pry: bool = False):
        self.home, self.cube, self.checked, self.until, self.pry = home, cube, origin, until, pry
        self.on_table = set(on_table)  # the arms touching the table when it began

    def row(self, step: int) -> np.ndarray:
        return self.home


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
        self._label_physics = None  # expert_label's own copy, so that its lazy plans never meet plan_expert's
        self._ee_task = TransferCubeEndEffectorTask()
        self._ee_xml = str(ASSETS_DIR / "bimanual_viperx_end_effector_transfer_cube.xml")
        self._n_substeps = int(round(DT / self._physics.model.opt.timestep))
        self._dt = DT
        self._joints = list(JOINTS)
        self._renderer = CameraRenderer(self._physics.model.ptr, self.cameras, self.image_size)
        self._cube_pose: np.ndarray | None = None
        self._plan: np.ndarray | None = None
        self._label_plan: _PlayedPlan | None = None
        self._executed: list[np.ndarray] = []  # actions the robot executed this episode (expert_label checks them)
        self._pry_physics = None  # a copy of the scene in which _pry tries its candidates
        self._reward = 0

    @property
    def simulator(self) -> str:  # type: ignore[override]
        from importlib.metadata import version

        return f"gym-aloha {version('gym-aloha')} (dm-control {version('dm-control')}, mujoco {version('mujoco')})"

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS[self.task]

    def _make_embodiment(self) -> Embodiment:
        return Embodiment(
            name="aloha", robot_type="aloha",
            action_names=list(self._joints), state_names=list(self._joints),
            control_hz=1.0 / self._dt,
            chunk_size=1, cameras=[camera_key(c) for c in self.cameras], image_size=self.image_size,
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
        self._label_plan, self._executed = None, []
        self._reward = 0

    def _apply(self, action: np.ndarray) -> tuple[bool, bool]:
        self._executed.append(action.copy())
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

    def _new_ee_physics(self):
        """The mocap-driven scene (stiffer weld); remembers the weld's gripper-to-mocap offsets."""
        import mujoco
        from dm_control import mujoco as dm_mujoco

        physics = dm_mujoco.Physics.from_xml_path(self._ee_xml)
        physics.model.eq_solimp[:] = WELD_SOLIMP
        # MuJoCo 3 welds keep the mocap-to-gripper pose they have in the reference configuration
        # (qpos0); remember it, to start each plan from mocap poses that hold the arms still.
        m, d = physics.model.ptr, physics.data.ptr
        mujoco.mj_resetData(m, d)
        mujoco.mj_forward(m, d)
        self._weld_offset = {}
        for arm in _ARMS:
            grip, mocap = d.body(f"vx300s_{arm}/gripper_link"), m.body(f"mocap_{arm}")
            self._weld_offset[arm] = _pose_mul(*_pose_inv(grip.xpos.copy(), grip.xquat.copy()),
                                               mocap.pos.copy(), mocap.quat.copy())
        return physics

    def _hold_mocaps(self, physics) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Put each mocap where the weld is already satisfied (no start-up jerk); return the poses."""
        start = {}
        for i, arm in enumerate(_ARMS):
            grip = physics.data.ptr.body(f"vx300s_{arm}/gripper_link")
            start[arm] = _pose_mul(grip.xpos.copy(), grip.xquat.copy(), *self._weld_offset[arm])
            physics.data.mocap_pos[i], physics.data.mocap_quat[i] = start[arm]
        return start

    def _plan_from_reset(self, physics) -> _PlayedPlan:
        with physics.reset_context():
            self._ee_task.initialize_robots(physics)
            box = physics.model.name2id("red_box_joint", "joint")
            adr = physics.model.jnt_qposadr[box]
            physics.data.qpos[adr:adr + 7] = self._cube_pose
        start = self._hold_mocaps(physics)
        left, right = transfer_cube_waypoints(self._cube_pose[:3], start["left"], start["right"])
        return _PlayedPlan(physics, self._ee_task, left, right, self._n_substeps)

    def plan_expert(self) -> np.ndarray:
        """Joint-target trajectory (max_steps, 14) of the waypoint expert for the current cube."""
        if self._ee_physics is None:
            self._ee_physics = self._new_ee_physics()
        plan = self._plan_from_reset(self._ee_physics)
        return np.stack([plan.row(t) for t in range(self.max_steps)])

    def _expert(self) -> np.ndarray:
        if self._plan is None:
            self._plan = self.plan_expert()
        return self._plan[min(self.steps, len(self._plan) - 1)]

    def _label(self) -> np.ndarray:
        # Keep reading the current plan while the robot executed its rows and still holds the cube it
        # held; re-plan once it left them or dropped the cube (a plan is open loop).
        stage = self.task_stage()
        plan = self._label_plan
        if plan is not None and plan.held and stage in ("pick", "grasp") and _TABLE_GEOM in self._touching_cube():
            plan = None
        if (plan is not None and plan.cube is not None and stage == "pick"
                and np.linalg.norm(self.body_position("box")[:2] - plan.cube[:2]) > _MOVED):
            plan = None  # something pushed the cube away from where the plan picks it
        if isinstance(plan, _Homing):
            arrived = self._homed(self._physics, plan.home)
            on_table = set(self._arms_on_table())
            freed, struck = plan.pry and not on_table, bool(on_table - plan.on_table)
            if arrived or freed or struck or stage != "pick" or self.steps >= plan.until:
                plan = None  # there (or time to look again): plan from here
            else:
                while plan.checked < self.steps and np.allclose(self._executed[plan.checked], plan.home, rtol=0.0,
                                                                atol=_FOLLOWED_ATOL):
                    plan.checked += 1
                if plan.checked < self.steps:  # the robot did something else
                    plan = None
                else:
                    return plan.home
        if plan is not None and self.steps > plan.origin:  # the arms could not follow the plan (e.g. stuck)
            behind = np.abs(self._state() - plan.row(self.steps - plan.lead))[_ARM_JOINTS].max()
            plan = plan if behind < _LOST else None
        while plan is not None and plan.checked < self.steps:
            if not np.allclose(self._executed[plan.checked], plan.row(plan.checked), rtol=0.0, atol=_FOLLOWED_ATOL):
                plan = None
            else:
                plan.checked += 1
        if plan is None:
            if self._label_physics is None:
                self._label_physics = self._new_ee_physics()
            plan = self._plan_from_reset(self._label_physics) if self.steps == 0 else self._replan(stage)
            self._label_plan = plan
        if isinstance(plan, _Homing):
            return plan.home
        # Held up: a gripper closing on the cube reads "carry" and "pick" in turn (and nudges it off the
        # table for a step) before it lifts it.
        plan.held = plan.held or (stage in ("carry", "handed") and self.body_position("box")[2] > _LIFTED)
        return plan.row(self.steps)

    def _touching_cube(self) -> set[str]:
        """Names of the geoms in contact with the cube now."""
        physics, touching = self._physics, set()
        for c in physics.data.contact:
            names = {physics.model.id2name(c.geom1, "geom"), physics.model.id2name(c.geom2, "geom")}
            if _BOX_GEOM in names:
                touching |= names - {_BOX_GEOM}
        return touching

    def _fingers(self, arm: str) -> np.ndarray:
        """The midpoint of an arm's finger links (m)."""
        return (self.body_position(f"vx300s_{arm}/left_finger_link")
                + self.body_position(f"vx300s_{arm}/right_finger_link")) / 2

    def _jaws_around_cube(self, arm: str) -> bool:
        return bool(np.linalg.norm(self._fingers(arm) - self.body_position("box")) < _AROUND)

    def task_stage(self) -> str:
        """Where the hand-over stands: "pick", "grasp", "carry" or "handed" (see ``replan_waypoints``).

        A gripper holds the cube when it is closed past ``_HOLDING`` and touches the cube or has it
        between its fingers. Raises ExpertUnavailable when the cube lies where the expert cannot pick it.
        """
        touching = self._touching_cube()
        grip = self._state()[[6, 13]]  # normalised openings, left and right
        for arm, opening, stage in (("left", grip[0], "handed"), ("right", grip[1], "carry")):
            if opening < _HOLDING and (touching & set(_FINGERS[arm]) or self._jaws_around_cube(arm)):
                return stage
        box = self.body_position("box")
        if np.any(box < _PICKABLE[0]) or np.any(box > _PICKABLE[1]):
            where = "off the table" if box[2] < _PICKABLE[0][2] else "beyond where the expert picks it"
            raise ExpertUnavailable(
                f"ALOHA's expert has no plan from here: the cube is {where} (at {np.round(box, 3).tolist()} m; "
                f"it picks cubes within x {_PICKABLE[0][0]}..{_PICKABLE[1][0]}, y {_PICKABLE[0][1]}..{_PICKABLE[1][1]} "
                "on the table). End the episode.")
        return "grasp" if grip[1] >= _HOLDING and self._jaws_around_cube("right") else "pick"

    def _replan(self, stage: str) -> _PlayedPlan | _Homing:
        """A plan from the arms' joint state and the cube's pose now (copied into the end-effector physics).

        From "pick" with the right fingers away from the cube the arms first go back to their reset
        pose (``_Homing``; an arm touching the table is pried off it first, ``_pry``), then ramp into
        ACT's start targets as the plan from reset does.
        """
        from gym_aloha.constants import START_ARM_POSE

        now, cube = self._state(), self.body_position("box")
        home_first = stage == "pick" and np.linalg.norm(self._fingers("right") - cube) > _NEAR
        if home_first:
            home = np.array([*START_ARM_POSE[:6], now[6], *START_ARM_POSE[8:14], now[13]])
            if not self._homed(self._physics, home):
                stuck = self._arms_on_table()
                pry = self._pry(now, home, stuck) if stuck else None
                if pry is not None:
                    return _Homing(pry, cube, self.steps, self.steps + _PRY_STEPS, stuck, pry=True)
                return _Homing(home, cube, self.steps, self.steps + _HOME_STEPS, stuck)
        src, physics = self._physics.data, self._label_physics
        with physics.reset_context():
            physics.data.qpos[:] = src.qpos
            physics.data.qvel[16:] = src.qvel[16:]  # the cube's; the plan starts the arms at rest (a
            # policy can leave them whipping at tens of rad/s, which the mocap plan would follow)
            physics.data.ctrl[:] = src.ctrl[[6, 7, 14, 15]]  # the finger targets (the mocaps move the arms)
        start = self._hold_mocaps(physics)
        left, right = replan_waypoints(stage, cube, (*start["left"], now[6]), (*start["right"], now[13]),
                                       via_start=home_first)
        return _PlayedPlan(physics, self._ee_task, left, right, self._n_substeps, origin=self.steps,
                           lead=_REPLAN_LEAD, cube=cube if stage == "pick" else None)

    def _homed(self, physics, home: np.ndarray) -> bool:
        """Whether the arms are at ``home`` and at rest (see ``_HOMED``)."""
        near = np.abs(self._task.get_qpos(physics) - home)[_ARM_JOINTS].max() < _HOMED
        return bool(near and np.abs(physics.data.qvel[_ARM_DOFS]).max() < _AT_REST)

    def _arms_on_table(self, physics=None) -> list[str]:
        """The arms with a link or finger touching the table now (in ``physics``, by default the scene's)."""
        physics, arms = physics or self._physics, set()
        for c in physics.data.contact:
            names = {physics.model.id2name(c.geom1, "geom"), physics.model.id2name(c.geom2, "geom")}
            if _TABLE_GEOM in names:
                arms |= {arm for arm in _ARMS for name in names if name.startswith(f"vx300s_{arm}/")}
        return sorted(arms)

    def _pry(self, now: np.ndarray, home: np.ndarray, stuck: list[str]) -> np.ndarray | None:
        """Joint targets that pry the ``stuck`` arms off the table (see ``_PRY_STEPS``); the others go home.

        Each candidate holds every pry joint where it is or drives it to one of its limits; the one after
        which the homing then arrives soonest in a copy of the scene, without moving the cube, wins.
        None when none does.
        """
        limits = self._physics.model.actuator_ctrlrange  # per arm: 6 joints, 2 fingers
        best, best_steps = None, _PRY_STEPS + _HOME_STEPS
        for choice in itertools.product((None, 0, 1), repeat=len(_PRY_JOINTS)):
            target = home.copy()
            for arm in stuck:
                i, a = (0, 0) if arm == "left" else (7, 8)  # the arm's first action and actuator index
                target[i:i + 6], target[i + 6] = now[i:i + 6], 1.0  # hold, gripper open
                for j, side in zip(_PRY_JOINTS, choice):
                    if side is not None:
                        target[i + j] = limits[a + j][side]
            steps = self._steps_home(target, home, stuck, best_steps)
            if steps < best_steps:
                best, best_steps = target, steps
        return best

    def _steps_home(self, pry: np.ndarray, home: np.ndarray, stuck: list[str], limit: int) -> int:
        """Steps the arms take to get home in a copy of the scene when they hold ``pry`` until the ``stuck``
        arms are off the table (at most ``_PRY_STEPS``), then ``home``: ``limit`` when they do not get there
        sooner, or the cube moves."""
        import mujoco

        if self._pry_physics is None:
            self._pry_physics = self._physics.copy(share_model=True)
        physics = self._pry_physics
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(physics.model.ptr, spec))
        mujoco.mj_getState(self._physics.model.ptr, self._physics.data.ptr, state, spec)
        mujoco.mj_setState(physics.model.ptr, physics.data.ptr, state, spec)
        mujoco.mj_forward(physics.model.ptr, physics.data.ptr)
        cube, target = self.body_position("box"), pry
        home = home.copy()
        home[[6, 13]] = pry[[6, 13]]  # the homing after a pry leaves the grippers as the pry set them
        for t in range(1, limit):
            self._task.before_step(target, physics)
            try:
                physics.step(self._n_substeps)
            except self.unstable_errors:
                return limit
            if np.linalg.norm(physics.named.data.xpos["box"] - cube) > _MOVED:
                return limit
            if target is pry and (t >= _PRY_STEPS or not set(stuck) & set(self._arms_on_table(physics))):
                target = home
            elif target is home and self._homed(physics, home):
                return t
        return limit

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
