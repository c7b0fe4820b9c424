"""Meta-World (Sawyer arm) tasks with the shipped scripted experts and our own instructions."""

from __future__ import annotations

import warnings

import numpy as np

from ..embodiment import Embodiment
from .base import SimEnv, camera_key
from .rendering import CameraRenderer

# Meta-World ships no language. One instruction per task, written from what the scene shows.
# MT10 first, then tasks whose shipped expert also succeeds reliably (>= 90 % over seeds).
INSTRUCTIONS: dict[str, str] = {
    "reach-v3": "reach the red target point with the gripper",
    "push-v3": "push the puck to the green target",
    "pick-place-v3": "pick up the puck and place it at the blue target",
    "door-open-v3": "open the door by pulling its handle",
    "drawer-open-v3": "pull the drawer open",
    "drawer-close-v3": "push the drawer closed",
    "button-press-topdown-v3": "press the red button down from above",
    "peg-insert-side-v3": "pick up the green peg and insert it sideways into the hole in the box",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
    "button-press-v3": "press the red button on the front of the box",
    "door-close-v3": "push the door closed",
    "faucet-open-v3": "turn the faucet handle to open it",
    "faucet-close-v3": "turn the faucet handle to close it",
    "handle-press-v3": "press the handle down",
    "lever-pull-v3": "pull the lever up",
    "coffee-button-v3": "press the button on the coffee machine",
    "plate-slide-v3": "slide the plate into the goal",
    "dial-turn-v3": "turn the dial",
    "basketball-v3": "put the ball into the basket",
}
MT10 = tuple(list(INSTRUCTIONS)[:10])
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
_UPSIDE_DOWN = ("corner", "corner2", "corner3", "corner4")  # these render rotated by 180 degrees


class MetaWorldEnv(SimEnv):
    """A Meta-World v3 task; each seed draws a new object/goal placement (Meta-World's own ranges).

    Actions: (dx, dy, dz) in [-1, 1] x 1 cm of hand motion per step and grip (+1 closes).
    State: hand xyz and gripper opening (0 closed .. 1 open). 80 Hz control.
    """

    env_name = "metaworld"
    tasks = tuple(INSTRUCTIONS)
    default_cameras = ("corner2",)
    all_cameras = CAMERAS
    expert_name = "metaworld.policies.ENV_POLICY_MAP (shipped scripted policies)"
    licence = "MIT (Meta-World)"
    noise_unit = (1.0, 1.0, 1.0, 0.0)  # action units (1 cm); grip untouched

    def __init__(self, task: str = "pick-place-v3", cameras: list[str] | None = None, image_size=128,
                 max_steps: int = 500):
        super().__init__(task, cameras, image_size, max_steps)
        from metaworld.env_dict import ENV_CLS_MAP
        from metaworld.policies import ENV_POLICY_MAP

        self._env = ENV_CLS_MAP[self.task]()
        # Seeded per-reset variations (Meta-World's seeded_rand_vec path) with the goal in the raw
        # observation, which the shipped experts read. set_task() does the same cache invalidation.
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        self._env._set_task_called = True
        self._env._partially_observable = False
        self._env.__dict__.pop("sawyer_observation_space", None)
        self._env.max_path_length = max(self.max_steps, 1)
        self._policy = ENV_POLICY_MAP[self.task]()
        self._renderer = CameraRenderer(self._env.model, self.cameras, self.image_size, flip=_UPSIDE_DOWN)
        self._raw_obs: np.ndarray | None = None

    @property
    def simulator(self) -> str:  # type: ignore[override]
        from importlib.metadata import version

        return f"metaworld {version('metaworld')} (mujoco {version('mujoco')})"

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS[self.task]

    def _make_embodiment(self) -> Embodiment:
        return Embodiment(
            name="sawyer", robot_type="sawyer",
            action_names=["delta_x", "delta_y", "delta_z", "gripper"],
            state_names=["ee_x", "ee_y", "ee_z", "gripper_opening"],
            control_hz=1.0 / self._env.dt,
            chunk_size=1, cameras=[camera_key(c) for c in self.cameras], image_size=self.image_size,
            description="Rethink Sawyer in Meta-World: end-effector position deltas (1 cm per unit), grip +1 closes",
            action_low=[-1.0] * 4, action_high=[1.0] * 4,
        )

    def _reset_sim(self, seed: int) -> None:
        self._env.seed(seed)
        self._raw_obs, _ = self._env.reset()
        self._policy = type(self._policy)()  # the shipped policies are stateless; a fresh one is cheap

    def _apply(self, action: np.ndarray) -> tuple[bool, bool]:
        self._raw_obs, _, _, _, info = self._env.step(action.astype(np.float32))
        return bool(info["success"]), False

    def _state(self) -> np.ndarray:
        return self._raw_obs[:4]

    def _render(self) -> dict[str, np.ndarray]:
        return self._renderer.render(self._env.data)

    def _expert(self) -> np.ndarray:
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips, and so do we
            warnings.simplefilter("ignore", UserWarning)
            return self._policy.get_action(self._raw_obs)

    def _label(self) -> np.ndarray:
        return self._expert()  # the shipped policies are stateless: they label any raw observation

    def _mj_model(self):
        return self._env.model

    def _robot_roots(self) -> list[str | int]:
        return ["base"]  # the Sawyer on its pedestal

    def _object_bodies(self) -> list[str | int]:
        m = self._env.model  # the task's own bodies come after the hand's mocap body in every Meta-World scene
        return [b for b in range(m.body("mocap").id + 1, m.nbody) if m.body_parentid[b] == 0]

    def _hold_action(self) -> np.ndarray:
        return np.array([0.0, 0.0, 0.0, -1.0])  # no motion, gripper open

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()
