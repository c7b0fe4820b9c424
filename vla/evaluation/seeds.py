"""Evaluation seeds vs the seeds that generated the training data.

A simulator seed fixes an episode's initial state (object and goal placement). Evaluating on a
seed the training data was generated from measures memorisation, not generalisation, so
``vla eval`` reads the training seeds from the provenance that ``vla data generate`` writes into a
dataset's ``meta/info.json`` (copied by fine-tuning into the checkpoint's ``vla_config.json``
``training.datasets[*].provenance``) and refuses overlapping evaluation seeds.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError, DatasetError

_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)")


class SeedOverlapError(ConfigError):
    """Evaluation seeds overlap the seeds used to generate the training data."""


@dataclass
class TrainingSeeds:
    """Seeds one training dataset was generated from, for one (env, task)."""

    source: str  # where this came from (model checkpoint / --train-data directory)
    env: str | None
    task: str | None  # None: every task of the env
    seeds: list[int]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = format_ranges(self.seeds)
        d["count"] = len(self.seeds)
        return d


@dataclass
class SeedCheck:
    """The outcome of comparing evaluation and training seeds (goes into the report)."""

    eval_seeds: list[int]
    training: list[TrainingSeeds] = field(default_factory=list)
    sources_without_seeds: list[str] = field(default_factory=list)  # datasets with no simulator seeds
    overlap: dict[str, list[int]] = field(default_factory=dict)  # task -> overlapping seeds
    overlap_allowed: bool = False

    @property
    def verified(self) -> bool:
        """True when at least one source told us its seeds (or that it has none, e.g. real data)."""
        return bool(self.training or self.sources_without_seeds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval": format_ranges(self.eval_seeds) + " per task",
            "eval_first": min(self.eval_seeds) if self.eval_seeds else None,
            "eval_last": max(self.eval_seeds) if self.eval_seeds else None,
            "training": [t.to_dict() for t in self.training],
            "sources_without_seeds": list(self.sources_without_seeds),
            "verified": self.verified,
            "overlap": {t: format_ranges(s) for t, s in self.overlap.items()},
            "overlap_allowed": self.overlap_allowed,
        }

    def summary(self) -> str:
        train = "; ".join(f"{t.env or '?'}/{t.task or '*'} {format_ranges(t.seeds)} ({t.source})" for t in self.training)
        if not train:
            train = ("none from simulators (" + ", ".join(self.sources_without_seeds) + ")"
                     if self.sources_without_seeds else "UNKNOWN (no provenance found: pass --model or --train-data)")
        line = f"seeds: eval {format_ranges(self.eval_seeds)} per task; training {train}"
        if self.overlap:
            line += " -- OVERLAP " + ", ".join(f"{t}: {format_ranges(s)}" for t, s in self.overlap.items())
            line += " (allowed by --allow-seed-overlap: results include training initial states)"
        elif self.verified:
            line += " -- disjoint"
        return line


def format_ranges(seeds: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0..2, 5, 7..8'."""
    s = sorted(set(int(x) for x in seeds))
    if not s:
        return "none"
    parts, start, prev = [], s[0], s[0]
    for x in s[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(f"{start}..{prev}" if prev > start else f"{start}")
        if x is not None:
            start = prev = x
    return ", ".join(parts)


def seeds_from_provenance(prov: dict, source: str) -> list[TrainingSeeds]:
    """Training seeds recorded by ``vla data generate`` (empty for datasets that are not simulated)."""
    if not isinstance(prov, dict):
        return []
    env = prov.get("env")
    episodes = prov.get("episodes") if isinstance(prov.get("episodes"), dict) else {}
    pairs = [p for key in ("written_task_seed", "failed_task_seed") for p in (episodes.get(key) or [])]
    if pairs:  # exact: every (task, seed) attempted; failed attempts count too (conservative)
        by_task: dict[str | None, set[int]] = {}
        for task, seed in pairs:
            by_task.setdefault(task, set()).add(int(seed))
        return [TrainingSeeds(source, env, t, sorted(s)) for t, s in by_task.items()]
    m = _RANGE.match(str(prov.get("episode_seeds", "")))
    if m:  # "a..b per task"
        seeds = list(range(int(m.group(1)), int(m.group(2)) + 1))
        tasks = prov.get("tasks")
        names = list(tasks) if isinstance(tasks, (dict, list)) and tasks else [None]
        return [TrainingSeeds(source, env, t, seeds) for t in names]
    return []


def seeds_from_training(training: dict, source: str) -> tuple[list[TrainingSeeds], list[str]]:
    """Seeds from a checkpoint's ``training`` provenance; also the datasets that have none."""
    out, none = [], []
    for d in (training or {}).get("datasets") or []:
        if not isinstance(d, dict):
            continue
        where = f"{source}: dataset {d.get('name', '?')!r} ({d.get('path', '?')})"
        found = seeds_from_provenance(d.get("provenance") or {}, where)
        (out.extend(found) if found else none.append(where))
    return out, none


def model_training(model_dir: str | Path) -> dict | None:
    """The ``training`` section of a local checkpoint's vla_config.json (None when not a local checkpoint)."""
    path = Path(model_dir) / "vla_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("training") or {}
    except (json.JSONDecodeError, AttributeError):
        return None


def dataset_provenance(data_dir: str | Path) -> dict:
    """``meta/info.json`` provenance of a LeRobot dataset directory."""
    path = Path(data_dir) / "meta" / "info.json"
    if not path.is_file():
        raise DatasetError(f"--train-data {data_dir}: {path} is missing; pass a LeRobot dataset directory")
    try:
        prov = json.loads(path.read_text()).get("provenance")
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e})") from e
    return prov if isinstance(prov, dict) else {}


def collect_training_seeds(model_dirs: Iterable[str | Path] = (), train_data: Iterable[str | Path] = ()
                           ) -> tuple[list[TrainingSeeds], list[str], list[str]]:
    """(seeds, sources without seeds, notes) from checkpoints' provenance and training datasets."""
    seeds: list[TrainingSeeds] = []
    none: list[str] = []
    notes: list[str] = []
    for m in model_dirs:
        training = model_training(m)
        if training is None:
            continue
        if not training.get("datasets"):
            notes.append(f"checkpoint {m} records no training datasets (not fine-tuned by `vla finetune`?)")
            continue
        s, n = seeds_from_training(training, f"checkpoint {m}")
        seeds += s
        none += n
    for d in train_data:
        found = seeds_from_provenance(dataset_provenance(d), f"--train-data {d}")
        (seeds.extend(found) if found else none.append(f"--train-data {d}"))
    return seeds, none, notes


def check_seeds(env: str, tasks: list[str], eval_seeds: list[int], training: list[TrainingSeeds],
                without_seeds: list[str] = (), allow_overlap: bool = False,
                fix: str | None = None) -> SeedCheck:
    """Compare per task; raise SeedOverlapError on overlap unless ``allow_overlap``.

    ``fix``: the error's last sentence for callers whose options differ from `vla eval`'s ("{first_free}"
    is filled in).
    """
    check = SeedCheck(list(eval_seeds), list(training), list(without_seeds), overlap_allowed=allow_overlap)
    wanted = set(eval_seeds)
    for task in tasks:
        used: set[int] = set()
        for t in training:
            if (t.env in (None, env)) and (t.task in (None, task)):
                used |= set(t.seeds)
        common = sorted(wanted & used)
        if common:
            check.overlap[task] = common
    if check.overlap and not allow_overlap:
        lines = []
        for task, common in check.overlap.items():
            srcs = sorted({t.source for t in training if t.env in (None, env) and t.task in (None, task)
                           and set(t.seeds) & wanted})
            hi = max(s for t in training if t.env in (None, env) and t.task in (None, task) for s in t.seeds)
            lines.append(f"  {env}/{task}: evaluation seeds {format_ranges(common)} were used to generate training "
                         f"data ({'; '.join(srcs)}); first free seed: {hi + 1}")
        first_free = 1 + max(max(t.seeds) for t in training if t.env in (None, env))
        raise SeedOverlapError(
            "evaluation seeds overlap the training data's seeds, so those episodes start from initial states the "
            "policy was trained on (memorisation, not generalisation):\n" + "\n".join(lines) +
            "\n" + (fix or "Use disjoint seeds, e.g. --seed-start {first_free}, or pass --allow-seed-overlap to "
                     "evaluate anyway (the report then states the overlap).").format(first_free=first_free)
        )
    return check
