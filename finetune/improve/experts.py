"""Who labels the states a policy visits: the simulator's scripted expert, a Python callable, or a served policy.

An expert is anything with ``name`` and ``label(env, obs) -> action``: the action (D,), in the robot's
physical units, that it would take in the simulator's current state. It must label any state, not only
those on its own path: the policy drove the robot there.

    vla improve --expert scripted                      # the simulator's expert (SimEnv.expert_label)
    vla improve --expert my_pkg.teachers:label_fn      # label_fn(env, obs) -> np.ndarray (D,)
    vla improve --expert http://teacher:3000           # a stronger policy behind `vla serve`: its first action
    vla improve --expert none --mode self-imitation    # no expert: keep the policy's successful episodes
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from vla.errors import ConfigError


class Expert(Protocol):
    name: str
    reads_images: bool  # False: it reads the simulator state only (continuations need not render)

    def label(self, env, obs: dict) -> np.ndarray:
        """The expert's action (D,) for the simulator's current state; raise ExpertUnavailable if it has none."""


@dataclass
class ScriptedExpert:
    """The simulator's own scripted expert, relabelling whatever state the robot is in."""

    name: str = "scripted"
    reads_images: bool = False

    def label(self, env, obs: dict) -> np.ndarray:
        return env.expert_label()


@dataclass
class CallableExpert:
    """A user's function ``fn(env, obs) -> action``."""

    fn: Callable[[Any, dict], Any]
    name: str
    reads_images: bool = True

    def label(self, env, obs: dict) -> np.ndarray:
        a = np.asarray(self.fn(env, obs), np.float32).reshape(-1)
        dim = env.embodiment.action_dim
        if a.shape != (dim,) or not np.all(np.isfinite(a)):
            raise ConfigError(f"expert {self.name} returned {a.shape} {a[:4]}...; it must return {dim} finite values")
        return a


class ServedExpert:
    """A teacher policy behind ``vla serve``: the first action of the chunk it predicts for the observation."""

    reads_images = True

    def __init__(self, url: str, embodiment: str | None = None):
        from vla.client import VLAClient

        self.url, self.embodiment = url, embodiment
        self.name = f"policy served at {url}"
        self._client = VLAClient(url)

    def label(self, env, obs: dict) -> np.ndarray:
        emb = self.embodiment or env.embodiment.name
        chunk = self._client.predict(obs["images"], env.instruction, emb, obs["state"])
        return np.asarray(chunk.actions[0], np.float32)

    def close(self) -> None:
        self._client.close()


def load_expert(spec: str) -> Expert | None:
    """``scripted``, ``none``, ``http(s)://HOST:PORT`` or ``module:function`` (see the module docstring)."""
    if spec == "scripted":
        return ScriptedExpert()
    if spec == "none":
        return None
    if spec.startswith(("http://", "https://")):
        return ServedExpert(spec)
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"--expert {spec!r}: use 'scripted', 'none', a server URL (http://HOST:PORT) or "
                          "'module:function' naming a function (env, obs) -> action")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--expert {spec!r}: cannot import {attr!r} from {module!r} ({e})") from None
    if not callable(fn):
        raise ConfigError(f"--expert {spec!r} is not callable")
    return CallableExpert(fn, spec)
