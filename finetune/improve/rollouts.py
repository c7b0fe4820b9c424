"""Roll out a policy in the simulator with β-mixing, and label every visited state (DAgger).

Per chunk of k actions a seeded coin decides who drives: the expert with probability β (its own actions,
step by step), the policy otherwise (k actions of one predicted chunk, as `vla eval` executes them).
Every frame records the observation, the action label and who chose it:

- ``dagger``: the expert labels the states the policy visited; every episode is kept, failures
  included, since their states are the ones the demonstrations never showed. Two labels (``labels``):
  - ``continuation`` (default): where a policy chunk starts, the simulator is replayed to that state
    (seed and executed actions: the simulators are deterministic) and the expert drives its own next k
    steps there; those k actions label the chunk's k frames. One consistent plan per chunk, as a chunked
    policy executes it. Costs O(T^2 / k) simulator steps per episode, no rendering for the scripted expert.
  - ``path``: the expert's action at every visited state, frame by frame. A phase-machine expert (SO-101)
    relabelling states its earlier labels did not lead to changes its mind mid-chunk; executed open loop
    its chunks finish the task less often (research/dagger_label_choice.py: 77% against 87%).
- ``self-imitation``: the label is the executed action; only successful episodes are kept.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

MODES = ("dagger", "self-imitation")
LABELS = {  # dagger's labels, as a round's provenance describes them
    "continuation": "DAgger: where a policy chunk began, the expert's own next actions from that state (replayed "
                    "in the simulator); where the expert drove, its actions",
    "path": "DAgger: the expert's action at every visited state (per-frame labels along the visited path)",
}


@dataclass(frozen=True)
class RolloutPlan:
    """Plain data for worker processes: which policy, simulator, cameras and expert."""

    env: str
    checkpoint: str
    embodiment: str
    cameras: tuple[str, ...]
    image_size: tuple[int, int]
    actions_per_chunk: int
    uses_state: bool
    expert: str  # load_expert spec
    mode: str
    beta: float
    seed: int  # the loop's seed: with the round and episode seed it fixes every coin flip
    round: int
    max_steps: int | None = None
    dtype: str = "auto"
    labels: str = "continuation"  # dagger only: see LABELS


@dataclass
class Rollout:
    """One episode: frames, labels and who chose each, and how it ended."""

    task: str
    seed: int
    instruction: str
    success: bool
    images: dict[str, np.ndarray]  # camera key -> (T, H, W, 3) uint8
    states: np.ndarray  # (T, S)
    labels: np.ndarray  # (T, D) the training labels
    executed: np.ndarray  # (T, D) what the robot executed
    sources: np.ndarray  # (T,) label_source codes
    expert_steps: int = 0
    policy_steps: int = 0
    ended_by: str = ""  # "success", "step limit", "no expert plan: ..."
    notes: list[str] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.labels)


class RolloutRunner:
    """One policy and one simulator per task, in this process."""

    def __init__(self, plan: RolloutPlan):
        from vla.evaluation.policies import PolicySource, open_predictor

        from .experts import load_expert

        self.plan = plan
        self.predictor = open_predictor(PolicySource("model", model=plan.checkpoint, threads=1, dtype=plan.dtype))
        self.expert = load_expert(plan.expert)
        self._envs: dict = {}

    def env(self, task: str, role: str = "rollout"):
        """The task's simulator; role "replay" is a second one, for the expert's continuations."""
        if (task, role) not in self._envs:
            from vla.sim import make_env

            p = self.plan
            self._envs[task, role] = make_env(p.env, task, cameras=list(p.cameras), image_size=p.image_size,
                                              max_steps=p.max_steps)
        return self._envs[task, role]

    def continuation(self, task: str, seed: int, executed: list[np.ndarray], state: np.ndarray, k: int) -> list:
        """The expert's own next (at most) k actions from the state ``executed`` led to (replayed from ``seed``).

        Fewer than k when the expert's episode ends first. Raises ExpertUnavailable like ``label``.
        """
        env, render = self.env(task, "replay"), getattr(self.expert, "reads_images", True)
        obs = env.reset(seed, render=False)
        for a in executed:
            obs, _, _ = env.step(a, render=False)
        if not np.array_equal(obs["state"], state):  # the label would belong to another state
            from vla.errors import ConfigError

            raise ConfigError(f"{self.plan.env} {task} seed {seed}: replaying {len(executed)} executed actions did not "
                              "reach the rollout's state (a non-deterministic simulator); use --labels path")
        obs = env.observation(render) if render else obs
        actions = []
        while len(actions) < k and not env.done:
            actions.append(np.asarray(self.expert.label(env, obs), np.float32))
            obs, _, _ = env.step(actions[-1], render=render)
        return actions

    def run(self, task: str, seed: int) -> Rollout:
        from vla.data.outcomes import label_code
        from vla.sim.base import ExpertUnavailable

        p, env = self.plan, self.env(task)
        rng = np.random.default_rng([p.seed, p.round, seed])
        relabel, demo, own = label_code("expert_relabel"), label_code("demonstration"), label_code("policy")
        cont_code = label_code("expert_continuation")
        images, states, labels, executed, sources = {}, [], [], [], []
        ended_by, counts = "", {"expert": 0, "policy": 0}
        obs = env.reset(seed)
        while not env.done and not ended_by:
            expert_drives = self.expert is not None and rng.random() < p.beta
            chunk, planned = None, []
            if not expert_drives:
                state = obs["state"] if p.uses_state else None
                chunk = self.predictor.predict(obs["images"], env.instruction, p.embodiment, state).actions
                if p.mode == "dagger" and p.labels == "continuation":
                    try:
                        planned = self.continuation(task, seed, executed, obs["state"], p.actions_per_chunk)
                    except ExpertUnavailable as e:
                        ended_by = f"no expert plan: {e}"
                        break
            for j in range(p.actions_per_chunk):
                label, source = None, demo if expert_drives else (relabel if p.mode == "dagger" else own)
                if j < len(planned):
                    label, source = planned[j], cont_code
                elif self.expert is not None and (expert_drives or p.mode == "dagger"):
                    try:  # the expert drives, path labels, or past the end of the expert's continuation
                        label = np.asarray(self.expert.label(env, obs), np.float32)
                    except ExpertUnavailable as e:
                        ended_by = f"no expert plan: {e}"
                        break
                action = label if expert_drives else np.asarray(chunk[j], np.float32)
                for k, img in obs["images"].items():
                    images.setdefault(k, []).append(img)
                states.append(obs["state"])
                labels.append(label if p.mode == "dagger" else action)
                executed.append(action)
                sources.append(source)
                counts["expert" if expert_drives else "policy"] += 1
                obs, _, done = env.step(action)
                if done:
                    break
        if not ended_by:
            ended_by = "success" if env.success else "step limit"
        dim = env.embodiment.action_dim
        return Rollout(
            task=task, seed=seed, instruction=env.instruction, success=bool(env.success),
            images={k: np.stack(v) for k, v in images.items()},
            states=np.asarray(states, np.float32).reshape(len(states), -1),
            labels=np.asarray(labels, np.float32).reshape(-1, dim), executed=np.asarray(executed, np.float32).reshape(-1, dim),
            sources=np.asarray(sources, np.int64), expert_steps=counts["expert"], policy_steps=counts["policy"],
            ended_by=ended_by,
        )

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self.predictor.close()
        close = getattr(self.expert, "close", None)
        if close is not None:
            close()


_RUNNER: RolloutRunner | None = None


def _worker(plan: RolloutPlan, task: str, seed: int) -> Rollout:
    global _RUNNER
    if _RUNNER is None:
        _RUNNER = RolloutRunner(plan)
    return _RUNNER.run(task, seed)


def collect(plan: RolloutPlan, jobs: list[tuple[str, int]], workers: int = 1, progress: bool = True):
    """Yield ``Rollout``s for (task, seed) jobs in job order; ``workers > 1`` runs them in spawned processes."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"round {plan.round} rollouts {plan.env}", unit="ep", dynamic_ncols=True,
                   file=sys.stderr)
    done = {"success": 0, "n": 0}

    def tick(r: Rollout) -> Rollout:
        if bar is not None:
            done["n"] += 1
            done["success"] += r.success
            bar.set_postfix(success=f"{done['success']}/{done['n']}")
            bar.update()
        return r

    try:
        if workers <= 1:
            runner = RolloutRunner(plan)
            try:
                for task, seed in jobs:
                    yield tick(runner.run(task, seed))
            finally:
                runner.close()
            return
        # spawn, not fork: MuJoCo GL contexts and torch thread pools do not survive fork
        env = {"OMP_NUM_THREADS": "1"}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_worker, plan, t, s): i for i, (t, s) in enumerate(jobs)}
                results: dict[int, Rollout] = {}
                nxt = 0
                for f in as_completed(futures):
                    results[futures[f]] = tick(f.result())
                    while nxt in results:  # in job order, so the dataset does not depend on timing
                        yield results.pop(nxt)
                        nxt += 1
        finally:
            for k, v in old.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    finally:
        if bar is not None:
            bar.close()
