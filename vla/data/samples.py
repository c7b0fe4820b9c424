"""Training samples: (observation at t, the next H actions) from one LeRobot dataset.

A sample is a dict::

    images        list of uint8 (H, W, 3) arrays, in the embodiment's camera order
    instruction   str (the frame's task)
    state         float32 (S,) or None
    actions       float32 (H, D), physical units: actions t .. t+H-1, padded past the
                  episode end by repeating the last action
    action_mask   bool (H,), False on the padded steps
    embodiment    str
    episode_index, frame_index, dataset

Low-dimensional data of the selected episodes is loaded (and validated) once at
construction, so ``__getitem__`` only decodes one frame per camera. Episodes
that cannot be used are never dropped silently: they raise, or (when asked)
are excluded and counted in ``ChunkDataset.report``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..embodiment import Embodiment
from ..errors import ConfigError, DatasetError
from .augment import Augment
from .lerobot import ACTION, STATE, LeRobotDataset
from .stats import compute_stats

log = logging.getLogger(__name__)
SHORT_POLICIES = ("exclude", "pad", "error")
BAD_POLICIES = ("error", "exclude")


def _open(ds: LeRobotDataset | str | Path) -> LeRobotDataset:
    return ds if isinstance(ds, LeRobotDataset) else LeRobotDataset(ds)


def embodiment_from_dataset(
    ds: LeRobotDataset | str | Path,
    name: str,
    chunk_size: int,
    cameras: Sequence[str] | None = None,
    normalization: str = "auto",
    unnormalized: Sequence[bool] | None = None,
    *,
    episodes: Sequence[int] | None = None,
    progress: bool = False,
) -> Embodiment:
    """An Embodiment for a dataset: its action/state names, fps, cameras and statistics.

    Statistics come from the dataset's metadata when complete (incl. q01/q99); otherwise, or
    whenever ``episodes`` is given (e.g. the training split), they are computed by streaming
    over those episodes (default: all; a missing file raises a DatasetError naming it: pass
    ``episodes=ds.available_episodes()`` to use only what is present).
    """
    ds = _open(ds)
    cams = list(ds.cameras) if cameras is None else list(cameras)
    unknown = [c for c in cams if c not in ds.cameras]
    if unknown:
        raise ConfigError(f"cameras {unknown} are not in {ds.root}; it has {list(ds.cameras)}")
    if not cams:
        raise ConfigError(f"{ds.root} has no camera features; a VLA embodiment needs at least one camera")
    feats = [ACTION] + ([STATE] if ds.state_dim else [])
    stats = {f: ds.stats[f] for f in feats if f in ds.stats}
    missing = [f for f in feats if f not in stats]
    if missing or episodes is not None:
        computed = compute_stats(ds, missing if episodes is None else feats, episodes=episodes, progress=progress)
        stats.update(computed)
    return Embodiment(
        name=name,
        action_names=list(ds.action_names),
        control_hz=ds.fps,
        chunk_size=chunk_size,
        cameras=cams,
        state_names=list(ds.state_names),
        normalization=normalization,
        unnormalized=list(unnormalized) if unnormalized is not None else None,
        action_stats=stats.get(ACTION),
        state_stats=stats.get(STATE),
        image_size=ds.cameras[cams[0]],
        description=f"{ds.robot_type} from {ds.root.name} (LeRobot {ds.version})",
    )


def split_episodes(episodes: Sequence[int], val_fraction: float, seed: int = 0, name: str = "") -> tuple[list[int], list[int]]:
    """Deterministic train/validation split by episode.

    Episodes are ranked by a hash of (seed, name, episode) and the first
    round(val_fraction * n) (at least 1) go to validation, so the split does not depend
    on the order the episodes are listed in, nor on the machine or process.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    eps = sorted(set(int(e) for e in episodes))
    if val_fraction == 0:
        return eps, []
    if len(eps) < 2:
        raise ConfigError(f"cannot split {len(eps)} episode(s) by episode into train and validation; record more")
    n_val = min(max(1, round(val_fraction * len(eps))), len(eps) - 1)

    def key(e: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{name}:{e}".encode(), digest_size=8).digest()

    val = sorted(sorted(eps, key=key)[:n_val])
    val_set = set(val)
    return [e for e in eps if e not in val_set], val


@dataclass
class DataReport:
    """What a ChunkDataset uses and what it left out (and why)."""

    dataset: str
    episodes_total: int
    episodes_used: int = 0
    frames: int = 0
    excluded: dict[str, list[int]] = field(default_factory=dict)  # reason -> episodes
    details: dict[int, str] = field(default_factory=dict)  # episode -> full message

    def __str__(self) -> str:
        s = f"{self.dataset}: {self.episodes_used}/{self.episodes_total} episodes, {self.frames} samples"
        for why, eps in self.excluded.items():
            shown = ", ".join(map(str, eps[:10])) + (" ..." if len(eps) > 10 else "")
            s += f"\n  excluded {len(eps)} ({why}): {shown}"
        return s


class ChunkDataset(torch.utils.data.Dataset):
    """Map-style torch Dataset of action-chunk samples over one LeRobot dataset; index = (episode, t).

    short_episodes: episodes with fewer frames than the chunk size are "exclude"d (default,
    counted in ``report``), kept with padding ("pad"), or raise ("error").
    on_bad_episode: missing/corrupt files or NaN/inf values "error" (default) or are
    "exclude"d and counted in ``report``.
    """

    def __init__(
        self,
        ds: LeRobotDataset | str | Path,
        embodiment: Embodiment,
        *,
        name: str | None = None,
        episodes: Sequence[int] | None = None,
        augment: Augment | None = None,
        short_episodes: str = "exclude",
        on_bad_episode: str = "error",
        progress: bool = False,
    ):
        if short_episodes not in SHORT_POLICIES:
            raise ConfigError(f"short_episodes must be one of {SHORT_POLICIES}, got {short_episodes!r}")
        if on_bad_episode not in BAD_POLICIES:
            raise ConfigError(f"on_bad_episode must be one of {BAD_POLICIES}, got {on_bad_episode!r}")
        self.ds = _open(ds)
        self.embodiment = emb = embodiment
        self.name = name or emb.name
        self.augment = augment
        self.epoch = 0
        self._check_embodiment()
        H = emb.chunk_size
        eps = self.ds.episode_indices if episodes is None else [int(e) for e in episodes]
        report = DataReport(dataset=f"{self.name} ({self.ds.root})", episodes_total=len(eps))
        missing = self.ds.missing_files([e for e in eps if e in self.ds._lengths])

        def exclude(e: int, why: str, detail: str) -> None:
            report.excluded.setdefault(why, []).append(e)
            report.details[e] = detail

        kept, acts, states, ts, tasks = [], [], [], [], []
        task_ids: dict[str, int] = {}
        it = eps
        if progress:
            from tqdm import tqdm

            it = tqdm(eps, desc=f"loading {self.name}", unit="ep")
        for e in it:
            try:
                if e in missing:
                    raise DatasetError(f"episode {e}: missing file(s) {missing[e]} in {self.ds.root}")
                ep = self.ds.episode(e)
            except DatasetError as err:
                if on_bad_episode == "error":
                    raise
                exclude(e, "missing files" if e in missing else "unreadable or invalid", str(err))
                continue
            if ep.length < H:
                msg = (f"episode {e} of {self.ds.root} has {ep.length} frames, fewer than the chunk size {H}")
                if short_episodes == "error":
                    raise DatasetError(msg + ": use short_episodes='pad' to keep it padded, or 'exclude' to drop it (counted)")
                if short_episodes == "exclude":
                    exclude(e, f"shorter than the chunk size {H}", msg)
                    continue
            kept.append(e)
            acts.append(ep.actions)
            if emb.state_dim:
                states.append(ep.states)
            ts.append(ep.timestamps)
            if ep.task_indices is not None:
                tasks.append(np.array([task_ids.setdefault(self.ds.tasks[int(k)], len(task_ids)) for k in ep.task_indices], np.int32))
            else:
                tasks.append(np.full(ep.length, task_ids.setdefault(ep.task, len(task_ids)), np.int32))
        if not kept:
            raise DatasetError(f"no usable episode in {report.dataset}:\n{report}")
        self.episodes = kept
        self.lengths = np.array([len(a) for a in acts], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.actions = np.concatenate(acts)
        self.states = np.concatenate(states) if emb.state_dim else None
        self.timestamps = np.concatenate(ts)
        self.task_of_frame = np.concatenate(tasks)
        self.task_strings = [t for t, _ in sorted(task_ids.items(), key=lambda kv: kv[1])]
        report.episodes_used, report.frames = len(kept), int(self.offsets[-1])
        self.report = report
        if report.excluded:
            log.warning("%s", report)

    def _check_embodiment(self) -> None:
        emb, ds = self.embodiment, self.ds
        if emb.action_dim != ds.action_dim:
            raise ConfigError(
                f"embodiment {emb.name!r} has {emb.action_dim} action dims, {ds.root} has {ds.action_dim}; "
                "build the embodiment with embodiment_from_dataset(ds, ...)"
            )
        if emb.state_dim and emb.state_dim != ds.state_dim:
            raise ConfigError(f"embodiment {emb.name!r} has {emb.state_dim} state dims, {ds.root} has {ds.state_dim}")
        unknown = [c for c in emb.cameras if c not in ds.cameras]
        if unknown:
            raise ConfigError(f"embodiment {emb.name!r} wants cameras {unknown}, {ds.root} has {list(ds.cameras)}")

    # -- torch Dataset -----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _position(self, k: int) -> tuple[int, int]:
        """Sample index (negative: from the end) -> (position of its episode in this dataset, frame index)."""
        k = int(k)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"sample {k} out of range for {len(self)} samples")
        e = int(np.searchsorted(self.offsets, k, side="right") - 1)
        return e, k - int(self.offsets[e])

    def locate(self, k: int) -> tuple[int, int]:
        """Sample index -> (episode index, frame index)."""
        e, t = self._position(k)
        return self.episodes[e], t

    def action_chunk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``k``'s actions (H, D) float32, physical, padded past the episode end by repeating its
        last action, and the mask (H,) that is False on the padded steps."""
        return self._chunk(*self._position(k))

    def _chunk(self, e: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        start, T = int(self.offsets[e]), int(self.lengths[e])
        H = self.embodiment.chunk_size
        n = min(H, T - t)
        actions = np.empty((H, self.actions.shape[1]), np.float32)
        actions[:n] = self.actions[start + t : start + t + n]
        actions[n:] = self.actions[start + T - 1]  # repeat the last action past the end
        mask = np.zeros(H, bool)
        mask[:n] = True
        return actions, mask

    def set_epoch(self, epoch: int) -> None:
        """Vary augmentation per epoch (deterministically)."""
        self.epoch = int(epoch)

    def train(self, mode: bool = True) -> "ChunkDataset":
        if self.augment is not None:
            self.augment.train(mode)
        return self

    def eval(self) -> "ChunkDataset":
        return self.train(False)

    def __getitem__(self, k: int) -> dict[str, Any]:
        e, t = self._position(k)
        start, T = int(self.offsets[e]), int(self.lengths[e])
        actions, mask = self._chunk(e, t)
        ep = self.episodes[e]
        ts = self.timestamps[start : start + T]
        images = [self.ds.frames(ep, cam, [t], timestamps=ts)[0] for cam in self.embodiment.cameras]
        if self.augment is not None:
            images = self.augment(images, key=(self.epoch, start + t))
        return {
            "images": images,
            "instruction": self.task_strings[int(self.task_of_frame[start + t])],
            "state": None if self.states is None else self.states[start + t].copy(),
            "actions": actions,
            "action_mask": mask,
            "embodiment": self.embodiment.name,
            "episode_index": ep,
            "frame_index": t,
            "dataset": self.name,
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: arrays of equal shape are stacked into tensors, everything else stays a list
    (a mixture of embodiments has different action dims and camera counts)."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if key == "images":
            out[key] = vals
        elif isinstance(vals[0], np.ndarray) and all(isinstance(v, np.ndarray) and v.shape == vals[0].shape for v in vals):
            out[key] = torch.from_numpy(np.stack(vals))
        else:
            out[key] = vals
    return out
