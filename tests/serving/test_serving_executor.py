"""ChunkExecutor with a real, deterministic chunk policy running in its background thread.

The policy predicts ``actions[i] = t_obs + i`` for the step ``t_obs`` it observed, so the right
action for control step t is exactly ``t`` whatever the inference delay, and any lag shows up
as ``action < t``. Delays are made exact in steps: the policy returns only once the control loop
has advanced ``delay`` steps past the request.
"""

import threading
import time

import numpy as np
import pytest

from vla.client import ChunkExecutor
from vla.types import ActionChunk

H = 8


class StepPolicy:
    """obs = control step t; returns an ActionChunk with actions t, t+1, ..., t+H-1 (1-D)."""

    def __init__(self, delay_steps=0, horizon=H):
        self.delay, self.h, self.calls, self.executor, self.done = delay_steps, horizon, [], None, False

    def __call__(self, t):
        self.calls.append(t)
        deadline = time.monotonic() + 5
        background = threading.current_thread() is not threading.main_thread()  # sync calls: no wait
        while background and self.delay and not self.done and self.executor.step < t + self.delay and time.monotonic() < deadline:
            time.sleep(0.0005)
        actions = (t + np.arange(self.h, dtype=float))[:, None]
        return ActionChunk(actions, "arm", ["x"], 10.0, 0.0)


def run(executor, policy, steps, tick_s=0.002):
    policy.executor = executor
    out = []
    for t in range(steps):
        out.append(float(executor.act(t)[0]))
        time.sleep(tick_s)  # the robot's control period
    policy.done = True  # release a request still waiting for steps that will not come
    return np.array(out)


def test_blocking_mode_executes_k_actions_per_chunk():
    policy = StepPolicy()
    with ChunkExecutor(policy, execute_steps=3, prefetch=False) as ex:
        actions = run(ex, policy, 10, tick_s=0)
    assert actions.tolist() == list(range(10))
    assert policy.calls == [0, 3, 6, 9]
    assert ex.stats.chunks == 4 and ex.stats.stale_skipped == 0 and ex.stats.starved_steps == 4


@pytest.mark.parametrize("ensemble_m", [None, 0.1])
def test_prefetch_with_delay_compensation_stays_on_time(ensemble_m):
    policy = StepPolicy(delay_steps=3)
    with ChunkExecutor(policy, execute_steps=3, ensemble_m=ensemble_m) as ex:
        actions = run(ex, policy, 30)
    # every executed action is the one meant for its step: stale actions were skipped
    np.testing.assert_allclose(actions, np.arange(30), atol=1e-9)
    assert policy.calls[:2] == [0, 3], (policy.calls, ex.stats)  # next request while the first chunk runs
    delays = ex.stats.delays_steps[1:]  # the first chunk was fetched synchronously
    assert delays and all(d >= 3 for d in delays), ex.stats
    assert ex.stats.stale_skipped == sum(ex.stats.delays_steps), ex.stats
    # k + delay < H leaves slack: the robot waited at step 0 and, on a loaded machine, rarely after
    assert 1 <= ex.stats.starved_steps <= 3, ex.stats
    assert ex.stats.mean_delay_ms > 0


def test_without_compensation_the_robot_lags_by_the_delay():
    policy = StepPolicy(delay_steps=3)
    with ChunkExecutor(policy, execute_steps=4, compensate_delay=False) as ex:
        actions = run(ex, policy, 20)
    lag = np.arange(20) - actions
    assert lag[:4].tolist() == [0, 0, 0, 0]  # first chunk: fetched while the robot waited
    assert lag[8:].min() >= 3  # afterwards each chunk starts d steps late
    assert ex.stats.stale_skipped == 0


def test_temporal_ensembling_weights_follow_act():
    # Two chunks disagree by a constant: the blend must use w_i = exp(-m * i), oldest first.
    m = 0.5
    outputs = iter([np.zeros((H, 1)), np.ones((H, 1))])
    ex = ChunkExecutor(lambda obs: next(outputs), execute_steps=2, prefetch=False, ensemble_m=m)
    a = [float(ex.act(None)[0]) for _ in range(3)]
    w0, w1 = 1.0, np.exp(-m)
    assert a[:2] == [0.0, 0.0]
    assert a[2] == pytest.approx((w0 * 0 + w1 * 1) / (w0 + w1))
    ex.close()


def test_starvation_waits_for_the_inflight_chunk_and_reset_starts_over():
    policy = StepPolicy(horizon=2)
    with ChunkExecutor(policy, execute_steps=2) as ex:
        actions = run(ex, policy, 12, tick_s=0)
        assert actions.tolist() == list(range(12))
        ex.reset()
        assert ex.step == 0 and ex.stats.chunks == 0
        assert float(ex.act(0)[0]) == 0.0


def test_policy_errors_surface_in_act():
    def broken(obs):
        raise RuntimeError("server down")

    with ChunkExecutor(broken, execute_steps=2) as ex:
        with pytest.raises(RuntimeError, match="server down"):
            ex.act(0)
    with pytest.raises(ValueError):
        ChunkExecutor(broken, execute_steps=0)


def test_executor_is_driven_from_one_thread_while_inference_runs_in_another():
    seen = set()

    def policy(t):
        seen.add(threading.current_thread().name)
        return (t + np.arange(H, dtype=float))[:, None]

    with ChunkExecutor(policy, execute_steps=2) as ex:
        for t in range(10):
            ex.act(t)
    assert any(name.startswith("vla-inference") for name in seen)
