"""Uniform binning: one token per action value, N equal bins over [-1, 1]."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ConfigError, DecodingError, check_keys
from .base import FORMAT_VERSION, ActionTokenizer, as_chunk, as_chunks, as_ids, check_shape


class BinningActionTokenizer(ActionTokenizer):
    """N equal-width bins over [-1, 1]; decodes to bin centers.

    All N bins are reachable: -1 maps to bin 0 and +1 to bin N-1 (OpenVLA's
    ``np.digitize(x, np.linspace(-1, 1, 256))`` only has 255 usable bins).
    Tokens are time-major: all dims of step 0, then step 1, ... The error for a
    value in [-1, 1] is at most half a bin width, 1/N.
    """

    kind = "bins"
    options = ("bins",)

    def __init__(self, bins: int = 256):
        if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 2:
            raise ConfigError(f"bins must be an integer >= 2, got {bins!r}")
        self.bins = int(bins)
        self.centers = -1.0 + (np.arange(self.bins) + 0.5) * (2.0 / self.bins)
        self._lengths = np.ones(self.bins, dtype=np.int64)
        self._lengths.setflags(write=False)

    @property
    def vocab_size(self) -> int:
        return self.bins

    @property
    def token_lengths(self) -> np.ndarray:
        return self._lengths

    @property
    def bin_width(self) -> float:
        return 2.0 / self.bins

    @property
    def zero_band(self) -> float:
        return 1.0 / self.bins

    def _ids(self, x: np.ndarray) -> np.ndarray:
        # floor((x + 1) / width); +1 lands on N and is folded into the last bin.
        idx = np.floor((np.clip(x, -1.0, 1.0) + 1.0) * (self.bins / 2.0)).astype(np.int64)
        return np.minimum(idx, self.bins - 1)

    def encode(self, chunk: np.ndarray) -> list[int]:
        return self._ids(as_chunk(chunk)).ravel().tolist()

    def encode_batch(self, chunks: Iterable[np.ndarray]) -> list[list[int]]:
        chunks = as_chunks(chunks)
        if chunks and all(c.shape == chunks[0].shape for c in chunks):
            return self._ids(np.stack(chunks)).reshape(len(chunks), -1).tolist()
        return [self._ids(c).ravel().tolist() for c in chunks]

    def decode(self, ids: Sequence[int], chunk_size: int, action_dim: int) -> np.ndarray:
        h, d = check_shape(chunk_size, action_dim)
        arr = as_ids(ids, self.bins)
        if arr.size != h * d:
            raise DecodingError(
                f"got {arr.size} bin tokens but a chunk of {h} steps x {d} dims needs exactly {h * d} "
                "(one token per action value)"
            )
        return self.centers[arr].reshape(h, d)

    def decode_batch(self, ids_batch: Iterable[Sequence[int]], chunk_size: int, action_dim: int) -> np.ndarray:
        ids_batch = list(ids_batch)
        h, d = check_shape(chunk_size, action_dim)
        try:
            arr = np.asarray(ids_batch)
        except ValueError:  # ragged: let decode name the bad one
            arr = None
        if arr is not None and arr.ndim == 2 and arr.shape[1] == h * d and np.issubdtype(arr.dtype, np.integer):
            if arr.size and 0 <= arr.min() and arr.max() < self.bins:  # else decode names the bad sequence
                return self.centers[arr].reshape(len(arr), h, d)
        return super().decode_batch(ids_batch, h, d)

    def config(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "kind": self.kind, "bins": self.bins}

    @classmethod
    def _from_config(cls, config: dict[str, Any], directory: Path) -> "BinningActionTokenizer":
        check_keys(config, cls.options, "a saved 'bins' action tokenizer")
        return cls(**config)
