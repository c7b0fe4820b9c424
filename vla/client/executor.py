"""Execute action chunks in a fixed-rate control loop, with inference running in the background.

Time is counted in control steps (calls to ``act``). A chunk requested at step ``r`` predicts the
actions for steps ``r, r+1, ..., r+H-1``. With ``prefetch`` the next chunk is requested every
``execute_steps`` (k) steps in a background thread while the robot keeps executing the current
one, so in steady state k actions of each chunk are executed open-loop and the robot never waits
(as long as k + inference delay <= H).

Delay compensation: a chunk that arrives ``d`` steps after its request is already ``d`` steps
old; its first ``d`` actions belong to the past, so they are skipped (counted in
``stats.stale_skipped``) and execution starts at action ``d``. With ``compensate_delay=False`` the
chunk is executed from its first action (the robot replays the past; the lag shows in tests).

Blending: ``ensemble_m=None`` switches to the newest chunk as soon as it arrives; a float m
blends every chunk that has a prediction for the current step with ACT's temporal-ensembling
weights ``w_i = exp(-m * i)``, i = 0 for the oldest prediction (m > 0 favours older chunks,
m = 0 is a plain mean, m < 0 favours newer ones).
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from vla.types import ActionChunk

Policy = Callable[[Any], "ActionChunk | np.ndarray"]


@dataclass
class ExecutorStats:
    """What happened so far; delays are from request to the step the chunk was first used."""

    steps: int = 0
    chunks: int = 0
    stale_skipped: int = 0  # actions dropped because they were already in the past
    starved_steps: int = 0  # steps at which act() had to wait for inference
    delays_ms: list[float] = field(default_factory=list)
    delays_steps: list[int] = field(default_factory=list)

    @property
    def mean_delay_ms(self) -> float:
        return float(np.mean(self.delays_ms)) if self.delays_ms else math.nan

    @property
    def mean_delay_steps(self) -> float:
        return float(np.mean(self.delays_steps)) if self.delays_steps else math.nan


@dataclass
class _Chunk:
    start: int  # the step its action 0 is meant for
    actions: np.ndarray  # (H, D)

    def covers(self, t: int) -> bool:
        return self.start <= t < self.start + len(self.actions)


class ChunkExecutor:
    """Turn a chunk policy ``obs -> ActionChunk | (H, D) array`` into ``act(obs) -> (D,)`` per step."""

    def __init__(self, policy: Policy, execute_steps: int = 8, *, prefetch: bool = True,
                 ensemble_m: float | None = None, compensate_delay: bool = True):
        if execute_steps < 1:
            raise ValueError(f"execute_steps must be >= 1, got {execute_steps}")
        self.policy, self.k = policy, int(execute_steps)
        self.prefetch, self.ensemble_m, self.compensate = prefetch, ensemble_m, compensate_delay
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-inference") if prefetch else None
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget all chunks (new episode); an in-flight request is dropped when it arrives."""
        with self._lock:
            self._t = 0
            self._chunks: list[_Chunk] = []
            self._pending: tuple[Future, int, float] | None = None
            self._last_request = -(10**9)
            self.stats = ExecutorStats()

    @property
    def step(self) -> int:
        """The index of the next step ``act`` will produce an action for."""
        return self._t

    def act(self, obs: Any) -> np.ndarray:
        """The action to apply now. ``obs`` is passed to the policy as is (it is not copied)."""
        t, waited = self._t, False
        self._collect(t, block=False)
        if self._pending is None and t - self._last_request >= self.k:
            if self.prefetch and self._chunks:
                self._request_async(obs, t)
                self._collect(t, block=False)  # a very fast policy may be done already
            else:
                self._request_sync(obs, t)
                waited = True
        while not any(c.covers(t) for c in self._chunks):  # out of actions: wait
            waited = True
            if self._pending is not None:
                self._collect(t, block=True)
            else:
                self._request_sync(obs, t)
        self.stats.starved_steps += waited
        self._t += 1
        self.stats.steps += 1
        return self._action_at(t)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)  # don't hang on a slow in-flight request

    def __enter__(self) -> "ChunkExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _call(self, obs: Any) -> np.ndarray:
        out = self.policy(obs)
        actions = np.asarray(out.actions if isinstance(out, ActionChunk) else out, dtype=np.float64)
        if actions.ndim != 2 or len(actions) == 0:
            raise ValueError(f"the policy must return (H, D) actions, got shape {actions.shape}")
        return actions

    def _request_async(self, obs: Any, t: int) -> None:
        assert self._pool is not None
        self._pending = (self._pool.submit(self._call, obs), t, time.perf_counter())
        self._last_request = t

    def _request_sync(self, obs: Any, t: int) -> None:
        t0 = time.perf_counter()
        actions = self._call(obs)
        self._last_request = t
        self._add(actions, requested=t, arrived=t, t0=t0)  # the robot waited: nothing is stale

    def _collect(self, t: int, block: bool) -> None:
        if self._pending is None:
            return
        fut, requested, t0 = self._pending
        if not block and not fut.done():
            return
        self._pending = None
        self._add(fut.result(), requested=requested, arrived=t, t0=t0)

    def _add(self, actions: np.ndarray, requested: int, arrived: int, t0: float) -> None:
        start = requested if self.compensate else arrived
        self._chunks.append(_Chunk(start, actions))
        self.stats.chunks += 1
        self.stats.delays_ms.append((time.perf_counter() - t0) * 1e3)
        self.stats.delays_steps.append(arrived - requested)
        self.stats.stale_skipped += max(0, min(arrived - start, len(actions)))
        # keep only chunks that can still contribute (switch mode needs just the newest)
        live = [c for c in self._chunks if c.start + len(c.actions) > arrived]
        self._chunks = live if self.ensemble_m is not None else live[-1:]

    def _action_at(self, t: int) -> np.ndarray:
        covering = [c for c in self._chunks if c.covers(t)]
        if self.ensemble_m is None:
            return covering[-1].actions[t - covering[-1].start].copy()
        preds = np.stack([c.actions[t - c.start] for c in covering])  # oldest first
        w = np.exp(-self.ensemble_m * np.arange(len(preds)))
        return (w[:, None] * preds).sum(0) / w.sum()
