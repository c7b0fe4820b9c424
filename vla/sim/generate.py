"""Scripted-expert demonstrations written as a LeRobot dataset (failed expert episodes are dropped)."""

from __future__ import annotations

import datetime
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.outcomes import sparse_outcomes
from ..errors import ConfigError, DatasetError
from . import env_class, make_env
from .base import SimEnv, pick_tasks
from .rendering import as_hw, setup_headless_gl

# Dataset licence per environment (Hugging Face licence identifiers).
LICENCES = {"metaworld": "mit", "aloha": "apache-2.0", "so101": "apache-2.0"}


@dataclass
class GenerationReport:
    """What a generation run produced."""

    env: str
    tasks: list[str]
    out: str
    episodes_attempted: int
    episodes_written: int
    episodes_failed: int
    frames: int
    seconds: float
    bytes: int
    written: list[tuple[str, int]] = field(default_factory=list)  # (task, seed) per dataset episode
    failed: list[tuple[str, int]] = field(default_factory=list)  # (task, seed) of dropped episodes

    @property
    def seconds_per_episode(self) -> float:
        return self.seconds / max(self.episodes_attempted, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seconds_per_episode"] = self.seconds_per_episode
        return d

    def summary(self) -> str:
        rate = self.episodes_written / max(self.episodes_attempted, 1)
        lines = [
            f"dataset:   {self.out}",
            f"env:       {self.env} ({', '.join(self.tasks)})",
            f"episodes:  {self.episodes_written} written, {self.episodes_failed} failed and dropped "
            f"(expert success {rate:.0%} of {self.episodes_attempted})",
            f"frames:    {self.frames}",
            f"time:      {self.seconds:.1f} s ({self.seconds_per_episode:.2f} s per episode)",
            f"size:      {self.bytes / 1e6:.2f} MB",
        ]
        if self.failed:
            lines.append("failed:    " + ", ".join(f"{t}@seed{s}" for t, s in self.failed[:20])
                         + (" ..." if len(self.failed) > 20 else ""))
        return "\n".join(lines)


def rollout_expert(env: SimEnv, seed: int, render: bool = True, action_noise: float = 0.0) -> tuple[bool, dict]:
    """Run the expert from ``reset(seed)``; returns (success, episode arrays).

    Frame t pairs the observation before step t with the expert action at step t. With
    ``render=False`` only the physics runs (no images): the experts never look at pixels, so
    success and trajectories are the same, several times faster.

    ``action_noise > 0`` is DART-style noise injection (Laskey et al., 2017): the robot executes
    the expert's action plus Gaussian noise of std ``action_noise * env.noise_unit`` (seeded by
    ``seed``), while the dataset records the expert's clean action. The demonstrations then visit
    states off the clean path, labelled with how the expert recovers from them.
    """
    rng = np.random.default_rng(seed) if action_noise > 0 else None
    noise_std = action_noise * np.asarray(env.noise_unit) if rng is not None else None
    obs = env.reset(seed, render=render)
    images: dict[str, list[np.ndarray]] = {k: [] for k in obs["images"]}
    states, actions = [], []
    while not env.done:
        action = env.expert_action()
        for k, img in obs["images"].items():
            images[k].append(img)
        states.append(obs["state"])
        actions.append(action)
        executed = action if rng is None else action + noise_std * rng.standard_normal(action.shape)
        obs, _, _ = env.step(executed, render=render)
    episode = {
        "actions": np.stack(actions).astype(np.float32),
        "states": np.stack(states).astype(np.float32),
        "images": {k: np.stack(v) for k, v in images.items()},
    }
    return env.success, episode


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def generate_dataset(
    env_name: str,
    tasks: list[str] | None,
    episodes: int,
    seed: int,
    image_size,
    out: str | Path,
    cameras: list[str] | None = None,
    codec: str = "h264",
    *,
    lossless: bool | None = None,
    max_steps: int | None = None,
    action_noise: float = 0.0,
    randomize: dict | None = None,
    version: str = "v3.0",
    overwrite: bool = False,
    progress: bool = True,
) -> GenerationReport:
    """Roll out the scripted expert and write the successful episodes as a LeRobot dataset.

    ``episodes`` expert attempts are made per task, with episode seeds ``seed + i``
    (i = 0 .. episodes-1); failed attempts are counted and never written, so the output is
    deterministic for a seed. ``action_noise`` perturbs the executed actions, not the recorded
    ones (see :func:`rollout_expert`). ``randomize`` is a domain-randomization config
    (:func:`vla.sim.randomization.load_config`): each episode's scene is drawn from its seed and
    stored in ``provenance["randomization"]["episodes"]`` (aligned with episode_index).
    ``lossless`` (the default for H.264) encodes at crf 0 in yuv444p, so training frames decode as rendered (within YUV rounding): a policy then trains on
    the pixels a simulator or camera sends the server, not on codec artefacts. Returns a GenerationReport; raises DatasetError if every attempt fails.
    """
    from vla import __version__
    from vla.data.lerobot import LeRobotWriter

    cls = env_class(env_name)
    tasks = pick_tasks(cls, tasks, env_name)
    if int(episodes) < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(action_noise, (int, float)) and np.isfinite(action_noise) and action_noise >= 0):
        raise ConfigError(f"action_noise must be a finite number >= 0, got {action_noise!r}")
    if action_noise and not cls.noise_unit:
        raise ConfigError(f"{env_name} defines no noise_unit, so action_noise cannot be used with it; "
                          "generate without --action-noise")
    if lossless is None:
        lossless = codec == "h264"
    if lossless and codec != "h264":
        raise ConfigError(f"lossless video needs codec h264 (SVT-AV1 has no 4:4:4), got {codec!r}: "
                          "drop --codec av1 or pass --no-lossless")
    hw = as_hw(image_size)
    out = Path(out)

    envs = [make_env(env_name, t, cameras=cameras, image_size=hw, max_steps=max_steps, randomize=randomize)
            for t in tasks]
    spec, first = envs[0].embodiment, envs[0]
    provenance = {
        "generator": f"vla.sim.generate (vla {__version__})",
        "simulator": first.simulator,
        "expert": first.expert_name,
        "env": env_name,
        "tasks": {e.task: e.instruction for e in envs},
        "seed": int(seed),
        "episode_seeds": f"{seed}..{seed + episodes - 1} per task (seed + i)",
        "image_size": list(hw),
        "lossless_video": bool(lossless),  # codec and pix_fmt are in each camera's feature info
        "cameras": list(first.cameras),
        "max_steps": first.max_steps,
        "action_noise": {"std": float(action_noise), "unit": list(first.noise_unit),
                         "recorded": "clean expert actions (DART)" if action_noise else "the executed actions"},
        "licences": {"simulator": first.licence, "dataset": LICENCES[env_name]},
        "reward_source": "simulator success detector",
        **({"randomization": {"config": randomize, "episodes": []}} if randomize is not None else {}),
        "gl_backend": setup_headless_gl(),
        "date": datetime.date.today().isoformat(),
    }
    writer = LeRobotWriter(
        out, fps=spec.control_hz, robot_type=spec.robot_type or spec.name, action_names=spec.action_names,
        state_names=spec.state_names, cameras=spec.camera_shapes, version=version, codec=codec,
        license=LICENCES[env_name], provenance=provenance, outcomes=True, overwrite=overwrite,
        **({"crf": 0, "pix_fmt": "yuv444p"} if lossless else {}),
    )
    report = GenerationReport(env=env_name, tasks=tasks, out=str(out), episodes_attempted=0, episodes_written=0,
                              episodes_failed=0, frames=0, seconds=0.0, bytes=0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes * len(tasks), desc=f"generate {env_name}", unit="ep", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for env in envs:
            for i in range(episodes):
                ep_seed = int(seed) + i
                success, ep = rollout_expert(env, ep_seed, action_noise=action_noise)
                report.episodes_attempted += 1
                if success:
                    index = writer.add_episode(ep["actions"], ep["states"], ep["images"], task=env.instruction,
                                               outcomes=sparse_outcomes(len(ep["actions"]), True, "demonstration"))
                    if randomize is not None:
                        provenance["randomization"]["episodes"].append(
                            {"episode_index": index, "task": env.task, "seed": ep_seed, "scene": env.scene})
                    report.episodes_written += 1
                    report.frames += len(ep["actions"])
                    report.written.append((env.task, ep_seed))
                else:
                    report.episodes_failed += 1
                    report.failed.append((env.task, ep_seed))
                if bar is not None:
                    bar.set_postfix(failed=report.episodes_failed,
                                    eps_per_s=f"{report.episodes_attempted / (time.perf_counter() - t0):.2f}")
                    bar.update()
        if report.episodes_written == 0:
            raise DatasetError(
                f"all {report.episodes_attempted} expert episodes failed (tasks {tasks}, seeds {seed}.."
                f"{seed + episodes - 1}, max_steps {first.max_steps}); nothing written. Raise max_steps or check the task."
            )
        writer.provenance["episodes"] = {
            "attempted": report.episodes_attempted, "written": report.episodes_written,
            "failed": report.episodes_failed,
            "written_task_seed": [[t, s] for t, s in report.written],  # aligned with episode_index
            "failed_task_seed": [[t, s] for t, s in report.failed],
        }
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        for env in envs:
            env.close()
    report.seconds = time.perf_counter() - t0
    report.bytes = _dir_bytes(out)
    return report
