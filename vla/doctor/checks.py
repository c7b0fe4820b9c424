"""Run the doctor's checks on datasets and a checkpoint; each check is a plain dict in the report."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Callable

from vla.action_tokenizers import ActionTokenizer
from vla.action_tokenizers.binning import BinningActionTokenizer
from vla.data.lerobot import LeRobotDataset
from vla.embodiment import Embodiment
from vla.errors import ConfigError

from .frames import codec_gap
from .parity import dtype_parity, server_parity
from .roundtrip import action_report, replay_report
from .tracking import expert_tracking
from .verdict import verdict


# (model, dataset, embodiment, episode, *, steps, progress) -> the memorize-and-replay report
Overfit = Callable[..., dict[str, Any]]

def diagnose(model: str | None, data: list[str], *, embodiment: str | None = None, episodes: int | None = None,
             replay_episodes: int = 10, frame_episodes: int = 5, parity: bool = True, server: str | None = None,
             overfit: Overfit | None = None, overfit_episode: int = 0, overfit_steps: int = 300, max_error: float = 0.01,
             progress: bool = True) -> dict[str, Any]:
    """Every check on every dataset: round trip, closed-loop replay, frames and expert tracking (those three on
    simulated data), parity and, with ``overfit`` (a memorize-and-replay run, e.g.
    ``vla.finetune.overfit.memorize_and_replay``: training is the fine-tuning app's, passed in by the command),
    memorize-and-replay. ``model=None`` checks the data against the fine-tuning defaults (auto normalization,
    256 bins) and skips what needs a policy."""
    from vla.policy import VLAPolicy

    if not data:
        raise ConfigError("the doctor needs a dataset: pass --data DIR (the data the policy was or will be trained on)")
    policy = VLAPolicy.from_pretrained(model) if model else None
    reports = []
    for path in data:
        ds = LeRobotDataset(path)
        emb, tokenizer = _subject(policy, ds, embodiment)
        eps = _training_episodes(policy, ds)[:episodes or None]
        simulated = "written_task_seed" in ds.provenance.get("episodes", {})
        not_sim = None if simulated else "the data was not generated in a simulator (no seeds, renders or expert)"
        no_model = "needs --model" if policy is None else None
        few = _spread(eps, frame_episodes)
        checks = {
            "round_trip": action_report(emb, tokenizer, ds, eps, max_error),
            "replay": _skipped(not_sim, replay_episodes or "--replay-episodes 0")
            or replay_report(emb, tokenizer, ds, _spread(eps, replay_episodes), progress),
            "frames": _skipped(no_model, not_sim, frame_episodes or "--frame-episodes 0")
            or codec_gap(policy, emb.name, ds, few),
            "tracking": _skipped(no_model, not_sim, frame_episodes or "--frame-episodes 0")
            or expert_tracking(policy, emb.name, ds, few),
            "parity": _skipped(no_model, parity or "--no-parity") or server_parity(model, path, emb.name, url=server),
            "dtype_parity": _skipped(no_model, parity or "--no-parity") or dtype_parity(model, path, emb.name, eps[:2]),
            "overfit": _skipped(overfit or "opt-in: --overfit")
            or overfit(model, ds, emb.name, overfit_episode, steps=overfit_steps, progress=progress),
        }
        reports.append({"data": str(ds.root), "embodiment": emb.name, "episodes": f"{len(eps)} of {ds.num_episodes}",
                        "checks": checks, **verdict(checks)})
    faults = [f"{r['embodiment']}: {f}" for r in reports for f in r["faults"]]
    return {"kind": "vla.doctor", "format_version": 1, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "model": str(model) if model else None, "datasets": reports, "consistent": not faults, "faults": faults}


def _subject(policy, ds: LeRobotDataset, name: str | None) -> tuple[Embodiment, ActionTokenizer]:
    """The policy's embodiment for this data (by name, else the one with the same action names)."""
    if policy is None:
        from vla.data.samples import embodiment_from_dataset

        return embodiment_from_dataset(ds, name or ds.robot_type or "robot", 8), BinningActionTokenizer(256)
    embs = policy.embodiments
    if name is None:
        same = [e.name for e in embs.values() if list(e.action_names) == list(ds.action_names)]
        if len(same) != 1:
            raise ConfigError(f"cannot tell which of the policy's embodiments {sorted(embs)} {ds.root} is for "
                              f"({len(same)} have its action names {list(ds.action_names)}): pass --embodiment NAME")
        name = same[0]
    return policy.embodiment(name), policy.action_tokenizer


def _training_episodes(policy, ds: LeRobotDataset) -> list[int]:
    """The episodes the checkpoint was trained on (its split is reproducible from its recipe), else all:
    held-out episodes may lie outside the training statistics, which is not a pipeline fault."""
    recipe = (policy.config.training or {}).get("config") if policy is not None else None
    path = Path(ds.root).resolve()
    for name, spec in ((recipe or {}).get("datasets") or {}).items():
        if Path(spec["path"]).resolve() == path:
            from vla.data.samples import split_episodes

            return split_episodes(ds.episode_indices, recipe["data"]["val_fraction"], recipe["seed"], name)[0]
    return list(ds.episode_indices)


def _spread(episodes: list[int], n: int) -> list[int]:
    """``n`` episodes evenly spaced over the dataset (generated data lists tasks one after another)."""
    if n >= len(episodes):
        return list(episodes)
    return [episodes[int(k * len(episodes) / n)] for k in range(n)]


def _skipped(*conditions: Any) -> dict[str, str] | None:
    """``{"skipped": reason}`` for the first condition that is a reason (a string), else None (run the check)."""
    reason = next((c for c in conditions if isinstance(c, str)), None)
    return {"skipped": reason} if reason else None
