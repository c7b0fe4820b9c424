"""Simulated robots with scripted experts: seeded evaluation environments and demonstration generation.

Importing this package sets up headless OpenGL (EGL, else OSMesa) before MuJoCo is imported.

>>> env = make_env("metaworld", task="pick-place-v3", cameras=["corner2"], image_size=128)
>>> obs = env.reset(seed=0)
>>> obs, success, done = env.step(env.expert_action())
>>> label = env.expert_label()  # the expert's action for whatever state the robot is in (DAgger)
"""

from __future__ import annotations

from .rendering import setup_headless_gl

GL_BACKEND = setup_headless_gl()

from ..errors import pick  # noqa: E402
from .base import ExpertUnavailable, SimEnv, camera_key  # noqa: E402

ENVS = ("metaworld", "aloha", "so101")


def env_class(env_name: str) -> type[SimEnv]:
    """The SimEnv subclass for an environment name (imports its simulator lazily)."""
    pick(env_name, ENVS, "environment")
    if env_name == "metaworld":
        from .metaworld_env import MetaWorldEnv as cls
    elif env_name == "aloha":
        from .aloha_env import AlohaTransferCubeEnv as cls
    else:
        from .so101_env import SO101PickPlaceEnv as cls
    return cls


def list_tasks(env_name: str) -> tuple[str, ...]:
    """Valid task names of an environment."""
    return env_class(env_name).tasks


def expand_tasks(env_name: str, tasks: list[str] | None) -> list[str] | None:
    """Expand Meta-World's 'mt10' and 'all' task groups; other names pass through."""
    if env_name != "metaworld" or not tasks:
        return tasks
    from .metaworld_env import INSTRUCTIONS, MT10

    out: list[str] = []
    for t in tasks:
        out.extend(MT10 if t.lower() == "mt10" else list(INSTRUCTIONS) if t.lower() == "all" else [t])
    return list(dict.fromkeys(out))


def make_env(env_name: str, task: str | None = None, cameras: list[str] | None = None, image_size=128,
             max_steps: int | None = None, randomize: dict | None = None) -> SimEnv:
    """Create a seeded simulated environment.

    env_name: "metaworld" (tasks like "pick-place-v3"), "aloha" ("transfer-cube") or "so101"
    ("pick-place"); task defaults to the first task; cameras default to the env's default view;
    image_size is an int (square) or (H, W); max_steps defaults to the env's episode limit;
    randomize is a domain-randomization config (``vla.sim.randomization.load_config``) drawn per reset seed.
    """
    cls = env_class(env_name)
    kwargs = {} if max_steps is None else {"max_steps": max_steps}
    env = cls(task=task or cls.tasks[0], cameras=cameras, image_size=image_size, **kwargs)
    env.set_randomization(randomize)
    return env


__all__ = ["ENVS", "GL_BACKEND", "ExpertUnavailable", "SimEnv", "camera_key", "env_class", "expand_tasks", "list_tasks",
           "make_env"]
