"""Tiny random policies that fit a simulator's action space (for tests and harness benchmarks).

``vla.testing.make_tiny_checkpoint``'s embodiments use their own camera and action names; an
evaluation needs the simulator's, so this builds the embodiment from ``env.embodiment``
with synthetic action statistics spanning the simulator's action range.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np


def env_embodiment(env_name: str, task: str | None = None, cameras: list[str] | None = None, image_size: int = 32,
                   chunk_size: int = 4, seed: int = 0):
    """An Embodiment matching the simulator, with synthetic statistics (N(0, 0.5) clipped to the action range)."""
    from ..normalize import Stats
    from ..sim import make_env

    with make_env(env_name, task, cameras=cameras, image_size=image_size) as env:
        spec = env.embodiment
        state = env.reset(seed, render=False)["state"]
    rng = np.random.default_rng(seed)
    acts = rng.normal(0.0, 0.5, size=(256, spec.action_dim))
    if spec.action_low:
        acts = np.clip(acts, spec.action_low, spec.action_high)
    states = state[None, :] + rng.normal(0.0, 0.05, size=(256, spec.state_dim))
    return dataclasses.replace(spec, chunk_size=chunk_size, action_stats=Stats.from_array(acts),
                               state_stats=Stats.from_array(states))


def make_tiny_env_checkpoint(out_dir: str | Path, env_name: str, *, task: str | None = None,
                             cameras: list[str] | None = None, image_size: int = 32, chunk_size: int = 4,
                             decoding: str = "parallel", training: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """Save a randomly initialised tiny-LLaVA policy for ``env_name``; ``training`` is written as its provenance."""
    from ..action_tokenizers import make_action_tokenizer
    from ..backbones.tiny import build_tiny_vlm
    from ..policy import VLAPolicy

    emb = env_embodiment(env_name, task, cameras, image_size, chunk_size, seed)
    policy = VLAPolicy.from_backbone(build_tiny_vlm("llava", seed), [emb], make_action_tokenizer("bins", bins=32),
                                     decoding=decoding, seed=seed)
    if training is not None:
        policy.config.training = dict(training)
    return policy.save_pretrained(out_dir)
