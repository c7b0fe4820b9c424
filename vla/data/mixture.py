"""Weighted mixtures of ChunkDatasets (one per embodiment/dataset) with exact, resumable order.

The sample order is a pure function of (seed, weights, dataset sizes, position):
position n draws a dataset from a per-block RNG (``default_rng([seed, 0, n // 1024])``),
and the k-th draw from dataset d is element ``k mod size`` of the permutation
``default_rng([seed, 1, d, k // size])`` (each pass over a dataset is a fresh
shuffle without replacement). Resuming is therefore exact: restart at the
position = number of samples consumed.

Two ways to feed a DataLoader:
* map-style ``Mixture`` + ``MixtureSampler`` (DataLoader keeps the sampler order for any
  num_workers): resume with ``sampler.load_state_dict(sampler.state_dict(consumed=n))``;
* ``MixtureIterable`` (a torch IterableDataset): with ``DataLoader(it, batch_size=B,
  num_workers=W)`` and the same B, batches come out in position order; each sample
  carries ``sample_position``, so resume at the last consumed position + 1.
"""

from __future__ import annotations

import difflib
import itertools
import math
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..embodiment import Embodiment
from ..errors import ConfigError, UnknownEmbodimentError
from .samples import ChunkDataset

BLOCK = 1024


def parse_weights(spec: "str | Mapping[str, float] | None", names: Sequence[str],
                  sizes: Sequence[int] | None = None) -> dict[str, float]:
    """Normalized sampling weights for ``names`` from "metaworld=0.5,aloha=0.3,so101=0.2" or a dict.

    None: proportional to ``sizes`` (or uniform). Every name needs a weight (0 leaves a
    dataset out); unknown names, bad numbers, negatives and an all-zero total are errors.
    """
    names = list(names)
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        raw = {n: float(s) for n, s in zip(names, sizes)} if sizes is not None else {n: 1.0 for n in names}
    elif isinstance(spec, str):
        raw = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if "=" not in part:
                raise ConfigError(
                    f"mixture weight {part!r} has no '='; write NAME=WEIGHT pairs separated by commas, "
                    f"e.g. {','.join(f'{n}=1' for n in names)}"
                )
            k, v = (x.strip() for x in part.split("=", 1))
            try:
                w = float(v)
            except ValueError:
                raise ConfigError(f"mixture weight for {k!r} is {v!r}, not a number (e.g. {k}=0.5)") from None
            if k in raw:
                raise ConfigError(f"mixture weight for {k!r} is given twice")
            raw[k] = w
    elif isinstance(spec, Mapping):
        raw = {}
        for k, v in spec.items():
            try:
                raw[str(k)] = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"mixture weight for {k!r} is {v!r}, not a number") from None
    else:
        raise ConfigError(f"mixture weights must be a 'name=weight,...' string or a dict, got {type(spec).__name__}")
    for k in raw:
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"mixture weight names unknown dataset/embodiment {k!r}.{hint} The mixture has {names}")
    missing = [n for n in names if n not in raw]
    if missing:
        raise ConfigError(f"mixture weights lack {missing}; give every dataset a weight (0 leaves it out)")
    bad = {k: v for k, v in raw.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise ConfigError(f"mixture weights must be finite and >= 0, got {bad}")
    total = sum(raw.values())
    if total <= 0:
        raise ConfigError(f"mixture weights sum to {total}; at least one must be > 0")
    return {n: raw[n] / total for n in names}


class _Order:
    """The deterministic sample order (see module docstring)."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int):
        self.sizes = [int(s) for s in sizes]
        self.p = np.asarray(weights, np.float64)
        self.p = self.p / self.p.sum()
        for s, w in zip(self.sizes, self.p):
            if w > 0 and s == 0:
                raise ConfigError("a dataset with weight > 0 has no samples")
        self.seed = int(seed)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self._perm: dict[int, tuple[int, np.ndarray]] = {}

    def _choices(self, block: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0, block]).choice(len(self.sizes), size=BLOCK, p=self.p)

    def _local(self, d: int, k: int) -> int:
        epoch, i = divmod(k, self.sizes[d])
        cached = self._perm.get(d)
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, 1, d, epoch]).permutation(self.sizes[d]))
            self._perm[d] = cached
        return int(cached[1][i])

    def iterate(self, start: int = 0) -> Iterator[tuple[int, int, int]]:
        """Yields (position, dataset, flat index) from ``start`` on, forever."""
        counts = np.zeros(len(self.sizes), np.int64)
        b0 = start // BLOCK
        for b in range(b0):  # replay the draws before start (cheap: one vectorized block each)
            counts += np.bincount(self._choices(b), minlength=len(self.sizes))
        for b in itertools.count(b0):
            for j, d in enumerate(self._choices(b).tolist()):
                k = counts[d]
                counts[d] += 1
                n = b * BLOCK + j
                if n >= start:
                    yield n, d, int(self.offsets[d]) + self._local(d, int(k))


class Mixture(torch.utils.data.Dataset):
    """Several ChunkDatasets under one flat index, with sampling weights.

    >>> mix = Mixture([metaworld_ds, aloha_ds], "metaworld=0.7,aloha=0.3", seed=0)
    >>> loader = DataLoader(mix, batch_size=8, sampler=mix.sampler(), collate_fn=collate)
    """

    def __init__(self, datasets: "Sequence[ChunkDataset] | Mapping[str, ChunkDataset]",
                 weights: "str | Mapping[str, float] | None" = None, *, seed: int = 0):
        if isinstance(datasets, Mapping):
            items = list(datasets.items())
        else:
            items = [(d.name, d) for d in datasets]
        if not items:
            raise ConfigError("a mixture needs at least one dataset")
        names = [n for n, _ in items]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"two datasets are named {dup}; give them distinct names (ChunkDataset(..., name=...))")
        for n, d in items:
            if not isinstance(d, ChunkDataset):
                raise ConfigError(f"mixture entry {n!r} is a {type(d).__name__}, expected a ChunkDataset")
        self.names = names
        self.datasets = [d for _, d in items]
        self.sizes = [len(d) for d in self.datasets]
        self.weights = parse_weights(weights, names, self.sizes)
        self.seed = seed
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        embs: dict[str, Embodiment] = {}
        for d in self.datasets:
            prev = embs.setdefault(d.embodiment.name, d.embodiment)
            if prev is not d.embodiment and prev.to_dict() != d.embodiment.to_dict():
                raise ConfigError(
                    f"datasets disagree on embodiment {d.embodiment.name!r}; share one Embodiment object "
                    "(e.g. with statistics computed over all its datasets)"
                )
        self.embodiments = embs

    def check_embodiments(self, known: Iterable[str]) -> None:
        """Raise UnknownEmbodimentError if a dataset's embodiment is not in ``known`` (e.g. a checkpoint's)."""
        known = list(known)
        for name in self.embodiments:
            if name not in known:
                raise UnknownEmbodimentError(name, known)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, k: int) -> tuple[int, int]:
        d = int(np.searchsorted(self.offsets, k, side="right") - 1)
        return d, int(k - self.offsets[d])

    def __getitem__(self, k: int) -> dict[str, Any]:
        d, i = self.locate(int(k))
        return self.datasets[d][i]

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)

    def train(self, mode: bool = True) -> "Mixture":
        for d in self.datasets:
            d.train(mode)
        return self

    def eval(self) -> "Mixture":
        return self.train(False)

    def sampler(self, *, num_samples: int | None = None, start: int = 0) -> "MixtureSampler":
        return MixtureSampler(self.sizes, [self.weights[n] for n in self.names], seed=self.seed,
                              num_samples=num_samples, start=start)

    def iterable(self, *, batch_size: int = 1, start: int = 0, num_samples: int | None = None) -> "MixtureIterable":
        return MixtureIterable(self, batch_size=batch_size, start=start, num_samples=num_samples)

    @property
    def report(self) -> str:
        return "\n".join(str(d.report) for d in self.datasets)


class MixtureSampler(torch.utils.data.Sampler):
    """Weighted, seeded, resumable sampler of flat Mixture indices.

    num_samples: indices per ``__iter__`` (None: endless). state_dict()/load_state_dict()
    save and restore the position; with a DataLoader (which prefetches) pass the number
    of samples your loop consumed: ``state_dict(consumed=steps * batch_size)``.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], *, seed: int = 0,
                 num_samples: int | None = None, start: int = 0):
        self._order = _Order(sizes, weights, seed)
        self.num_samples = num_samples
        self.position = int(start)
        self._iter_start = self.position

    @property
    def seed(self) -> int:
        return self._order.seed

    def __iter__(self) -> Iterator[int]:
        self._iter_start = self.position
        for count, (n, _, flat) in enumerate(self._order.iterate(self.position)):
            if self.num_samples is not None and count >= self.num_samples:
                return
            self.position = n + 1
            yield flat

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("an endless MixtureSampler has no length; pass num_samples=")
        return self.num_samples

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        position = self.position if consumed is None else self._iter_start + int(consumed)
        return {"seed": self.seed, "position": position, "sizes": list(self._order.sizes),
                "weights": self._order.p.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state.get("sizes", self._order.sizes)) != self._order.sizes or int(state.get("seed", self.seed)) != self.seed:
            raise ConfigError(
                f"sampler state is for sizes {state.get('sizes')} / seed {state.get('seed')}, this mixture has "
                f"{self._order.sizes} / seed {self.seed}: resume with the same datasets, episodes split and seed"
            )
        if not np.allclose(state.get("weights", self._order.p), self._order.p):
            raise ConfigError(f"sampler state has weights {state.get('weights')}, this mixture {self._order.p.tolist()}")
        self.position = int(state["position"])


class MixtureIterable(torch.utils.data.IterableDataset):
    """The mixture as an endless (or ``num_samples``-long) stream in sampler order.

    Worker w of W produces the batches j with j % W == w (positions j*B .. j*B+B-1), which
    is exactly the order in which a DataLoader with the same batch_size B collects them.
    """

    def __init__(self, mixture: Mixture, *, batch_size: int = 1, start: int = 0, num_samples: int | None = None):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.mixture, self.batch_size, self.start, self.num_samples = mixture, batch_size, int(start), num_samples
        self._order = _Order(mixture.sizes, [mixture.weights[n] for n in mixture.names], mixture.seed)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        end = None if self.num_samples is None else self.start + self.num_samples
        for n, _, flat in self._order.iterate(self.start):
            if end is not None and n >= end:
                return
            if ((n - self.start) // self.batch_size) % nw != wid:
                continue
            sample = self.mixture[flat]
            sample["sample_position"] = n
            yield sample
