"""`vla improve`: rounds of roll out → label → write → fine-tune → evaluate, resumable after a crash.

    OUT/improve.json              the plan (written once) and the rounds done so far
    OUT/round-00/eval/ENV/        the starting policy on the held-out seeds
    OUT/round-NN/rollouts/ENV/    the round's labelled rollouts (a LeRobot v3.0 dataset with provenance)
    OUT/round-NN/train/           the round's fine-tuning run (warm start from round NN-1's checkpoint)
    OUT/round-NN/eval/ENV/        its evaluation on the held-out seeds
    OUT/report.{json,md}, OUT/improvement.png

Each stage's output appears atomically (datasets are renamed into place, results.json is written last),
so a rerun with ``--resume`` skips what is done and continues a half-trained round with ``vla finetune``'s
exact resume.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vla.errors import ConfigError, DatasetError

from ..config import dataset_spec
from .rollouts import LABELS, MODES, RolloutPlan, collect

STATE_FILE = "improve.json"
# Keys a resumed loop may change; the rest define the rounds already run.
RESUMABLE = ("rounds", "workers", "progress")


@dataclass
class ImproveConfig:
    """Everything that defines an improvement loop (stored in OUT/improve.json)."""

    start: str  # the checkpoint to improve: a `vla finetune` run directory or vla/default_policy
    out: str
    sims: dict[str, list[str]]  # simulator -> tasks, e.g. {"so101": ["pick-place"]}
    rounds: int = 2
    episodes: int = 10  # rollouts per task per round
    mode: str = "dagger"
    labels: str = "continuation"  # dagger's chunk labels: the expert's continuation, or "path" (rollouts.py)
    expert: str = "scripted"
    beta: float = 0.5  # probability that the expert drives a chunk in round 1
    beta_decay: float = 0.5  # round r: beta * beta_decay ** (r - 1)
    rollout_seed_start: int = 1000
    eval_episodes: int = 20
    eval_seed_start: int = 100_000
    steps: int = 500  # optimizer steps per round
    lr: float | None = None  # default: the starting run's learning rate
    round_weight: float = 0.5  # share of each robot's sampling weight that goes to the rollout rounds
    demos: dict[str, str] = field(default_factory=dict)  # dataset name -> directory (default: the start's own)
    max_steps: int | None = None
    seed: int = 0
    workers: int = 1
    baseline: bool = True  # evaluate the starting checkpoint as round 0
    progress: bool = True

    def validate(self) -> "ImproveConfig":
        from vla.sim import env_class
        from vla.sim.base import pick_tasks

        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r}: choose one of {list(MODES)}")
        if self.labels not in LABELS:
            raise ConfigError(f"--labels {self.labels!r}: choose one of {list(LABELS)}")
        if self.mode == "dagger" and self.expert == "none":
            raise ConfigError("--mode dagger needs an expert to label the visited states; pass --expert scripted "
                              "(or a callable / server), or use --mode self-imitation")
        for key, v, lo in (("rounds", self.rounds, 1), ("episodes", self.episodes, 1), ("steps", self.steps, 1),
                           ("eval_episodes", self.eval_episodes, 1), ("workers", self.workers, 1),
                           ("rollout_seed_start", self.rollout_seed_start, 0), ("eval_seed_start", self.eval_seed_start, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"--{key.replace('_', '-')} must be an integer >= {lo}, got {v!r}")
        for key, v in (("beta", self.beta), ("beta_decay", self.beta_decay), ("round_weight", self.round_weight)):
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"--{key.replace('_', '-')} must be in [0, 1], got {v}")
        if self.expert == "none" and self.beta > 0:
            self.beta = 0.0  # nobody else can drive
        if not self.sims:
            raise ConfigError("no simulator: pass --sim ENV[:TASK,TASK] (repeatable), e.g. --sim so101")
        self.sims = {env: pick_tasks(env_class(env), tasks, env) for env, tasks in self.sims.items()}
        return self

    def beta_at(self, round_: int) -> float:
        return self.beta * self.beta_decay ** (round_ - 1)

    def rollout_seeds(self, round_: int) -> list[int]:
        first = self.rollout_seed_start + (round_ - 1) * self.episodes
        return list(range(first, first + self.episodes))


# ------------------------------------------------------------------------------------ helpers
def round_dir(cfg: ImproveConfig, r: int) -> Path:
    return Path(cfg.out) / f"round-{r:02d}"


def checkpoint_of(cfg: ImproveConfig, r: int) -> str:
    """The policy after round r (round 0: the starting checkpoint)."""
    return cfg.start if r == 0 else str(round_dir(cfg, r) / "train")


def adapter_sha256(checkpoint: str | Path) -> str:
    """SHA-256 of a checkpoint's weights file: which policy produced a round's rollouts."""
    for name in ("adapter_model.safetensors", "model.safetensors"):
        path = Path(checkpoint) / name
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()
    raise ConfigError(f"{checkpoint} holds no adapter_model.safetensors or model.safetensors")


def start_training(start: str) -> dict:
    """The starting checkpoint's recorded training (its config is the recipe every round reuses)."""
    path = Path(start) / "vla_config.json"
    if not path.is_file():
        raise ConfigError(f"--from {start}: no vla_config.json; pass a `vla finetune` run directory "
                          "(or omit --from for the shipped default policy)")
    training = json.loads(path.read_text()).get("training") or {}
    if not isinstance(training.get("config"), dict):
        raise ConfigError(f"--from {start}: vla_config.json records no training config (training.config), so the "
                          "rounds cannot repeat its recipe; improve a checkpoint written by `vla finetune`")
    return training


def check_seed_separation(cfg: ImproveConfig) -> None:
    """Rollouts of every planned round must stay off the evaluation seeds (SeedOverlapError otherwise)."""
    from vla.evaluation.seeds import TrainingSeeds, check_seeds

    rollout = sorted({s for r in range(1, cfg.rounds + 1) for s in cfg.rollout_seeds(r)})
    evals = list(range(cfg.eval_seed_start, cfg.eval_seed_start + cfg.eval_episodes))
    for env, tasks in cfg.sims.items():
        check_seeds(env, tasks, evals, [TrainingSeeds("vla improve rollouts (--rollout-seed-start)", env, None, rollout)],
                    fix=f"Keep rollouts and evaluation apart: --rollout-seed-start at most "
                        f"{cfg.eval_seed_start - cfg.rounds * cfg.episodes} (rounds x episodes = "
                        f"{cfg.rounds * cfg.episodes} seeds per task), or --eval-seed-start {{first_free}}.")


def _policy_fit(checkpoint: str, env: str) -> dict:
    """The checkpoint's embodiment for ``env``: name, cameras, image size, chunk size, state use."""
    from vla.evaluation.closed_loop import DEFAULT_IMAGE_SIZE, embodiment_plan
    from vla.evaluation.policies import config_metadata
    from vla.sim import env_class, make_env

    meta = config_metadata(checkpoint)
    if meta is None:
        raise ConfigError(f"{checkpoint} is not a local checkpoint directory")
    cls = env_class(env)
    with make_env(env, cls.tasks[0], image_size=32) as probe:
        name, e = embodiment_plan(meta, probe.embodiment, cls, None)
    size = tuple(int(v) for v in e["image_size"]) if e.get("image_size") else (DEFAULT_IMAGE_SIZE,) * 2
    return {"embodiment": name, "cameras": tuple(c.removeprefix("observation.images.") for c in e["cameras"]),
            "image_size": size, "chunk_size": int(e["chunk_size"]), "uses_state": bool(meta.get("uses_state"))}


# ------------------------------------------------------------------------------------ stages
def write_rollouts(cfg: ImproveConfig, r: int, env: str, say) -> dict:
    """Stage 1-3: roll out the round's policy, label, write OUT/round-r/rollouts/ENV; returns its summary."""
    from vla import __version__
    from vla.data.lerobot import LeRobotWriter
    from vla.data.outcomes import sparse_outcomes
    from vla.sim import make_env
    from vla.sim.generate import LICENCES
    from vla.sim.rendering import setup_headless_gl

    out = round_dir(cfg, r) / "rollouts" / env
    if out.is_dir():
        say(f"[improve] round {r}: {out} exists, reusing it")
        return json.loads((out / "meta" / "info.json").read_text())["provenance"]["summary"]
    policy = checkpoint_of(cfg, r - 1)
    fit = _policy_fit(policy, env)
    plan = RolloutPlan(env=env, checkpoint=policy, embodiment=fit["embodiment"], cameras=fit["cameras"],
                       image_size=fit["image_size"], actions_per_chunk=fit["chunk_size"], uses_state=fit["uses_state"],
                       expert=cfg.expert, mode=cfg.mode, beta=cfg.beta_at(r), seed=cfg.seed, round=r,
                       max_steps=cfg.max_steps, labels=cfg.labels)
    with make_env(env, cfg.sims[env][0], cameras=list(fit["cameras"]), image_size=fit["image_size"],
                  max_steps=cfg.max_steps) as probe:
        spec, simulator, expert_name, sim_max = probe.embodiment, probe.simulator, probe.expert_name, probe.max_steps
    seeds = cfg.rollout_seeds(r)
    provenance = {
        "generator": f"vla improve (vla {__version__})", "env": env, "simulator": simulator,
        "tasks": {}, "round": r, "mode": cfg.mode, "beta": cfg.beta_at(r),
        "policy": {"checkpoint": str(Path(policy).resolve()), "sha256": adapter_sha256(policy)},
        "expert": expert_name if cfg.expert == "scripted" else cfg.expert,
        "labels": LABELS[cfg.labels] if cfg.mode == "dagger" else
        "the executed actions of successful episodes (self-imitation)",
        "episode_seeds": f"{seeds[0]}..{seeds[-1]} per task (seed + i)", "image_size": list(fit["image_size"]),
        "cameras": list(fit["cameras"]), "max_steps": sim_max, "reward_source": "simulator success detector",
        "licences": {"dataset": LICENCES[env]}, "gl_backend": setup_headless_gl(),
    }
    writer = LeRobotWriter(out, fps=spec.control_hz, robot_type=spec.robot_type or spec.name,
                           action_names=spec.action_names, state_names=spec.state_names, cameras=spec.camera_shapes,
                           license=LICENCES[env], provenance=provenance, outcomes=True, crf=0, pix_fmt="yuv444p")
    written, dropped, per_task = [], [], {}
    jobs = [(t, s) for t in cfg.sims[env] for s in seeds]
    try:
        for ro in collect(plan, jobs, cfg.workers, cfg.progress):
            provenance["tasks"][ro.task] = ro.instruction
            stats = per_task.setdefault(ro.task, {"episodes": 0, "successes": 0, "expert_steps": 0, "policy_steps": 0,
                                                  "no_expert_plan": 0})
            stats["episodes"] += 1
            stats["successes"] += ro.success
            stats["expert_steps"] += ro.expert_steps
            stats["policy_steps"] += ro.policy_steps
            stats["no_expert_plan"] += ro.ended_by.startswith("no expert plan")
            keep = ro.length > 0 and (cfg.mode == "dagger" or ro.success)
            if not keep:
                dropped.append([ro.task, ro.seed])
                continue
            outcomes = sparse_outcomes(ro.length, ro.success, ro.sources)
            writer.add_episode(ro.labels, ro.states, ro.images, ro.instruction, outcomes=outcomes)
            written.append([ro.task, ro.seed])
        if not written:
            raise DatasetError(f"round {r} on {env}: no episode to keep ({len(dropped)} rolled out; self-imitation "
                               "keeps successes only). Raise --episodes or use --mode dagger with an expert")
        summary = {"round": r, "env": env, "beta": cfg.beta_at(r), "tasks": per_task, "written": len(written)}
        writer.provenance.update(episodes={"written_task_seed": written, "dropped_task_seed": dropped},
                                 summary=summary)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return summary


def demo_datasets(cfg: ImproveConfig, training: dict) -> dict[str, dict]:
    """The starting run's datasets (paths overridden by --demos), each checked to exist."""
    specs = json.loads(json.dumps(training["config"].get("datasets") or {}))
    unknown = sorted(set(cfg.demos) - set(specs))
    if unknown:
        raise ConfigError(f"--demos names {unknown}, which the starting run did not train on; its datasets: {sorted(specs)}")
    recorded = {d.get("name"): d.get("provenance") or {} for d in training.get("datasets") or []}
    for name, spec in specs.items():
        spec["path"] = cfg.demos.get(name, spec["path"])
        if not Path(spec["path"]).is_dir():
            raise DatasetError(f"demonstrations {name!r}: {spec['path']} does not exist. Pass --demos {name}=DIR"
                               + regenerate_hint(recorded.get(name) or {}, spec["path"]))
    return specs


def regenerate_hint(prov: dict, path: str) -> str:
    """The `vla data generate` command that rebuilds simulated demonstrations from their provenance."""
    if not prov.get("env") or not prov.get("episode_seeds"):
        return ""
    first, _, last = str(prov["episode_seeds"]).split()[0].partition("..")
    tasks = " ".join(prov.get("tasks") or [])
    size = (prov.get("image_size") or [128])[0]
    cams = " ".join(prov.get("cameras") or [])
    return (f", or regenerate them as recorded: vla data generate --env {prov['env']} --tasks {tasks} --episodes "
            f"{int(last) - int(first) + 1} --seed {first} --image-size {size} --cameras {cams} --out {path}")


def round_config(cfg: ImproveConfig, training: dict, r: int, demos: dict[str, dict], embodiments: dict[str, str]):
    """The fine-tuning config of round r: the starting recipe, warm-started, on demonstrations + rounds 1..r."""
    from ..config import FinetuneConfig

    ft = FinetuneConfig.from_dict(training["config"], f"the training config of {cfg.start}")
    ft.out, ft.init_from, ft.seed = str(round_dir(cfg, r) / "train"), checkpoint_of(cfg, r - 1), cfg.seed + r
    ft.train.steps = cfg.steps
    ft.train.warmup_steps = min(ft.train.warmup_steps, max(cfg.steps // 10, 1))
    ft.train.lr = cfg.lr or ft.train.lr
    ft.eval.every, ft.checkpoint.every = 0, max(cfg.steps // 4, 1)
    ft.log.progress = cfg.progress
    ft.datasets = {n: dataset_spec(n, s, "vla improve") for n, s in mixture_weights(cfg, r, demos, embodiments).items()}
    return ft.validate()


def mixture_weights(cfg: ImproveConfig, r: int, demos: dict[str, dict], embodiments: dict[str, str]) -> dict[str, dict]:
    """Demonstrations plus rounds 1..r: each robot keeps its weight in the starting mixture (equal shares when
    it had none); ``round_weight`` of it goes to that robot's rounds, split equally, the rest to its demonstrations."""
    base = {n: s.get("weight") for n, s in demos.items()}
    if any(w is None for w in base.values()):
        base = {n: 1.0 / len(demos) for n in demos}
    emb_of = {n: s.get("embodiment") or n for n, s in demos.items()}
    improved = set(embodiments.values())
    datasets = {n: {**s, "weight": base[n] * (1.0 - cfg.round_weight if emb_of[n] in improved else 1.0)}
                for n, s in demos.items()}
    for env, emb in embodiments.items():
        robot_w = sum(w for n, w in base.items() if emb_of[n] == emb)
        if robot_w == 0:
            raise ConfigError(f"the starting run has no demonstrations of {emb!r} ({env}): improve only robots it "
                              f"was trained on ({sorted(set(emb_of.values()))})")
        for k in range(1, r + 1):
            datasets[f"{emb}_round{k:02d}"] = {"path": str(round_dir(cfg, k) / "rollouts" / env), "embodiment": emb,
                                               "weight": robot_w * cfg.round_weight / r}
    return datasets


def train_round(cfg: ImproveConfig, training: dict, r: int, demos, embodiments, say) -> None:
    """Stage 4: fine-tune round r (or continue it exactly where a crash left it)."""
    from ..runner import run

    run_dir = round_dir(cfg, r) / "train"
    vc = run_dir / "vla_config.json"
    if vc.is_file() and (json.loads(vc.read_text()).get("training") or {}).get("finished"):
        say(f"[improve] round {r}: {run_dir} is trained, reusing it")
        return
    ft = round_config(cfg, training, r, demos, embodiments)
    resume = run_dir.is_dir() and any(p.name.startswith("checkpoint") for p in run_dir.iterdir())
    if run_dir.is_dir() and not resume:
        shutil.rmtree(run_dir)  # started but never checkpointed: nothing to keep
    say(f"[improve] round {r}: fine-tuning {cfg.steps} steps from {ft.init_from} on {sorted(ft.datasets)}"
        + (" (resuming)" if resume else ""))
    outcome = run(ft, resume=resume, log=say)
    if outcome.code != 0:
        raise RuntimeError(f"round {r} fine-tuning stopped: {outcome.message} (continue with vla improve --resume)")


def evaluate_round(cfg: ImproveConfig, r: int, env: str) -> dict:
    """Stage 5: the round's policy on the held-out seeds, through `vla eval`'s code."""
    from vla.evaluation.closed_loop import evaluate
    from vla.evaluation.policies import PolicySource

    out = round_dir(cfg, r) / "eval" / env
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    return evaluate(env, cfg.sims[env], cfg.eval_episodes, cfg.eval_seed_start,
                    PolicySource("model", model=checkpoint_of(cfg, r), threads=1), workers=cfg.workers,
                    max_steps=cfg.max_steps, out_dir=str(out), progress=cfg.progress)


# ------------------------------------------------------------------------------------ the loop
def load_or_create(cfg: ImproveConfig, resume: bool, changed: dict[str, Any] | None = None) -> ImproveConfig:
    """A new loop writes OUT/improve.json; ``resume`` reads it (only RESUMABLE keys may change)."""
    path = Path(cfg.out) / STATE_FILE
    if resume:
        if not path.is_file():
            raise ConfigError(f"--resume {cfg.out}: no {STATE_FILE} there; start a loop with --out {cfg.out}")
        stored = {"labels": "path", **json.loads(path.read_text())["config"]}  # loops from before --labels
        saved = ImproveConfig(**{**stored, "out": cfg.out})  # the loop may have moved
        for key, value in (changed or {}).items():
            if key not in RESUMABLE and getattr(saved, key) != value:
                raise ConfigError(f"--resume: {key} was {getattr(saved, key)!r} in this loop, not {value!r}; only "
                                  f"{list(RESUMABLE)} may change when resuming (start a new --out otherwise)")
            if key in RESUMABLE:
                setattr(saved, key, value)
        check_seed_separation(saved.validate())
        return saved
    if Path(cfg.out).exists() and any(Path(cfg.out).iterdir()):
        raise ConfigError(f"{cfg.out} exists and is not empty: choose another --out, or continue it with --resume")
    cfg.validate()
    check_seed_separation(cfg)  # before anything is written
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    _save_state(cfg, [])
    return cfg


def _save_state(cfg: ImproveConfig, rounds: list[dict]) -> None:
    path = Path(cfg.out) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"config": asdict(cfg), "rounds": rounds}, indent=2) + "\n")
    tmp.replace(path)


def improve(cfg: ImproveConfig, *, resume: bool = False, changed: dict | None = None, say=None) -> dict:
    """Run (or continue) the loop; returns the report (also in OUT/report.json)."""
    from .report import write_report

    say = say or (lambda s: print(s, file=sys.stderr, flush=True))
    cfg = load_or_create(cfg, resume, changed)
    training = start_training(cfg.start)
    demos = demo_datasets(cfg, training)
    embodiments = {env: _policy_fit(cfg.start, env)["embodiment"] for env in cfg.sims}
    rounds = []
    t0 = time.perf_counter()
    for r in range(0 if cfg.baseline else 1, cfg.rounds + 1):
        entry: dict[str, Any] = {"round": r, "checkpoint": checkpoint_of(cfg, r), "beta": cfg.beta_at(r) if r else None}
        if r > 0:
            entry["rollouts"] = {env: write_rollouts(cfg, r, env, say) for env in cfg.sims}
            train_round(cfg, training, r, demos, embodiments, say)
        entry["eval"] = {env: _eval_summary(evaluate_round(cfg, r, env)) for env in cfg.sims}
        rounds.append(entry)
        _save_state(cfg, rounds)
        say(f"[improve] round {r}: " + ", ".join(f"{t} {v['successes']}/{v['episodes']}"
                                                 for e in entry["eval"].values() for t, v in e.items()))
    return write_report(cfg, rounds, time.perf_counter() - t0)


def _eval_summary(report: dict) -> dict[str, dict]:
    return {t: {"successes": int(v["successes"]), "episodes": int(v["episodes"])}
            for t, v in report["tasks"].items()}


__all__ = ["ImproveConfig", "improve"]
