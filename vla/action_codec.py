"""ActionCodec: one robot's physical action chunks <-> action-token ids, the one place that joins the
embodiment's normalization and displacement encoding with the action tokenizer.

Training (targets), serving (decoding), the doctor (round trip) and evaluation all go through it, so
what a policy is trained on is exactly what it emits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .action_tokenizers import ActionTokenizer
from .embodiment import Embodiment
from .errors import ConfigError, InvalidInputError
from .normalize import Normalizer


class ActionCodec:
    """Physical (H, D) chunks of ``embodiment`` -> normalized values -> token ids, and back.

    Displacement dims are encoded as the mean displacement so far (see ``targets``); with the
    embodiment's ``snap_zero``, a decoded value within the tokenizer's ``zero_band`` of physical 0
    is exactly 0. ``tokenizer`` may be None for the normalizing half alone (fitting a tokenizer).
    """

    def __init__(self, embodiment: Embodiment, tokenizer: ActionTokenizer | None = None):
        self.embodiment, self.tokenizer = embodiment, tokenizer
        self.normalizer: Normalizer = embodiment.action_normalizer
        self._displacement = None if embodiment.displacement is None else np.asarray(embodiment.displacement, bool)

    @property
    def chunk_shape(self) -> tuple[int, int]:
        return self.embodiment.chunk_size, self.embodiment.action_dim

    # ------------------------------------------------------------------ physical <-> normalized
    def targets(self, actions: np.ndarray) -> np.ndarray:
        """The physical values a chunk (..., H, D) encodes: the actions, displacement dims as mean displacement.

        The mean of the first t increments says where the target goes (a smooth function of the
        scene) rather than the jitter of a controller's per-step commands (Diffusion Policy and UMI
        report position-like chunks beating per-step deltas); it keeps the per-step statistics valid.
        """
        x = np.array(actions, dtype=np.float64)
        if self._displacement is not None:
            m = self._displacement_mask(x)
            x[..., m] = np.cumsum(x[..., m], -2) / self._steps(x)
        return x

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Physical (..., H, D) chunk(s) -> the normalized values the action tokenizer cuts into tokens."""
        return self.normalizer.normalize(self.targets(actions))

    def clipped(self, actions: np.ndarray) -> np.ndarray:
        """True where ``normalize`` clips a physical chunk: values outside the range the statistics cover."""
        return self.normalizer.clipped(self.targets(actions))

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """The inverse of ``normalize``: normalized (..., H, D) values -> physical per-step actions."""
        norm = self.normalizer
        y = np.asarray(normalized, dtype=np.float64)
        x = norm.unnormalize(y)
        band = self.tokenizer.zero_band if self.tokenizer is not None else 0.0
        if self.embodiment.snap_zero and band > 0:
            zero = np.zeros(self.embodiment.action_dim)  # only where the normalizer covers 0 (clipping would move it)
            x = np.where((np.abs(y - norm.normalize(zero)) <= band) & ~norm.clipped(zero), 0.0, x)
        if self._displacement is not None:
            m = self._displacement_mask(x)
            x[..., m] = np.diff(x[..., m] * self._steps(x), axis=-2, prepend=0.0)
        return x

    # ------------------------------------------------------------------ physical <-> token ids
    def encode(self, actions: np.ndarray) -> list[int]:
        """Token ids of one physical (H, D) chunk."""
        return self._tokenizer().encode(self.normalize(actions))

    def encode_batch(self, chunks: np.ndarray) -> list[list[int]]:
        """Token ids of physical (B, H, D) chunks."""
        return self._tokenizer().encode_batch(self.normalize(chunks))

    def decode(self, ids: Sequence[int], chunk_size: int | None = None) -> np.ndarray:
        """Physical (H, D) actions from one chunk's token ids (H: the embodiment's chunk size unless given)."""
        h = chunk_size or self.embodiment.chunk_size
        return self.unnormalize(self._tokenizer().decode(ids, h, self.embodiment.action_dim))

    def decode_batch(self, ids_batch: Sequence[Sequence[int]], chunk_size: int | None = None) -> np.ndarray:
        """Physical (B, H, D) actions from B chunks' token ids."""
        h = chunk_size or self.embodiment.chunk_size
        return self.unnormalize(self._tokenizer().decode_batch(ids_batch, h, self.embodiment.action_dim))

    def round_trip(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An episode's (T, D) actions as a policy emits them, chunk after chunk, and where they were clipped.

        The episode is cut into consecutive chunks of the embodiment's size (the last one padded with
        its final action), encoded to ids and decoded as ``VLAPolicy.predict`` does.
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.embodiment.action_dim or not len(actions):
            raise InvalidInputError(f"round_trip needs (T, {self.embodiment.action_dim}) actions of embodiment "
                                    f"{self.embodiment.name!r}, got shape {actions.shape}")
        h, (t, d) = self.embodiment.chunk_size, actions.shape
        n = -(-t // h)
        chunks = np.concatenate([actions, np.repeat(actions[-1:], n * h - t, 0)]).reshape(n, h, d)
        decoded = self.decode_batch(self.encode_batch(chunks), h)
        return decoded.reshape(n * h, d)[:t], self.clipped(chunks).reshape(n * h, d)[:t]

    # ------------------------------------------------------------------ helpers
    def _tokenizer(self) -> ActionTokenizer:
        if self.tokenizer is None:
            raise ConfigError(f"the action codec of embodiment {self.embodiment.name!r} has no action tokenizer; "
                              "build it with ActionCodec(embodiment, tokenizer) (or VLAPolicy.codec(name))")
        return self.tokenizer

    def _displacement_mask(self, x: np.ndarray) -> np.ndarray:
        if x.ndim < 2:
            raise InvalidInputError(f"embodiment {self.embodiment.name!r} encodes displacement over a chunk: expected "
                                    f"(H, {self.embodiment.action_dim}) actions, got shape {x.shape}")
        return self._displacement

    @staticmethod
    def _steps(x: np.ndarray) -> np.ndarray:
        return np.arange(1, x.shape[-2] + 1)[:, None]
