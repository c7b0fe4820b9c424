"""Parity: the same recorded frames through a live server and in-process (``vla eval --parity``), and
in fp32 against bf16 in-process (what ``--dtype auto`` serves on a CPU or GPU with bf16 units).

Without a URL the doctor starts ``vla serve --model MODEL`` on a free local port for the check
and stops it afterwards.
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np

from vla.errors import VLAError
from vla.local_server import LocalServer

DTYPE_PARITY_FRAMES = 16  # bf16 is emulated (slow) on CPUs without bf16 units: a few chunks tell enough


def dtype_parity(model: str, data: str, embodiment: str, episodes: list[int],
                 max_frames: int = DTYPE_PARITY_FRAMES) -> dict[str, Any]:
    """The same recorded frames through the checkpoint in fp32 and in bf16: token agreement and chunk L1."""
    from vla.data.lerobot import LeRobotDataset
    from vla.evaluation.open_loop import recorded_frames
    from vla.policy import VLAPolicy
    from vla.types import PredictRequest

    ds = LeRobotDataset(data)
    policies = {d: VLAPolicy.from_pretrained(model, dtype=d) for d in ("float32", "bfloat16")}
    emb = policies["float32"].embodiment(embodiment)
    codec = policies["float32"].codec(embodiment)
    stride = max(1, sum(ds.episode(i).length for i in episodes) // max_frames)
    observations = [o for _, _, obs, _ in recorded_frames(ds, episodes, stride, emb.cameras, emb.name,
                                                           policies["float32"].config.use_state) for o in obs][:max_frames]
    chunks = {d: [p.predict_batch([PredictRequest(o["images"], o["instruction"], o["embodiment"], o.get("state"))])[0]
                  for o in observations] for d, p in policies.items()}
    a, b = ([codec.normalize(c.actions) for c in chunks[d]] for d in ("float32", "bfloat16"))
    agree = [np.mean(np.asarray(codec.encode(p.actions)) == np.asarray(codec.encode(q.actions)))
             for p, q in zip(*chunks.values())]
    return {"frames": len(observations), "token_agreement": float(np.mean(agree)),
            "l1_normalized": float(np.mean([np.abs(x - y).mean() for x, y in zip(a, b)])),
            "l1": float(np.mean([np.abs(p.actions - q.actions).mean() for p, q in zip(*chunks.values())]))}


def server_parity(model: str, data: str, embodiment: str, *, url: str | None = None, episodes: int = 1,
                  ready_timeout_s: float = 180.0) -> dict[str, Any]:
    from vla.evaluation.open_loop import parity_check
    from vla.evaluation.policies import PolicySource

    def check(server_url: str) -> dict[str, Any]:
        return parity_check(data, PolicySource("server", model=model, url=server_url), PolicySource("model", model=model),
                            embodiment=embodiment, episodes=episodes)

    if url:
        return check(url)
    with tempfile.TemporaryDirectory(prefix="vla-doctor-") as tmp:
        server = LocalServer(model, tmp, ["--workers", "1"]).start()
        try:
            try:
                server.wait_ready(ready_timeout_s)
            except VLAError as e:
                raise VLAError(f"the parity server: {e}\nFix the server error above, or pass --server URL of a "
                               "server you started.") from None
            return check(server.url)
        finally:
            server.stop()
