"""SO-101 pick-and-place (lerobot-env-so101) with its shipped scripted controller."""

from __future__ import annotations

import numpy as np

from ..embodiment import Embodiment
from .base import SimEnv, camera_key
from .rendering import CameraRenderer

INSTRUCTIONS = {"pick-place": "pick up the purple cube and place it on the green target"}
# "front" is the scene's camera (the workspace fills a small part of it). Added by us: "workspace",
# a free camera framing the cube and goal sampling area from the front-right, and "gripper", which
# follows the grasp point from 30 cm behind and above, the way a wrist camera sees the jaws and what
# lies below them (the model has no camera on the wrist; this one does not turn with the wrist).
VIRTUAL_CAMERAS = {"workspace": {"lookat": (0.2, 0.0, 0.05), "distance": 0.6, "azimuth": 150.0, "elevation": -40.0},
                   "gripper": {"distance": 0.3, "azimuth": 150.0, "elevation": -50.0}}
GRIPPER_CAMERA_AIM = np.array([0.0, 0.0, -0.03])  # aim 3 cm below the grasp point: jaws and cube in view
CAMERAS = ("front", *VIRTUAL_CAMERAS)
ACTION_SCALE = 0.025  # metres per unit action: the scale the shipped controller is tuned for
_GOAL_RGBA = np.array([0.1, 0.8, 0.2, 1.0], dtype=np.float32)
REACH_TOLERANCE = 0.01  # metres from where the shipped controller closes the jaws: "reached"
LIFT_RISE = 0.03  # metres the block must rise: the env's own test for a carried block
# Reading the jaws from the gripper joint (what expert_label infers the controller's phase from):
JAW_SETTLED = 0.5  # rad/s: the jaws move at ~5 rad/s; below this they rest (on the cube, they jitter at ~0.1)
HELD_OPENING = (0.1, 0.6)  # jaw opening (0 shut .. 1 open) of jaws stopped on the cube (~0.28 measured)
IN_JAWS_XY = 0.015  # metres: the cube's centre this close below the grasp point sits between the jaws
IN_JAWS_Z = (-0.005, 0.025)  # grasp point height above the cube's centre with the cube between the jaws
RESTING = 0.005  # metres above its start height: a cube this low rests on the table


def so101_phase(grasp: np.ndarray, cube: np.ndarray, goal: np.ndarray, table_z: float, opening: float,
                jaw_speed: float, carried: bool):
    """The shipped controller's phase for a state, read from the state alone (no step counters).

    ``opening``: the jaw joint, 0 shut .. 1 open; ``jaw_speed``: its velocity (rad/s, > 0 opening);
    ``carried``: the cube was lifted earlier in the episode. The controller's hold phases (CLOSE,
    OPEN) last while the jaws move; the moving phases end where the controller's own targets are met.
    """
    from lerobot_env_so101.scripted.pick_place import GOAL_TOLERANCE, GRASP_HEIGHT, HOVER_HEIGHT, LIFT_HEIGHT
    from lerobot_env_so101.pick_place_env import PLACE_SUCCESS_DISTANCE
    from lerobot_env_so101.scripted.pick_place import RELEASE_CLEARANCE, Phase, phase_target

    rel = grasp - cube
    in_jaws = np.linalg.norm(rel[:2]) < IN_JAWS_XY and IN_JAWS_Z[0] < rel[2] < IN_JAWS_Z[1]
    settled = abs(jaw_speed) < JAW_SETTLED
    resting_on_goal = carried and cube[2] < table_z + RESTING and np.linalg.norm(cube[:2] - goal[:2]) < PLACE_SUCCESS_DISTANCE
    if in_jaws:
        placed = np.linalg.norm(goal + [0.0, 0.0, RELEASE_CLEARANCE] - cube) < GOAL_TOLERANCE
        if carried and (placed or (resting_on_goal and (not settled or opening > HELD_OPENING[1]))):
            return Phase.OPEN  # lowered onto the goal: let go (and keep still while the jaws open)
        if jaw_speed < -JAW_SETTLED:
            return Phase.CLOSE  # closing: keep closing until the jaws stop
        if settled and HELD_OPENING[0] < opening < HELD_OPENING[1]:  # jaws stopped on the cube: carry it
            lift_z = table_z + GRASP_HEIGHT + LIFT_HEIGHT
            to_goal = np.linalg.norm(cube[:2] - goal[:2])
            if carried and (to_goal < GOAL_TOLERANCE or (to_goal < 2 * GOAL_TOLERANCE and grasp[2] < lift_z - GOAL_TOLERANCE)):
                return Phase.LOWER
            return Phase.LIFT if grasp[2] < lift_z - GOAL_TOLERANCE else Phase.TRAVERSE
        descend_error = np.linalg.norm(phase_target(Phase.DESCEND, grasp, cube, goal, table_z) - grasp)
        if opening >= HELD_OPENING[1] and descend_error < GOAL_TOLERANCE:
            return Phase.CLOSE  # open jaws around the cube at the grasp height
        return Phase.DESCEND  # jaws open (or opening, or shut on nothing): open them at the grasp height
    if resting_on_goal:
        return Phase.RETREAT
    hover_z = table_z + HOVER_HEIGHT
    if np.linalg.norm(rel[:2]) < 2 * GOAL_TOLERANCE and grasp[2] < hover_z + GOAL_TOLERANCE and rel[2] > 0:
        return Phase.DESCEND
    return Phase.HOVER


class SO101PickPlaceEnv(SimEnv):
    """SO-101 arm moving a cube to a goal; each seed draws new cube and goal positions.

    Actions: (dx, dy, dz) in [-1, 1] x 2.5 cm of grasp-point motion per step (IK keeps the
    gripper pointing down) and an absolute grasp in [0, 1] (1 open, 0 closed). 10 Hz.
    The goal exists only in the simulator's state, so it is drawn as a flat green disc
    (visual only, no collision) for vision policies.
    """

    env_name = "so101"
    tasks = tuple(INSTRUCTIONS)
    default_cameras = ("workspace",)
    all_cameras = CAMERAS
    expert_name = "lerobot_env_so101.scripted.PickPlaceController"
    licence = "Apache-2.0 (lerobot-env-so101; SO-101 assets from gym-hil, Apache-2.0)"
    noise_unit = (1.0, 1.0, 1.0, 0.0)  # action units (2.5 cm); grasp untouched
    stages = ("reached", "lifted")

    def __init__(self, task: str = "pick-place", cameras: list[str] | None = None, image_size=128,
                 max_steps: int = 300):
        super().__init__(task, cameras, image_size, max_steps)
        from lerobot_env_so101 import SO101PickPlaceGymEnv
        from lerobot_env_so101.policy import OBS_FIELD_NAMES
        from lerobot_env_so101.scripted import PickPlaceController
        from lerobot_env_so101.scripted.pick_place import GRASP_HEIGHT

        self._env = SO101PickPlaceGymEnv(random_block_position=True, action_scale=ACTION_SCALE)
        self._state_names = list(OBS_FIELD_NAMES[:14])  # agent_pos: joint pos, joint vel, gripper, ee xyz
        self._controller = PickPlaceController(action_scale=ACTION_SCALE)
        self._grasp_offset = np.array([0.0, 0.0, GRASP_HEIGHT])
        virtual = {**VIRTUAL_CAMERAS, "gripper": {**VIRTUAL_CAMERAS["gripper"],
                                                  "lookat": lambda data: self.grasp_point + GRIPPER_CAMERA_AIM}}
        self._renderer = CameraRenderer(self._env.model, self.cameras, self.image_size, virtual=virtual)
        self._agent_pos: np.ndarray | None = None
        self._block_z0 = 0.0
        self._expert_cache: tuple[int, np.ndarray] | None = None

    @property
    def simulator(self) -> str:  # type: ignore[override]
        from importlib.metadata import version

        return f"lerobot-env-so101 {version('lerobot-env-so101')} (mujoco {version('mujoco')})"

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS[self.task]

    def _make_embodiment(self) -> Embodiment:
        return Embodiment(
            name="so101", robot_type="so101",
            action_names=["delta_x", "delta_y", "delta_z", "grasp"],
            state_names=self._state_names,
            control_hz=1.0 / self._env.control_dt,
            chunk_size=1, cameras=[camera_key(c) for c in self.cameras], image_size=self.image_size,
            description="SO-101 arm: grasp-point position deltas (2.5 cm per unit), absolute grasp (1 open, 0 closed)",
            action_low=[-1.0, -1.0, -1.0, 0.0], action_high=[1.0, 1.0, 1.0, 1.0],
        )

    @property
    def goal_pos(self) -> np.ndarray:
        return self._env.goal_pos

    @property
    def cube_pos(self) -> np.ndarray:
        """The cube's centre (x, y, z) in metres."""
        return self._env.data.sensor("block_pos").data.copy()

    @property
    def grasp_target(self) -> np.ndarray:
        """Where the shipped controller closes the jaws: the cube's centre raised by GRASP_HEIGHT."""
        return self.cube_pos + self._grasp_offset

    @property
    def grasp_point(self) -> np.ndarray:
        """The gripper's grasp point (x, y, z) in metres, the point the actions move."""
        return self._env.ik_point_pos.copy()

    def _reset_sim(self, seed: int) -> None:
        obs, _ = self._env.reset(seed=seed)
        self._agent_pos = obs["agent_pos"]
        self._block_z0 = float(self.cube_pos[2])
        self._controller.reset()
        self._expert_cache = None

    def _apply(self, action: np.ndarray) -> tuple[bool, bool]:
        obs, _, terminated, _, info = self._env.step(action)
        self._agent_pos = obs["agent_pos"]
        return bool(info["succeed"]), bool(terminated)

    def _state(self) -> np.ndarray:
        return self._agent_pos

    def _stage(self) -> int:
        # lifted: the block rose as high as the env requires of a carried block; reached: the grasp
        # point is where the shipped controller closes the jaws.
        if self.cube_pos[2] - self._block_z0 > LIFT_RISE:
            return 2
        return int(np.linalg.norm(self.grasp_point - self.grasp_target) < REACH_TOLERANCE)

    def _draw_goal(self, scene) -> None:
        import mujoco

        if scene.ngeom >= scene.maxgeom:
            return
        goal = self._env.goal_pos
        mujoco.mjv_initGeom(
            scene.geoms[scene.ngeom], mujoco.mjtGeom.mjGEOM_CYLINDER, np.array([0.03, 0.0005, 0.0]),
            np.array([goal[0], goal[1], 0.0006]), np.eye(3).ravel(), _GOAL_RGBA,
        )
        scene.ngeom += 1

    def _render(self) -> dict[str, np.ndarray]:
        return self._renderer.render(self._env.data, decorate=self._draw_goal)

    def _expert(self) -> np.ndarray:
        # The controller keeps phase counters, so it must advance exactly once per step.
        if self._expert_cache is None or self._expert_cache[0] != self.steps:
            action = self._controller.act(self.grasp_point, self.cube_pos, self._env.goal_pos)
            self._expert_cache = (self.steps, action)
        return self._expert_cache[1].copy()

    def _label(self) -> np.ndarray:
        from lerobot_env_so101.gripper import ctrl_to_normalized
        from lerobot_env_so101.scripted.pick_place import CAREFUL_SPEED, GRIPPER_CLOSED, GRIPPER_OPEN, Phase, phase_target

        joint = self._env.data.joint("gripper")
        opening = ctrl_to_normalized(float(joint.qpos[0]), self._env.model.actuator("gripper").ctrlrange)
        carried = self._stage_reached >= 2  # the block rose LIFT_RISE earlier: the env's own carried test
        grasp, cube, goal = self.grasp_point, self.cube_pos, self._env.goal_pos
        phase = so101_phase(grasp, cube, goal, self._block_z0, opening, float(joint.qvel[0]), carried)
        if phase in (Phase.CLOSE, Phase.OPEN):
            delta = np.zeros(3)  # a zero motion makes the env hold the arm where it is
        else:
            limit = CAREFUL_SPEED if phase in (Phase.DESCEND, Phase.LIFT, Phase.LOWER) else 1.0
            error = phase_target(phase, grasp, cube, goal, self._block_z0) - grasp
            delta = np.clip(error / ACTION_SCALE, -limit, limit)
        closed = phase in (Phase.CLOSE, Phase.LIFT, Phase.TRAVERSE, Phase.LOWER)
        return np.array([*delta, GRIPPER_CLOSED if closed else GRIPPER_OPEN])

    def _mj_model(self):
        return self._env.model

    def _robot_roots(self) -> list[str | int]:
        return ["base"]

    def _object_bodies(self) -> list[str | int]:
        return ["block"]

    def _hold_action(self) -> np.ndarray:
        return np.array([0.0, 0.0, 0.0, 1.0])  # no motion, jaws open

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()
