"""The one interface every simulated environment implements (evaluation and data generation use it)."""

from __future__ import annotations

import abc

import numpy as np

from ..embodiment import Embodiment
from ..errors import ConfigError, InvalidInputError, VLAError, pick
from .rendering import as_hw

IMAGE_KEY_PREFIX = "observation.images."


class ExpertUnavailable(VLAError, RuntimeError):
    """The scripted expert has no plan from the current state (e.g. the object fell off the table).

    ``SimEnv.expert_label()`` raises it; whoever asked should end the episode there.
    """


def camera_key(camera: str) -> str:
    """Dataset key of a camera (the LeRobot convention: ``observation.images.<cam>``)."""
    return IMAGE_KEY_PREFIX + camera


def pick_tasks(cls: type[SimEnv], tasks, env_name: str) -> list[str]:
    """Validate a task list for ``cls`` (default: its first task); unknown or repeated tasks raise ConfigError."""
    tasks = list(tasks) if tasks else [cls.tasks[0]]
    for t in tasks:
        pick(t, cls.tasks, f"{env_name} task")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks listed twice: {tasks}")
    return tasks


class SimEnv(abc.ABC):
    """A seeded, headless simulated task with a scripted expert.

    ``reset(seed)`` -> obs; ``step(action)`` -> (obs, success, done); ``step_chunk(actions)`` runs
    k actions and stops at the first success. Observations are
    ``{"images": {"observation.images.<cam>": uint8 (H, W, 3)}, "state": float32 (S,)}``.
    An episode is done at the first success, when the simulator ends it, or after ``max_steps``.
    """

    env_name: str = ""
    tasks: tuple[str, ...] = ()
    default_cameras: tuple[str, ...] = ()
    all_cameras: tuple[str, ...] = ()
    simulator: str = ""  # e.g. "metaworld 3.1.1" (for provenance)
    expert_name: str = ""
    licence: str = ""
    # Unit of ``--action-noise`` per action dimension; 0 leaves a dimension (a gripper) unperturbed.
    noise_unit: tuple[float, ...] = ()
    # Milestones on the way to success, in order (e.g. touched, lifted): `vla eval` reports how many
    # episodes reached each, so a 0/N task still shows where the policy fails.
    stages: tuple[str, ...] = ()

    def __init__(self, task: str, cameras: list[str] | None, image_size, max_steps: int):
        self.task = pick(task, self.tasks, f"{self.env_name} task")
        self.cameras = list(cameras) if cameras else list(self.default_cameras)
        if len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"cameras listed twice: {self.cameras}")
        for cam in self.cameras:  # fail before building the simulator
            pick(cam, self.all_cameras, f"{self.env_name} camera")
        self.image_size = as_hw(image_size)
        if int(max_steps) < 1:
            raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = int(max_steps)
        self.steps = 0
        self.seed: int | None = None
        self._success = False
        self._done = True
        self._stage_reached = 0
        self._diverged = False
        self._embodiment: Embodiment | None = None
        self.randomization: dict | None = None  # a config from vla.sim.randomization.load_config
        self.scene: dict = {}  # this episode's sampled scene parameters ({} when not randomized)
        self._randomizer = None
        self._pending: list[np.ndarray] = []  # commands on their way to the robot (latency)
        self._noise: tuple[np.ndarray, np.random.Generator] | None = None

    # -- what each simulator implements -------------------------------------------------------
    @property
    @abc.abstractmethod
    def instruction(self) -> str:
        """The natural-language instruction of the current task."""

    @abc.abstractmethod
    def _make_embodiment(self) -> Embodiment:
        """This robot with ``chunk_size=1`` (one action per simulator step) and no statistics."""

    @property
    def embodiment(self) -> Embodiment:
        """Action/state names, control rate, cameras, image size and command range of this robot (fixed for
        the env's life). A policy's embodiment for it: ``dataclasses.replace(env.embodiment, chunk_size=H,
        action_stats=...)``."""
        if self._embodiment is None:
            self._embodiment = self._make_embodiment()
        return self._embodiment

    @abc.abstractmethod
    def _reset_sim(self, seed: int) -> None:
        """Reset the simulator to the seeded initial state."""

    @abc.abstractmethod
    def _apply(self, action: np.ndarray) -> tuple[bool, bool]:
        """Advance one control step; return (success, terminated by the simulator)."""

    @abc.abstractmethod
    def _state(self) -> np.ndarray: ...

    @abc.abstractmethod
    def _render(self) -> dict[str, np.ndarray]:
        """Images of the requested cameras, keyed by camera name."""

    def _stage(self) -> int:
        """How many of ``stages`` the current simulator state meets (envs that declare stages override)."""
        return 0

    def _expert(self) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no scripted expert")

    def _label(self) -> np.ndarray:
        """The expert's action for the current simulator state alone (no phase counters); see expert_label."""
        raise NotImplementedError(f"{type(self).__name__} has no expert that labels arbitrary states")

    # -- randomization hooks: the MuJoCo model, its robot and task objects, the "do nothing" action
    def _mj_model(self):
        raise NotImplementedError(f"{type(self).__name__} does not support randomization")

    def _robot_roots(self) -> list[str | int]:
        raise NotImplementedError

    def _object_bodies(self) -> list[str | int]:
        raise NotImplementedError

    def _hold_action(self) -> np.ndarray:
        """What the robot executes while a delayed first command is on its way (keeps still)."""
        raise NotImplementedError

    # Errors the simulator raises when an action makes its physics unstable (e.g. dm_control's PhysicsError).
    # The episode then ends as a failure, as a robot's safety stop would, instead of ending the evaluation.
    unstable_errors: tuple[type[BaseException], ...] = ()

    def _clip(self, action: np.ndarray) -> np.ndarray:
        e = self.embodiment
        return np.clip(action, e.action_low, e.action_high) if e.action_low else action

    # -- the shared interface ------------------------------------------------------------------
    def reset(self, seed: int, render: bool = True) -> dict:
        """Reset to the initial state drawn from ``seed`` (same seed -> identical observation).

        ``render=False`` (here and in step/step_chunk) skips the cameras: ``obs["images"]`` is empty.
        """
        if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"reset needs a non-negative integer seed, got {seed!r}")
        self.seed, self.steps, self._success, self._done = int(seed), 0, False, False
        self._stage_reached, self._diverged = 0, False
        self._randomize(int(seed))
        self._reset_sim(int(seed))
        if "latency" in self.scene:
            self._pending = [np.asarray(self._hold_action(), dtype=np.float64)] * self.scene["latency"]["steps"]
        return self.observation(render)

    def set_randomization(self, config: dict | None) -> None:
        """Randomize every later ``reset(seed)`` with ``config`` (vla.sim.randomization.load_config); None: nominal."""
        self.randomization = config

    def _randomize(self, seed: int) -> None:
        from . import randomization as rz
        from .randomizer import SceneRandomizer

        self._pending, self._noise = [], None
        if self.randomization is None and self._randomizer is None:
            self.scene = {}
            return
        if self._randomizer is None:
            self._randomizer = SceneRandomizer(self._mj_model(), self._robot_roots(), self._object_bodies())
        self.scene = rz.sample(self.randomization or {}, seed, self.env_name)
        self._randomizer.apply(self.scene)
        renderer = getattr(self, "_renderer", None)
        if renderer is not None:
            renderer.randomize(self.scene.get("camera"), self.scene.get("distractors", {}).get("objects", []),
                               rz.DISTRACTOR_AREA[self.env_name][2])
        if "action_noise" in self.scene:
            p = self.scene["action_noise"]
            self._noise = (p["std"] * np.asarray(self.noise_unit), np.random.default_rng(p["seed"]))

    def state(self) -> np.ndarray:
        """The current proprioceptive state, float32 (S,)."""
        return np.asarray(self._state(), dtype=np.float32)

    def observation(self, render: bool = True) -> dict:
        """The current observation (renders every requested camera unless ``render=False``)."""
        images = {camera_key(c): img for c, img in self._render().items()} if render else {}
        return {"images": images, "state": self.state()}

    def _check_action(self, action, dim: int) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (dim,):
            raise InvalidInputError(f"{self.env_name} expects an action of shape ({dim},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise InvalidInputError(f"{self.env_name} action contains NaN or inf: {a.tolist()}")
        return a

    def _advance(self, action) -> tuple[bool, bool]:
        if self.seed is None:
            raise RuntimeError("call reset(seed) before stepping")
        if self._done:
            raise RuntimeError("the episode is over (success, termination or max_steps): call reset(seed) first")
        a = self._clip(self._check_action(action, self.embodiment.action_dim))
        if "latency" in self.scene:  # the command issued now arrives `steps` steps later
            self._pending.append(a)
            a = self._pending.pop(0)
        if self._noise is not None:
            std, rng = self._noise
            a = self._clip(a + std * rng.standard_normal(a.shape))
        try:
            success, terminated = self._apply(a)
        except self.unstable_errors:
            self._diverged = True
            success, terminated = False, True
        self.steps += 1
        self._success = bool(success)
        self._done = self._success or bool(terminated) or self.steps >= self.max_steps
        if self.stages:
            now = len(self.stages) if self._success else self._stage()
            self._stage_reached = max(self._stage_reached, now)
        return self._success, self._done

    def step(self, action, render: bool = True) -> tuple[dict, bool, bool]:
        """Execute one action; returns (obs, success, done)."""
        success, done = self._advance(action)
        return self.observation(render), success, done

    def step_chunk(self, actions, render: bool = True) -> tuple[dict, bool, bool]:
        """Execute up to k actions (k, D), stopping early at success or episode end; renders once."""
        acts = np.asarray(actions, dtype=np.float64)
        if acts.ndim != 2 or acts.shape[0] < 1:
            raise InvalidInputError(f"step_chunk expects actions of shape (k, {self.embodiment.action_dim}), got {acts.shape}")
        success = done = False
        for a in acts:
            success, done = self._advance(a)
            if done:
                break
        return self.observation(render), success, done

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, shape (D,), clipped to the action range.

        Stateful experts advance once per step: asking twice before stepping returns the same action.
        """
        if self._done:
            raise RuntimeError("the episode is over: call reset(seed) before asking the expert")
        return self._clip(np.asarray(self._expert(), dtype=np.float64)).astype(np.float32)

    def expert_label(self) -> np.ndarray:
        """The expert's action for the current state, whoever drove the robot here, (D,) float32, clipped.

        Unlike ``expert_action`` (the expert's own episode, which may keep a phase counter or an
        open-loop plan) it reads where the task stands from the simulator state, so it labels states a
        policy reached (DAgger). Asking twice without stepping returns the same action. Raises
        ExpertUnavailable when no expert plan exists from here: end the episode then.
        """
        if self._done:
            raise RuntimeError("the episode is over: call reset(seed) before asking the expert")
        return self._clip(np.asarray(self._label(), dtype=np.float64)).astype(np.float32)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def success(self) -> bool:
        return self._success

    @property
    def diverged(self) -> bool:
        """Whether this episode ended because an action made the physics unstable (a failure)."""
        return self._diverged

    @property
    def stage_reached(self) -> int:
        """How far this episode got: the most ``stages`` met at any step so far (all of them on success)."""
        return self._stage_reached

    def close(self) -> None:
        """Release renderers (safe to call twice)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
