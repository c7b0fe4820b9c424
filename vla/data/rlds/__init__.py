"""RLDS / Open X-Embodiment episodes read from TFRecord files, without TensorFlow."""

from __future__ import annotations

from .reader import BUILTIN_MAPPINGS, RLDSDataset, RLDSEpisode, RLDSMapping

__all__ = ["BUILTIN_MAPPINGS", "RLDSDataset", "RLDSEpisode", "RLDSMapping"]
