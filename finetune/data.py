"""The data side of fine-tuning: datasets -> embodiments, train/val splits, the weighted mixture,
and batches of model inputs + action-token targets built through the inference prompt path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from vla.action_codec import ActionCodec
from vla.data.augment import Augment
from vla.data.lerobot import ACTION, STATE, LeRobotDataset
from vla.data.mixture import Mixture
from vla.data.outcomes import SUCCESS
from vla.data.samples import ChunkDataset, embodiment_from_dataset, split_episodes
from vla.data.stats import compute_stats
from vla.embodiment import Embodiment
from vla.errors import ConfigError, DatasetError
from vla.types import PredictRequest

from .config import FinetuneConfig
from .loss import IGNORE


@dataclass
class DatasetInfo:
    """What the model card and the plan say about one dataset of the mixture."""

    name: str
    path: str
    embodiment: str
    robot_type: str
    fps: float
    license: str
    provenance: dict
    episodes_total: int
    train_episodes: list[int]
    val_episodes: list[int]
    train_frames: int = 0
    val_frames: int = 0
    weight: float = 0.0
    excluded: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train_episodes"], d["val_episodes"] = len(self.train_episodes), len(self.val_episodes)
        return d


@dataclass
class TrainingData:
    mixture: Mixture
    val: dict[str, list[ChunkDataset]]  # embodiment -> held-out datasets
    embodiments: dict[str, Embodiment]
    datasets: list[DatasetInfo]


def _open(name: str, path: str) -> LeRobotDataset:
    try:
        return LeRobotDataset(path)
    except DatasetError as e:
        raise DatasetError(f"dataset {name!r}: {e}") from None


def select_episodes(ds: LeRobotDataset, which: str, name: str) -> list[int]:
    """The episodes ``datasets.NAME.episodes`` keeps: all, or those whose next.success is set on some frame."""
    if which == "all":
        return list(ds.episode_indices)
    if SUCCESS not in ds.features:
        raise ConfigError(f"dataset {name!r} has no {SUCCESS!r} column, so datasets.{name}.episodes=successful cannot "
                          f"tell which episodes succeed; regenerate it with `vla data generate` or `vla improve`, "
                          f"or set --datasets.{name}.episodes all")
    kept = [e for e in ds.episode_indices if ds.episode(e).outcomes[SUCCESS].any()]
    if not kept:
        raise DatasetError(f"dataset {name!r}: none of its {ds.num_episodes} episodes succeeds; nothing to train on "
                           f"with datasets.{name}.episodes=successful")
    return kept


def build_data(cfg: FinetuneConfig, base_embodiments: dict[str, Embodiment] | None = None,
               progress: bool = False) -> TrainingData:
    """Open every dataset, split by episode, derive one Embodiment per robot and build the mixture.

    Statistics come from the training episodes only; embodiments the base checkpoint already
    knows keep the checkpoint's statistics (the model learned that normalization).
    """
    base_embodiments = base_embodiments or {}
    opened: dict[str, LeRobotDataset] = {}
    groups: dict[str, list[str]] = {}
    infos: dict[str, DatasetInfo] = {}
    chunk: dict[str, int] = {}
    cameras: dict[str, list[str]] = {}
    for name, spec in cfg.datasets.items():
        ds = opened[name] = _open(name, spec.path)
        emb = spec.embodiment or name
        known = base_embodiments.get(emb)
        if known is not None and list(known.action_names) != list(ds.action_names):
            raise ConfigError(
                f"dataset {name!r} is embodiment {emb!r} with {ds.action_dim} action dims {list(ds.action_names)}, "
                f"but the base checkpoint's {emb!r} has {known.action_dim}: {list(known.action_names)}. The same name "
                f"must mean the same robot: give this data another embodiment name "
                f"(--datasets.{name}.embodiment NEW_NAME)"
            )
        h = spec.chunk_size or (known.chunk_size if known else cfg.model.chunk_size)
        lengths = [ds.episode_length(e) for e in ds.episode_indices]
        if not lengths:
            raise DatasetError(f"dataset {name!r} ({spec.path}) has no episodes")
        if h > max(lengths):
            raise ConfigError(
                f"dataset {name!r}: chunk size {h} is longer than every episode (the longest has {max(lengths)} "
                f"frames); lower it with --datasets.{name}.chunk_size N (or --model.chunk_size N)"
            )
        cams = list(spec.cameras) if spec.cameras else (list(known.cameras) if known else list(ds.cameras))
        missing = [c for c in cams if c not in ds.cameras]
        if missing:
            raise ConfigError(f"dataset {name!r}: cameras {missing} are not in {spec.path}; it has {list(ds.cameras)}")
        train_eps, val_eps = split_episodes(select_episodes(ds, spec.episodes, name), cfg.data.val_fraction,
                                            cfg.seed, name)
        infos[name] = DatasetInfo(name, spec.path, emb, ds.robot_type, ds.fps, ds.license, ds.provenance,
                                  ds.num_episodes, train_eps, val_eps)
        groups.setdefault(emb, []).append(name)
        for what, table, value in (("chunk size", chunk, h), ("cameras", cameras, cams)):
            if emb in table and table[emb] != value:
                raise ConfigError(f"datasets {groups[emb]} share embodiment {emb!r} but disagree on the {what}: "
                                  f"{table[emb]} vs {value}; set them alike or use different embodiment names")
            table[emb] = value

    embodiments = {emb: _embodiment(emb, [opened[n] for n in names], [infos[n].train_episodes for n in names],
                                    chunk[emb], cameras[emb], cfg, base_embodiments.get(emb), names)
                   for emb, names in groups.items()}
    unknown = [a for a in cfg.model.displacement_actions
               if not any(a in e.action_names for e in embodiments.values())]
    if unknown:
        raise ConfigError(f"model.displacement_actions names {unknown}, which no robot's actions have: "
                          + "; ".join(f"{n}: {e.action_names}" for n, e in embodiments.items()))
    augment = Augment(seed=cfg.seed) if cfg.data.augment else None
    train, val = {}, {}
    for name, info in infos.items():
        emb = embodiments[info.embodiment]
        train[name] = ChunkDataset(opened[name], emb, name=name, episodes=info.train_episodes, augment=augment,
                                   short_episodes=cfg.data.short_episodes, progress=progress)
        info.train_frames = len(train[name])
        info.excluded = dict(train[name].report.excluded)
        if info.val_episodes:
            try:
                v = ChunkDataset(opened[name], emb, name=name, episodes=info.val_episodes, short_episodes="exclude")
            except DatasetError:  # every held-out episode is shorter than the chunk: no validation for it
                continue
            val.setdefault(info.embodiment, []).append(v)
            info.val_frames = len(v)
    weights = {n: s.weight for n, s in cfg.datasets.items()} if any(
        s.weight is not None for s in cfg.datasets.values()) else None
    mixture = Mixture(train, weights, seed=cfg.seed)
    for name, info in infos.items():
        info.weight = mixture.weights[name]
    return TrainingData(mixture, val, embodiments, list(infos.values()))


def _embodiment(name: str, datasets: list[LeRobotDataset], episodes: list[list[int]], chunk_size: int,
                cameras: list[str], cfg: FinetuneConfig, known: Embodiment | None, names: list[str]) -> Embodiment:
    first = datasets[0]
    for other, n in zip(datasets[1:], names[1:]):
        if list(other.action_names) != list(first.action_names) or other.fps != first.fps:
            raise ConfigError(
                f"datasets {names[0]!r} and {n!r} are both embodiment {name!r} but differ in action names or fps "
                f"({first.action_names} @ {first.fps} Hz vs {other.action_names} @ {other.fps} Hz); give them "
                "different embodiment names"
            )
    displacement = [a in cfg.model.displacement_actions for a in first.action_names]
    if known is not None:
        if (known.displacement or [False] * known.action_dim) != displacement:
            raise ConfigError(f"embodiment {name!r}: the base checkpoint encodes displacement for "
                              f"{[a for a, d in zip(known.action_names, known.displacement or []) if d]}, this "
                              f"config for {[a for a, d in zip(first.action_names, displacement) if d]}; keep the "
                              "checkpoint's model.displacement_actions (or give this data another embodiment name)")
        return dataclasses.replace(known, cameras=cameras, chunk_size=chunk_size)
    emb = embodiment_from_dataset(first, name, chunk_size, cameras, cfg.model.normalization, episodes=episodes[0])
    if len(datasets) > 1:  # pool statistics over every dataset of this robot (training episodes only)
        feats = [ACTION] + ([STATE] if first.state_dim else [])
        stats = compute_stats(datasets, feats, episodes=dict(enumerate(episodes)))
        emb = dataclasses.replace(emb, action_stats=stats[ACTION], state_stats=stats.get(STATE))
    return dataclasses.replace(emb, displacement=displacement) if any(displacement) else emb


# ----------------------------------------------------------------------------------- batches
def frame_keys(samples: Sequence[dict[str, Any]], embodiments: dict[str, Embodiment]) -> list[tuple]:
    """One key per image, in the order the processor flattens them (sample, then camera)."""
    return [(s["dataset"], int(s["episode_index"]), int(s["frame_index"]), cam)
            for s in samples for cam in embodiments[s["embodiment"]].cameras]


def targets(samples: Sequence[dict[str, Any]], policy, padded_steps: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(appended, labels), both (B, T): the tokens appended after the prompt and the action-vocabulary
    index each position must predict (-100: no loss).

    Autoregressive: appended = the action tokens themselves (teacher forcing), right-padded;
    parallel: appended = query slots. ``padded_steps`` (resolved: mask/keep/drop) decides what
    the steps past an episode's end contribute (see TrainSection.padded_steps).
    """
    vocab = np.asarray(policy.config.action_token_ids)
    seqs, masks = [], []
    for s in samples:
        emb = policy.embodiments[s["embodiment"]]
        ids = np.asarray(policy.codec(emb.name).encode(s["actions"]), np.int64)
        step_mask = np.asarray(s["action_mask"], bool)
        if padded_steps == "mask":
            keep = np.repeat(step_mask, emb.action_dim)  # bins: token k is step k // action_dim
        elif padded_steps == "drop" and not step_mask.all():
            keep = np.zeros(len(ids), bool)
        else:
            keep = np.ones(len(ids), bool)
        seqs.append(ids)
        masks.append(keep)
    T = max(len(x) for x in seqs)
    appended = np.zeros((len(seqs), T), np.int64)
    labels = np.full((len(seqs), T), IGNORE, np.int64)
    parallel = policy.config.decoding == "parallel"
    for i, (ids, keep) in enumerate(zip(seqs, masks)):
        # Padding sits after the real tokens: causal attention keeps it from changing earlier positions.
        appended[i] = policy.config.query_token_id if parallel else vocab[0]
        if not parallel:
            appended[i, :len(ids)] = vocab[ids]
        labels[i, :len(ids)] = np.where(keep, ids, IGNORE)
    return torch.from_numpy(appended), torch.from_numpy(labels)


def requests(samples: Sequence[dict[str, Any]], use_state: bool) -> list[PredictRequest]:
    return [PredictRequest(list(s["images"]), s["instruction"], s["embodiment"],
                           s["state"] if use_state else None) for s in samples]


def make_batch(samples: Sequence[dict[str, Any]], policy, padded_steps: str) -> dict[str, Any]:
    """Model inputs through ``VLAPolicy.prepare`` (the serving path) plus targets, on the policy's device."""
    inputs = policy.prepare(requests(samples, policy.config.use_state))
    appended, labels = targets(samples, policy, padded_steps)
    return {"inputs": inputs, "appended": appended.to(policy.device), "labels": labels.to(policy.device),
            "keys": frame_keys(samples, policy.embodiments), "size": len(samples)}


def resolve_padded_steps(cfg: FinetuneConfig) -> str:
    if cfg.train.padded_steps != "auto":
        return cfg.train.padded_steps
    return "mask" if cfg.model.action_tokenizer == "bins" else "keep"


def action_chunks(data: TrainingData, limit: int, embodiment: str | None = None,
                  normalized: bool = True) -> list[np.ndarray]:
    """Action chunks of the training split, one per training sample (``ChunkDataset.action_chunk``: padded
    past an episode's end as training sees them), at most ``limit`` evenly spaced over the samples.

    ``normalized``: the values the action tokenizer encodes (for fitting FAST, counting tokens),
    else physical units (for the tokenizer report). ``embodiment``: that robot's datasets only.
    """
    datasets = [d for d in data.mixture.datasets if embodiment is None or d.embodiment.name == embodiment]
    offsets = np.cumsum([0] + [len(d) for d in datasets])
    picked = range(offsets[-1])
    if offsets[-1] > limit:
        picked = np.unique(np.linspace(0, offsets[-1] - 1, limit).round().astype(int))
    chunks = []
    for k in picked:
        i = int(np.searchsorted(offsets, k, side="right") - 1)
        ds = datasets[i]
        actions = ds.action_chunk(int(k - offsets[i]))[0]
        chunks.append(ActionCodec(ds.embodiment).normalize(actions) if normalized else actions)
    return chunks


def validation_samples(ds: ChunkDataset, n: int) -> list[int]:
    """``n`` evenly spaced sample indices of a validation dataset (deterministic)."""
    if len(ds) <= n:
        return list(range(len(ds)))
    return np.unique(np.linspace(0, len(ds) - 1, n).round().astype(int)).tolist()
