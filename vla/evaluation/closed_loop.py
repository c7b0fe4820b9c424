"""Closed-loop evaluation: the policy drives the seeded simulator until success or the step limit.
(Over 400 lines: the episode runner, its worker pool and the result record share one plan.)

Each episode: ``env.reset(seed)``, then a ChunkExecutor (vla/client/executor.py, the robot's
controller) asks the policy for an H-action chunk, executes k of them open loop, asks again, ...
Episode ``i`` of every task uses seed ``seed_start + i``, so an episode's outcome depends only on
(task, seed, policy): results are identical for any number of worker processes (with the default
synchronous executor; ``prefetch``/``realtime`` make them depend on timing, as on a robot).
"""

from __future__ import annotations

import datetime
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .policies import EvaluationError, PolicySource, open_predictor, policy_metadata
from .recording import FORMATS, compose_frame, write_episode_video
from .report import bar_plot, format_table, summarize, write_json
from .seeds import check_seeds, collect_training_seeds, seeds_from_training

DEFAULT_SEED_START = 100_000  # far above `vla data generate`'s default seeds (0, 1, ...)
DEFAULT_IMAGE_SIZE = 128  # when the checkpoint does not record the training image size


@dataclass(frozen=True)
class EvalPlan:
    """Everything a worker needs to run episodes (plain data: it is pickled to spawned workers)."""

    env: str
    source: PolicySource
    embodiment: str
    cameras: tuple[str, ...]  # simulator camera names
    image_size: tuple[int, int]
    max_steps: int | None
    chunk_size: int
    actions_per_chunk: int
    uses_state: bool
    prefetch: bool = False
    realtime: bool = False
    ensemble_m: float | None = None
    record_dir: str | None = None
    record_format: str = "mp4"
    randomization: dict | None = None  # a perturbation's config (vla.sim.randomization), drawn per episode seed


@dataclass(frozen=True)
class Job:
    index: int
    task: str
    seed: int
    record: bool = False


@dataclass
class EpisodeResult:
    index: int
    task: str
    seed: int
    success: bool
    length: int  # control steps executed
    wall_s: float  # closed-loop time (policy + simulation + rendering)
    policy_s: float
    policy_calls: int
    latencies_ms: list[float] = field(default_factory=list)  # per policy call, as the controller saw it
    model_ms: list[float] = field(default_factory=list)  # server-reported model time (server source)
    stale_skipped: int = 0
    starved_steps: int = 0
    mean_delay_steps: float | None = None
    action_l1: float = 0.0  # sum |a| of executed actions: a cheap fingerprint for parity checks
    final_state: list[float] = field(default_factory=list)
    stage: int | None = None  # milestones reached (SimEnv.stages); None for a simulator without stages
    diverged: bool = False  # ended early because an action made the physics unstable (counted as a failure)
    instruction: str = ""
    video: str | None = None
    scene: dict = field(default_factory=dict)  # the perturbation's parameters drawn for this seed


class EpisodeRunner:
    """Owns one policy connection and one env per task; runs episodes one after another."""

    def __init__(self, plan: EvalPlan):
        self.plan = plan
        self.predictor = open_predictor(plan.source) if plan.source.kind != "expert" else None
        self._envs: dict[str, Any] = {}

    def env(self, task: str):
        if task not in self._envs:
            from ..sim import make_env

            p = self.plan
            self._envs[task] = make_env(p.env, task, cameras=list(p.cameras), image_size=p.image_size,
                                        max_steps=p.max_steps, randomize=p.randomization)
        return self._envs[task]

    def run(self, job: Job) -> EpisodeResult:
        p, env = self.plan, self.env(job.task)
        latencies, model_ms, busy = [], [], [0.0]
        lazy = not (p.prefetch or p.realtime or job.record)  # render only when the policy looks
        instruction = env.instruction

        if p.source.kind == "expert":
            def call(obs):  # the expert reads the simulator state, not pixels
                t0 = time.perf_counter()
                a = env.expert_action()[None]
                latencies.append((time.perf_counter() - t0) * 1e3)
                return a
        else:
            pred = self.predictor

            def call(obs):
                if obs is None:
                    obs = env.observation()
                t0 = time.perf_counter()
                chunk = pred.predict(obs["images"], instruction, p.embodiment, obs["state"] if p.uses_state else None)
                dt = time.perf_counter() - t0
                latencies.append(dt * 1e3)
                busy[0] += dt
                if p.source.kind == "server" and "model_ms" in chunk.timings:
                    model_ms.append(float(chunk.timings["model_ms"]))
                return chunk

        from vla.client import ChunkExecutor

        executor = ChunkExecutor(call, execute_steps=p.actions_per_chunk, prefetch=p.prefetch or p.realtime,
                                 ensemble_m=p.ensemble_m)
        frames, action_l1 = [], 0.0
        period = 1.0 / env.embodiment.control_hz
        try:
            obs = env.reset(job.seed, render=not lazy)
            t_start = next_tick = time.perf_counter()
            while not env.done:
                if job.record:
                    frames.append(compose_frame(obs["images"]))
                action = executor.act(None if lazy else obs)
                action_l1 += float(np.abs(action).sum())
                obs, _, _ = env.step(action, render=not lazy)
                if p.realtime:  # hold the embodiment's control rate, as a robot's controller does
                    next_tick += period
                    time.sleep(max(0.0, next_tick - time.perf_counter()))
            wall = time.perf_counter() - t_start
        finally:
            executor.close()
        stats = executor.stats
        result = EpisodeResult(
            index=job.index, task=job.task, seed=job.seed, success=bool(env.success), length=int(env.steps),
            wall_s=wall, policy_s=busy[0] if p.source.kind != "expert" else sum(latencies) / 1e3,
            policy_calls=stats.chunks, latencies_ms=latencies, model_ms=model_ms,
            stale_skipped=stats.stale_skipped, starved_steps=stats.starved_steps,
            mean_delay_steps=None if math.isnan(stats.mean_delay_steps) else stats.mean_delay_steps,
            action_l1=action_l1, final_state=[float(x) for x in env.state()], instruction=instruction,
            stage=env.stage_reached if env.stages else None, diverged=env.diverged, scene=env.scene,
        )
        if job.record:
            frames.append(compose_frame(obs["images"]))
            name = f"{job.task}_seed{job.seed}_{'success' if result.success else 'failure'}"
            result.video = str(write_episode_video(Path(p.record_dir) / name, frames,
                                                   env.embodiment.control_hz, p.record_format))
        return result

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        if self.predictor is not None:
            self.predictor.close()


# ------------------------------------------------------------------------ worker processes
_RUNNER: EpisodeRunner | None = None


def _worker_run(plan: EvalPlan, job: Job) -> EpisodeResult:
    """Run one episode in a worker process (the runner is created on the first job and kept)."""
    global _RUNNER
    try:
        if _RUNNER is None:
            _RUNNER = EpisodeRunner(plan)
        return _RUNNER.run(job)
    except Exception as e:  # re-raise as a plain, picklable error that names the episode
        raise EvaluationError(f"episode {job.task} seed {job.seed} failed in worker {os.getpid()}: "
                              f"{type(e).__name__}: {e}") from None


def run_jobs(plan: EvalPlan, jobs: list[Job], workers: int = 1, progress: bool = False) -> list[EpisodeResult]:
    """Run every job; with ``workers > 1`` in spawned processes (each builds its own env and policy)."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"eval {plan.env}", unit="ep", dynamic_ncols=True, file=sys.stderr)
    results: list[EpisodeResult] = []

    def done(r: EpisodeResult) -> None:
        results.append(r)
        if bar is not None:
            bar.set_postfix(success=f"{sum(x.success for x in results)}/{len(results)}")
            bar.update()

    try:
        if workers <= 1:
            runner = EpisodeRunner(plan)
            try:
                for job in jobs:
                    done(runner.run(job))
            finally:
                runner.close()
        else:
            # spawn, not fork: MuJoCo GL contexts and torch thread pools do not survive fork
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(_worker_run, plan, job) for job in jobs]
                try:
                    for f in as_completed(futures):
                        done(f.result())
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        if bar is not None:
            bar.close()
    return sorted(results, key=lambda r: r.index)


# ------------------------------------------------------------------------ planning
def embodiment_plan(meta: dict, spec, env_cls, embodiment: str | None) -> tuple[str, dict]:
    """Pick the policy's embodiment for this simulator and check that it fits."""
    embs = meta.get("embodiments") or {}
    name = embodiment or spec.name
    if name not in embs:
        raise ConfigError(
            f"the policy has no embodiment {name!r} for the {env_cls.env_name} simulator (it knows {sorted(embs)}); "
            "fine-tune on data generated with `vla data generate --env " + env_cls.env_name + "`, or name the "
            "matching embodiment with --embodiment NAME"
        )
    e = embs[name]
    if list(e["action_names"]) != list(spec.action_names):
        raise ConfigError(
            f"embodiment {name!r} of the policy acts on {e['action_names']} but the {env_cls.env_name} simulator "
            f"expects {spec.action_names}: this policy was not trained on this simulator's action space"
        )
    for key in e["cameras"]:
        cam = key.removeprefix("observation.images.")
        if cam not in env_cls.all_cameras:
            raise ConfigError(
                f"embodiment {name!r} uses camera {key!r}, which the {env_cls.env_name} simulator does not have "
                f"(cameras: {list(env_cls.all_cameras)})"
            )
    if meta.get("uses_state") and e.get("state_dim") and e["state_dim"] != spec.state_dim:
        raise ConfigError(f"embodiment {name!r} expects a state of {e['state_dim']} values; the simulator gives "
                          f"{spec.state_dim}: {spec.state_names}")
    return name, e


def _expert_meta(spec) -> dict:
    return {"model_id": "scripted expert", "uses_state": False, "embodiments": {spec.name: {
        "action_dim": spec.action_dim, "action_names": list(spec.action_names), "chunk_size": 1,
        "control_hz": spec.control_hz, "cameras": list(spec.cameras), "image_size": None, "state_dim": spec.state_dim}}}


def evaluate(env: str, tasks: list[str] | None, episodes: int, seed_start: int, source: PolicySource, *,
             actions_per_chunk: int | None = None, workers: int = 1, max_steps: int | None = None,
             embodiment: str | None = None, image_size: int | None = None, train_data: list[str] = (),
             allow_seed_overlap: bool = False, record_dir: str | None = None, record_episodes: int = 2,
             record_format: str = "mp4", prefetch: bool = False, realtime: bool = False,
             ensemble_m: float | None = None, perturb: tuple[str, float] | None = None, out_dir: str | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Evaluate a policy in closed loop and return the report dict (also written to ``out_dir``).

    ``perturb=(factor, level)`` runs every episode under one domain-randomization factor (vla.sim.randomization),
    its parameters drawn from the episode seed; the report names it under ``"perturbation"``.

    Raises SeedOverlapError when evaluation seeds overlap the training data's (unless
    ``allow_seed_overlap``), ConfigError for a policy that does not fit the simulator.
    """
    from ..sim import env_class, make_env
    from ..sim.base import pick_tasks

    cls = env_class(env)
    tasks = pick_tasks(cls, tasks, env)
    for what, v, lo in (("episodes", episodes, 1), ("seed_start", seed_start, 0), ("workers", workers, 1),
                        ("record_episodes", record_episodes, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{what} must be an integer >= {lo}, got {v!r}")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
    if record_format not in FORMATS:
        raise ConfigError(f"unknown video format {record_format!r}; choose one of {FORMATS}")
    if source.kind == "expert" and (prefetch or realtime or ensemble_m is not None):
        raise ConfigError("the scripted expert acts step by step from the simulator state: "
                          "--prefetch/--realtime/--ensemble do not apply")
    warnings: list[str] = []
    eval_seeds = list(range(int(seed_start), int(seed_start) + int(episodes)))
    perturbation = None
    if perturb is not None:
        from ..sim.randomization import describe, parse_perturbation, perturbation_config

        factor, level = parse_perturbation(f"{perturb[0]}={perturb[1]}")
        config = perturbation_config(env, factor, level)
        perturbation = {"factor": factor, "level": level, "config": config, "summary": describe(config)}

    # 1. the policy and where its training data came from
    meta = policy_metadata(source) if source.kind != "expert" else None
    model_dirs = [source.model] if source.model else []
    served = str((meta or {}).get("model_id") or "")
    if source.kind == "server" and not model_dirs and Path(served).is_dir():
        model_dirs = [served]  # the server runs on this machine: read its checkpoint's provenance
    elif source.kind == "server" and model_dirs and Path(served).is_dir() and \
            Path(served).resolve() != Path(str(source.model)).resolve():
        warnings.append(f"the server serves {served}, not --model {source.model}: the training seeds were read "
                        "from --model")
    training, without, notes = collect_training_seeds(model_dirs, train_data)
    if source.kind == "server" and not model_dirs and (meta or {}).get("training_datasets"):
        remote, remote_without = seeds_from_training({"datasets": meta["training_datasets"]}, f"server {source.url}")
        training, without = training + remote, without + remote_without
    warnings += notes
    seeds = check_seeds(env, tasks, eval_seeds, training, without, allow_seed_overlap)
    if source.kind != "expert" and not seeds.verified:
        warnings.append("seed separation UNVERIFIED: no training provenance found (pass --train-data DIR, or "
                        "--model DIR with --server); the evaluation seeds may overlap the training data")
    if seeds.overlap:
        warnings.append("evaluation seeds OVERLAP the training seeds (--allow-seed-overlap): "
                        + "; ".join(f"{t}: {len(s)} seeds" for t, s in seeds.overlap.items()))

    # 2. fit the policy's embodiment to the simulator
    probe = make_env(env, tasks[0], image_size=32, max_steps=max_steps)
    spec, sim_max_steps, instructions = probe.embodiment, probe.max_steps, {}
    simulator = probe.simulator
    probe.close()
    if source.kind == "expert":
        meta = _expert_meta(spec)
    name, e = embodiment_plan(meta, spec, cls, embodiment)
    if abs(float(e["control_hz"]) - float(spec.control_hz)) > 1e-6:
        warnings.append(f"the policy's {name!r} runs at {e['control_hz']} Hz but the simulator steps at "
                        f"{spec.control_hz} Hz: actions are executed one per simulator step")
    H = int(e["chunk_size"])
    if actions_per_chunk is None:  # synchronous: the whole chunk; background inference needs actions in hand
        k = max(1, H // 2) if (prefetch or realtime) else H
    else:
        k = int(actions_per_chunk)
    if not 1 <= k <= H:
        raise ConfigError(f"--actions-per-chunk must be between 1 and the chunk size H={H} of {name!r}, got {k}")
    if source.kind == "expert":
        cameras = tuple(cls.default_cameras)
        size = (image_size or DEFAULT_IMAGE_SIZE,) * 2
    else:
        cameras = tuple(c.removeprefix("observation.images.") for c in e["cameras"])
        if image_size:
            size = (image_size, image_size)
        elif e.get("image_size"):
            size = tuple(int(v) for v in e["image_size"])
        else:
            size = (DEFAULT_IMAGE_SIZE,) * 2
            warnings.append(f"the checkpoint does not record its training image size; rendering {size[0]} px "
                            "(set --image-size to the size the training data had)")
    plan = EvalPlan(env=env, source=source, embodiment=name, cameras=cameras, image_size=size, max_steps=max_steps,
                    chunk_size=H, actions_per_chunk=k, uses_state=bool(meta.get("uses_state")),
                    prefetch=prefetch, realtime=realtime, ensemble_m=ensemble_m,
                    record_dir=str(record_dir) if record_dir else None, record_format=record_format,
                    randomization=perturbation["config"] if perturbation else None)

    # 3. episodes
    jobs = [Job(i * episodes + j, t, s, bool(record_dir) and j < record_episodes)
            for i, t in enumerate(tasks) for j, s in enumerate(eval_seeds)]
    t0 = time.perf_counter()
    results = run_jobs(plan, jobs, workers, progress)
    wall = time.perf_counter() - t0
    diverged = [f"{r.task} seed {r.seed}" for r in results if r.diverged]
    if diverged:
        warnings.append(f"{len(diverged)} episode(s) ended early because the policy's actions made the physics "
                        f"unstable (counted as failures): {', '.join(diverged)}")

    instructions.update({r.task: r.instruction for r in results})
    report = _report(plan, tasks, results, spec, seeds, meta, warnings, instructions, simulator, sim_max_steps,
                     episodes, seed_start, workers, wall, train_data, cls.stages)
    report["perturbation"] = perturbation
    if out_dir:
        out = Path(out_dir)
        report["files"] = {"json": str(out / "results.json"), "plot": str(out / "success.png"),
                           "videos": [r.video for r in results if r.video]}
        write_json(report, out / "results.json")  # first: a failing plot must not lose the results
        bar_plot(report, out / "success.png")
    return report


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("vla", "mujoco", "torch", "transformers", "bentoml"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _report(plan: EvalPlan, tasks, results, spec, seeds, meta, warnings, instructions, simulator, sim_max_steps,
            episodes, seed_start, workers, wall, train_data, stages) -> dict[str, Any]:
    eps = [asdict(r) for r in results]
    summary = summarize(eps, tasks, float(spec.control_hz), stages)
    src = plan.source
    return {
        "kind": "vla.eval/closed_loop", "format_version": 1,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "env": plan.env, "tasks_evaluated": tasks, "instructions": instructions, "simulator": simulator,
        "policy": {
            "source": src.kind, "url": src.url, "model": src.model, "model_id": meta.get("model_id"),
            "decoding": meta.get("decoding"), "embodiment": plan.embodiment, "chunk_size": plan.chunk_size,
            "actions_per_chunk": plan.actions_per_chunk, "prefetch": plan.prefetch or plan.realtime,
            "realtime": plan.realtime, "ensemble_m": plan.ensemble_m, "uses_state": plan.uses_state,
            "image_encoding": src.encoding if src.kind == "server" else None,
        },
        "settings": {
            "episodes_per_task": episodes, "seed_start": seed_start, "max_steps": sim_max_steps,
            "cameras": list(plan.cameras), "image_size": list(plan.image_size), "workers": workers,
            "threads_per_worker": src.threads, "train_data": list(train_data),
        },
        "seeds": {**seeds.to_dict(), "summary": seeds.summary() if src.kind != "expert" else
                  f"seeds: eval {seeds.to_dict()['eval']} (scripted expert: no training data)"},
        **summary,
        "wall_s": wall,
        "episodes_per_s": len(results) / wall if wall > 0 else None,
        "episodes": [{k: v for k, v in e.items() if k not in ("latencies_ms", "model_ms", "instruction")}
                     | {"latency_ms_p50": float(np.median(e["latencies_ms"])) if e["latencies_ms"] else None}
                     for e in eps],
        "warnings": warnings,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "versions": _versions()},
    }


def print_report(report: dict) -> None:
    print(format_table(report))


__all__ = ["DEFAULT_SEED_START", "EpisodeResult", "EpisodeRunner", "EvalPlan", "Job", "evaluate", "run_jobs",
           "print_report"]
