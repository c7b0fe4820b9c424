"""The action tokenizer interface, JSON persistence and the kind registry."""

from __future__ import annotations

import difflib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from ..errors import CheckpointError, ConfigError, DecodingError, InvalidInputError, check_keys

CONFIG_FILE = "action_tokenizer.json"
FORMAT_VERSION = 1

_REGISTRY: dict[str, type["ActionTokenizer"]] = {}


class ActionTokenizer(ABC):
    """Turns a normalized action chunk (H, D) into token ids 0..vocab_size-1 and back.

    Contract relied on by constrained decoding: a policy that emits tokens until the
    sum of ``token_lengths`` of the emitted ids equals H*D (masking every token longer
    than the remaining value count) always produces a sequence ``decode`` accepts.
    """

    kind: ClassVar[str]
    options: ClassVar[tuple[str, ...]]  # keyword options accepted by the constructor

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _REGISTRY[cls.kind] = cls

    # --- the interface -------------------------------------------------------------
    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of action tokens; ids are 0..vocab_size-1."""

    @property
    @abstractmethod
    def token_lengths(self) -> np.ndarray:
        """int array (vocab_size,): how many action values each token decodes to."""

    @abstractmethod
    def encode(self, chunk: np.ndarray) -> list[int]:
        """Token ids of one normalized chunk (H, D); values outside [-1, 1] are clipped."""

    @abstractmethod
    def decode(self, ids: Sequence[int], chunk_size: int, action_dim: int) -> np.ndarray:
        """Normalized float64 chunk (chunk_size, action_dim); DecodingError if ids are malformed."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """What ``save`` writes to action_tokenizer.json (for model cards)."""

    @classmethod
    @abstractmethod
    def _from_config(cls, config: dict[str, Any], directory: Path) -> "ActionTokenizer":
        """Rebuild from a validated config (``kind``/``format_version`` already removed)."""

    @property
    def zero_band(self) -> float:
        """Half-width of one decode cell in normalized units (0: values are continuous, no snapping)."""
        return 0.0

    # --- conveniences ----------------------------------------------------------------
    def encode_batch(self, chunks: Iterable[np.ndarray]) -> list[list[int]]:
        """Token ids of many chunks (a (B, H, D) array or any iterable of (H, D) arrays)."""
        return [self.encode(c) for c in chunks]

    def decode_batch(self, ids_batch: Iterable[Sequence[int]], chunk_size: int, action_dim: int) -> np.ndarray:
        """(B, chunk_size, action_dim) from B id sequences."""
        out = []
        for i, ids in enumerate(ids_batch):
            try:
                out.append(self.decode(ids, chunk_size, action_dim))
            except DecodingError as e:
                raise DecodingError(f"sequence {i}: {e}") from None
        return np.stack(out) if out else np.zeros((0, chunk_size, action_dim))

    def allowed_tokens(self, remaining_values: int) -> np.ndarray:
        """Boolean mask of tokens that fit into ``remaining_values`` (for constrained decoding)."""
        return self.token_lengths <= remaining_values

    def save(self, directory: str | Path) -> None:
        """Write action_tokenizer.json (JSON only, no pickle) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_extra(directory)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")

    def _save_extra(self, directory: Path) -> None:
        """Hook for files besides action_tokenizer.json."""

    @staticmethod
    def load(directory: str | Path) -> "ActionTokenizer":
        """Load a tokenizer saved with ``save``; dispatches on its ``kind``."""
        directory = Path(directory)
        path = directory / CONFIG_FILE
        if not path.is_file():
            raise CheckpointError(
                f"no {CONFIG_FILE} in {str(directory)!r}: not a saved action tokenizer "
                "(save one with ActionTokenizer.save, or point at the checkpoint directory that has it)"
            )
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{str(path)!r} is not valid JSON ({e}); re-save the tokenizer") from e
        if not isinstance(config, dict):
            raise CheckpointError(f"{str(path)!r} must hold a JSON object, got {type(config).__name__}")
        config = dict(config)
        version = config.pop("format_version", None)
        if not isinstance(version, int) or isinstance(version, bool):
            raise CheckpointError(f"{str(path)!r} has no integer 'format_version'; re-save the tokenizer")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{str(path)!r} has format version {version}, this vla reads up to {FORMAT_VERSION}: "
                "upgrade the vla package to load it"
            )
        kind = config.pop("kind", None)
        if kind not in _REGISTRY:
            raise CheckpointError(
                f"{str(path)!r} has unknown action tokenizer kind {kind!r}; known kinds: {sorted(_REGISTRY)}"
            )
        cls = _REGISTRY[kind]
        try:
            return cls._from_config(config, directory)
        except ConfigError as e:
            raise CheckpointError(f"{str(path)!r}: {e}") from e


def load_action_tokenizer(directory: str | Path) -> ActionTokenizer:
    """Load a saved action tokenizer (bins or fast) from ``directory``."""
    return ActionTokenizer.load(directory)


def make_action_tokenizer(kind: str, **options: Any) -> ActionTokenizer:
    """Build an action tokenizer: ``"bins"`` (options: bins) or ``"fast"`` (scale, max_coefficient,
    vocab_size, min_frequency; call ``fit`` before use)."""
    if kind not in _REGISTRY:
        close = difflib.get_close_matches(str(kind), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown action tokenizer kind {kind!r}.{hint} Choose one of {sorted(_REGISTRY)}")
    cls = _REGISTRY[kind]
    check_keys(options, cls.options, f"the options of the {kind!r} action tokenizer")
    return cls(**options)


# --- validation helpers shared by the implementations ----------------------------------
def as_chunk(chunk: Any) -> np.ndarray:
    """A finite float64 (H, D) array, or InvalidInputError naming the problem."""
    try:
        x = np.asarray(chunk, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"an action chunk must be a numeric (H, D) array: {e}") from e
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise InvalidInputError(f"an action chunk must have shape (H, D) with H, D >= 1, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InvalidInputError("action chunk contains NaN or inf; fix the data (or its normalization) first")
    return x


def as_chunks(chunks: Any) -> list[np.ndarray]:
    """A list of validated (H, D) chunks from a (B, H, D) array or an iterable of chunks."""
    if isinstance(chunks, np.ndarray) and chunks.ndim == 3:
        x = np.asarray(chunks, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise InvalidInputError("action chunks contain NaN or inf; fix the data (or its normalization) first")
        return list(x)
    return [as_chunk(c) for c in chunks]


def check_shape(chunk_size: Any, action_dim: Any) -> tuple[int, int]:
    for name, v in (("chunk_size", chunk_size), ("action_dim", action_dim)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise DecodingError(f"{name} must be a positive integer, got {v!r}")
    return int(chunk_size), int(action_dim)


def as_ids(ids: Any, vocab_size: int) -> np.ndarray:
    """int64 ids, or DecodingError if any is not an integer in 0..vocab_size-1."""
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError) as e:  # ragged input and the like
        raise DecodingError(f"action token ids must be a flat sequence of integers: {e}") from e
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DecodingError(
            f"action token ids must be a flat sequence of integers, got dtype {arr.dtype} and shape {arr.shape}"
        )
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        i = int(np.argmax(bad))
        raise DecodingError(
            f"action token id {int(arr[i])} at position {i} is out of range 0..{vocab_size - 1}; "
            "map language-model ids back to action ids before decoding, and mask non-action tokens while generating"
        )
    return arr
