"""FAST-style tokenizer (Pertsch et al. 2025): DCT over time, quantize, then BPE.

One value per DCT coefficient: a chunk (H, D) gives H*D integer coefficients,
each written as one unicode symbol; BPE merges runs of symbols (mostly the long
tail of zero high-frequency coefficients) into single tokens. Every alphabet
symbol stays a length-1 token, so any symbol sequence is encodable and a
constrained decoder can always finish a chunk exactly: ids whose
``token_lengths`` sum to H*D always decode to a valid (H, D) chunk.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, models, trainers

from ..errors import CheckpointError, ConfigError, DecodingError, check_keys
from .base import FORMAT_VERSION, ActionTokenizer, as_chunk, as_chunks, as_ids, check_shape

BPE_FILE = "action_tokenizer_bpe.json"
# Symbols live in the Basic Multilingual Plane's Private Use Area: no
# normalizer or pre-tokenizer has a reason to touch them.
SYMBOL_BASE = 0xE000
MAX_SYMBOLS = 0xF8FF - 0xE000 + 1  # 6400
_MAX_COEF = (MAX_SYMBOLS - 1) // 2


@functools.lru_cache(maxsize=64)
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C (n, n): ``C @ x`` equals ``scipy.fft.dct(x, axis=0, norm="ortho")``.

    A cached matrix keeps the package free of a scipy dependency and makes the
    batched transform one matmul (H is small: tens of steps). Its inverse is C.T.
    """
    k = np.arange(n)[:, None]
    t = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * t + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    c.setflags(write=False)
    return c


class FastActionTokenizer(ActionTokenizer):
    """DCT + BPE action tokenizer; ``fit`` it on training chunks before use.

    Options: ``scale`` multiplies DCT coefficients before rounding (error per
    coefficient <= 0.5/scale); ``max_coefficient`` clips the rounded coefficients
    to [-max, max] (the alphabet has 2*max+1 symbols). For values in [-1, 1] every
    coefficient satisfies |c| <= scale*sqrt(H), so the default (None) sets it at
    ``fit`` to ceil(scale*sqrt(largest H in the training chunks)): no clipping for
    any chunk up to that length, and the smallest alphabet that guarantees it.
    ``vocab_size`` is the BPE vocabulary target (>= alphabet size);
    ``min_frequency`` is the least count a pair needs to be merged.
    """

    kind = "fast"
    options = ("scale", "max_coefficient", "vocab_size", "min_frequency")

    def __init__(
        self, scale: float = 10.0, max_coefficient: int | None = None, vocab_size: int = 1024, min_frequency: int = 2
    ):
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or not np.isfinite(scale) or scale <= 0:
            raise ConfigError(f"scale must be a positive number, got {scale!r}")
        if max_coefficient is not None and (not _is_int(max_coefficient) or not 1 <= max_coefficient <= _MAX_COEF):
            raise ConfigError(f"max_coefficient must be None or an integer in 1..{_MAX_COEF}, got {max_coefficient!r}")
        if not _is_int(vocab_size) or vocab_size < 3:
            raise ConfigError(f"vocab_size must be an integer >= 3, got {vocab_size!r}")
        if not _is_int(min_frequency) or min_frequency < 1:
            raise ConfigError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
        self.scale = float(scale)
        self.max_coefficient_option = None if max_coefficient is None else int(max_coefficient)
        self.max_coefficient: int | None = self.max_coefficient_option  # resolved by fit when None
        self.target_vocab_size = int(vocab_size)
        self.min_frequency = int(min_frequency)
        if self.max_coefficient is not None:
            self._check_vocab_fits_alphabet(self.max_coefficient)
        self._bpe: Tokenizer | None = None

    # --- fitting -------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self._bpe is not None

    def fit(self, chunks: Iterable[np.ndarray]) -> "FastActionTokenizer":
        """Train the BPE vocabulary on normalized training chunks (any mix of (H, D) shapes)."""
        chunks = as_chunks(chunks)
        if not chunks:
            raise ConfigError("fit needs at least one action chunk")
        # Everything is computed with a local max_coefficient: a failed fit leaves the tokenizer as it was.
        m = self.max_coefficient_option
        if m is None:
            longest = max(c.shape[0] for c in chunks)
            m = max(int(np.ceil(self.scale * np.sqrt(longest) - 1e-9)), 1)
            if m > _MAX_COEF:
                raise ConfigError(
                    f"scale={self.scale} with chunks of {longest} steps needs coefficients up to {m}, more than "
                    f"the {_MAX_COEF} symbols allow; lower scale or set max_coefficient (values beyond it are clipped)"
                )
            self._check_vocab_fits_alphabet(m)
        coeffs = self._coefficients(chunks)
        self._warn_if_clipped(coeffs, "training", m)
        strings = [self._to_symbols(c, m) for c in coeffs]
        bpe = Tokenizer(models.BPE())  # no normalizer, no pre-tokenizer: symbols pass untouched
        trainer = trainers.BpeTrainer(
            vocab_size=self.target_vocab_size,
            min_frequency=self.min_frequency,
            show_progress=False,
            initial_alphabet=[chr(SYMBOL_BASE + i) for i in range(2 * m + 1)],
        )
        bpe.train_from_iterator(strings, trainer, length=len(strings))
        self._set_bpe(bpe, m)
        return self

    @property
    def alphabet_size(self) -> int:
        if self.max_coefficient is None:
            raise ConfigError("the FAST alphabet is set by fit (max_coefficient=None): call fit(training_chunks) first")
        return 2 * self.max_coefficient + 1

    def _check_vocab_fits_alphabet(self, m: int) -> None:
        if self.target_vocab_size < 2 * m + 1:
            raise ConfigError(
                f"vocab_size={self.target_vocab_size} is smaller than the {2 * m + 1} coefficient symbols "
                f"of max_coefficient={m} (scale={self.scale}); raise vocab_size to at least "
                f"{2 * m + 1}, or lower scale or max_coefficient"
            )

    def _warn_if_clipped(self, coeffs: list[np.ndarray], what: str, m: int) -> None:
        # Clipping is lossy (a clipped DC coefficient shifts the whole chunk): say so, once per call site.
        if any(np.abs(c).max() > m for c in coeffs):
            warnings.warn(
                f"FAST: some DCT coefficients of the {what} chunks exceed max_coefficient={m} "
                f"and are clipped (lossy); chunks longer than those the tokenizer was fitted on, or a high scale, "
                "cause this: raise max_coefficient or lower scale",
                stacklevel=3,
            )

    def _set_bpe(self, bpe: Tokenizer, m: int) -> None:
        """Adopt a BPE tokenizer over the symbols of max_coefficient ``m`` after checking it can
        honour the decoding contract."""
        if not isinstance(bpe.model, models.BPE) or bpe.model.dropout is not None:
            raise ConfigError("the FAST BPE tokenizer must be a deterministic BPE model (no dropout)")
        if bpe.normalizer is not None or bpe.pre_tokenizer is not None or bpe.post_processor is not None:
            raise ConfigError("the FAST BPE tokenizer must have no normalizer, pre-tokenizer or post-processor")
        vocab = bpe.get_vocab()
        n = len(vocab)
        if sorted(vocab.values()) != list(range(n)):
            raise ConfigError("the FAST BPE vocabulary ids are not contiguous 0..n-1")
        values: list[list[int]] = [[] for _ in range(n)]
        for token, i in vocab.items():
            cps = [ord(ch) - SYMBOL_BASE for ch in token]
            if not token or any(not 0 <= c <= 2 * m for c in cps):
                raise ConfigError(
                    f"the FAST BPE token {token!r} (id {i}) is not made of coefficient symbols for max_coefficient={m}"
                )
            values[i] = [c - m for c in cps]
        lengths = np.array([len(v) for v in values], dtype=np.int64)
        if int(np.sum(lengths == 1)) != 2 * m + 1:
            raise ConfigError("the FAST BPE vocabulary lacks some single-symbol tokens; every sequence must stay encodable")
        self.max_coefficient = m
        self._bpe = bpe
        self._lengths = lengths
        self._lengths.setflags(write=False)
        # Flat table + offsets: decoding gathers all values of all ids in one indexing op.
        self._flat = np.array([v for vs in values for v in vs], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    def _require_fit(self) -> Tokenizer:
        if self._bpe is None:
            raise ConfigError("this FAST action tokenizer is not fitted: call fit(training_chunks) first (or load a saved one)")
        return self._bpe

    # --- interface -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._require_fit().get_vocab_size()

    @property
    def token_lengths(self) -> np.ndarray:
        self._require_fit()
        return self._lengths

    def _coefficients(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """Rounded, scaled DCT coefficients (H, D) per chunk (not clipped); batched per shape."""
        out: list[np.ndarray | None] = [None] * len(chunks)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, c in enumerate(chunks):
            by_shape.setdefault(c.shape, []).append(i)
        for (h, _), idx in by_shape.items():
            x = np.clip(np.stack([chunks[i] for i in idx]), -1.0, 1.0)
            q = np.rint(np.matmul(dct_matrix(h), x) * self.scale).astype(np.int64)
            for j, i in enumerate(idx):
                out[i] = q[j]
        return out  # type: ignore[return-value]

    @staticmethod
    def _to_symbols(coeffs: np.ndarray, m: int) -> str:
        # Row-major flatten: every dim's lowest frequency first, high frequencies (mostly 0) last.
        q = np.clip(coeffs.ravel(), -m, m)
        return (q + (SYMBOL_BASE + m)).astype("<u4").tobytes().decode("utf-32-le")

    def encode(self, chunk: np.ndarray) -> list[int]:
        bpe = self._require_fit()
        m = self.max_coefficient
        coeffs = self._coefficients([as_chunk(chunk)])
        self._warn_if_clipped(coeffs, "encoded", m)
        return bpe.encode(self._to_symbols(coeffs[0], m)).ids

    def encode_batch(self, chunks: Iterable[np.ndarray]) -> list[list[int]]:
        bpe = self._require_fit()
        m = self.max_coefficient
        coeffs = self._coefficients(as_chunks(chunks))
        self._warn_if_clipped(coeffs, "encoded", m)
        return [e.ids for e in bpe.encode_batch_fast([self._to_symbols(c, m) for c in coeffs])]

    def _values(self, ids: Any, expected: int, what: str) -> np.ndarray:
        arr = as_ids(ids, len(self._lengths))
        lengths = self._lengths[arr]
        total = int(lengths.sum())
        if total != expected:
            raise DecodingError(
                f"{what}: the FAST tokens decode to {total} values but the chunk needs exactly {expected}; "
                "generate until the token_lengths of the emitted tokens sum to chunk_size * action_dim"
            )
        # Index of every value: token start offset + position inside the token.
        starts = np.repeat(self._offsets[arr] - (np.cumsum(lengths) - lengths), lengths)
        return self._flat[starts + np.arange(total)]

    def decode(self, ids: Sequence[int], chunk_size: int, action_dim: int) -> np.ndarray:
        self._require_fit()
        h, d = check_shape(chunk_size, action_dim)
        q = self._values(ids, h * d, f"chunk of {h} steps x {d} dims").reshape(h, d)
        return dct_matrix(h).T @ (q / self.scale)

    def decode_batch(self, ids_batch: Iterable[Sequence[int]], chunk_size: int, action_dim: int) -> np.ndarray:
        self._require_fit()
        h, d = check_shape(chunk_size, action_dim)
        seqs = []
        for i, ids in enumerate(ids_batch):
            try:
                seqs.append(as_ids(ids, len(self._lengths)))
            except DecodingError as e:
                raise DecodingError(f"sequence {i}: {e}") from None
        if not seqs:
            return np.zeros((0, h, d))
        # All sequences in one gather; check each one's value count first to name a bad one.
        arr = np.concatenate(seqs)
        counts = np.array([len(ids) for ids in seqs])
        seq_of_token = np.repeat(np.arange(len(seqs)), counts)
        totals = np.bincount(seq_of_token, weights=self._lengths[arr], minlength=len(seqs))
        bad = np.flatnonzero(totals != h * d)
        if bad.size:
            i = int(bad[0])
            self._values(seqs[i], h * d, f"sequence {i} ({h} steps x {d} dims)")  # raises with the details
        q = self._values(arr, len(seqs) * h * d, "batch").reshape(len(seqs), h, d)
        return np.matmul(dct_matrix(h).T, q / self.scale)

    # --- persistence -----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "scale": self.scale,
            "max_coefficient": self.max_coefficient,  # resolved by fit when the option was None
            "vocab_size": self.target_vocab_size,
            "min_frequency": self.min_frequency,
        }
        if self._bpe is not None:
            cfg["fitted_vocab_size"] = self.vocab_size
            cfg["bpe_file"] = BPE_FILE
        return cfg

    def _save_extra(self, directory: Path) -> None:
        if self._bpe is None:
            raise ConfigError("cannot save an unfitted FAST action tokenizer: call fit(training_chunks) first")
        self._bpe.save(str(directory / BPE_FILE))

    @classmethod
    def _from_config(cls, config: dict[str, Any], directory: Path) -> "FastActionTokenizer":
        check_keys(config, (*cls.options, "fitted_vocab_size", "bpe_file"), "a saved 'fast' action tokenizer")
        options = {k: config[k] for k in cls.options if k in config}
        tok = cls(**options)
        bpe_path = directory / config.get("bpe_file", BPE_FILE)
        if not bpe_path.is_file():
            raise CheckpointError(f"the FAST action tokenizer in {str(directory)!r} lacks its BPE file {bpe_path.name!r}")
        try:
            bpe = Tokenizer.from_file(str(bpe_path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise CheckpointError(f"cannot read the FAST BPE file {str(bpe_path)!r}: {e}") from e
        if tok.max_coefficient is None:
            raise CheckpointError(f"the FAST action tokenizer in {str(directory)!r} has no max_coefficient; re-save it")
        tok._set_bpe(bpe, tok.max_coefficient)
        expected = config.get("fitted_vocab_size")
        if expected is not None and expected != tok.vocab_size:
            raise CheckpointError(
                f"the FAST BPE file {str(bpe_path)!r} has {tok.vocab_size} tokens but "
                f"action_tokenizer.json says {expected}; the two files do not belong together"
            )
        return tok


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

