"""The wire shapes of an ActionChunk: the server's encoders (JSON and openpi) beside the client's decoder,
so both sides read one definition."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..types import ActionChunk


def chunk_json(chunk: ActionChunk, timings: dict[str, float]) -> dict[str, Any]:
    """The /predict (and /predict_batch item) body of one chunk; a non-finite uncertainty is null."""
    u = float(chunk.uncertainty)
    return {
        "actions": np.asarray(chunk.actions, dtype=np.float64).tolist(),
        "action_names": list(chunk.action_names),
        "embodiment": chunk.embodiment,
        "control_hz": float(chunk.control_hz),
        "uncertainty": u if math.isfinite(u) else None,
        "timings": timings,
    }


def chunk_openpi(chunk: ActionChunk, policy_timing: dict[str, float], server_timing: dict[str, float]) -> dict[str, Any]:
    """The openpi websocket reply: ``actions`` stays an array (msgpack-numpy), timings as openpi names them."""
    return {
        "actions": np.asarray(chunk.actions, dtype=np.float64),
        "action_names": list(chunk.action_names), "embodiment": chunk.embodiment,
        "control_hz": float(chunk.control_hz), "uncertainty": float(chunk.uncertainty),
        "policy_timing": policy_timing, "server_timing": server_timing,
    }


def chunk_from_json(body: dict[str, Any], roundtrip_ms: float) -> ActionChunk:
    """The client's reading of ``chunk_json``, with the measured round trip added to the timings."""
    body = dict(body)
    if body.get("uncertainty") is None:
        body["uncertainty"] = float("nan")
    chunk = ActionChunk.from_dict(body)
    chunk.timings["roundtrip_ms"] = roundtrip_ms
    return chunk
