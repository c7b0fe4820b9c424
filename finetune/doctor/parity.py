"""Parity: the same recorded frames through a live server and in-process (``vla eval --parity``), and
in fp32 against bf16 in-process (what ``--dtype auto`` serves on a CPU or GPU with bf16 units).

Without a URL the doctor starts ``vla serve --model MODEL`` on a free local port for the check
and stops it afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vla.errors import VLAError

DTYPE_PARITY_FRAMES = 16  # bf16 is emulated (slow) on CPUs without bf16 units: a few chunks tell enough


def dtype_parity(model: str, data: str, embodiment: str, episodes: list[int],
                 max_frames: int = DTYPE_PARITY_FRAMES) -> dict[str, Any]:
    """The same recorded frames through the checkpoint in fp32 and in bf16: token agreement and chunk L1."""
    from vla.data.lerobot import LeRobotDataset
    from vla.evaluation.open_loop import _frames
    from vla.policy import VLAPolicy
    from vla.types import PredictRequest

    ds = LeRobotDataset(data)
    policies = {d: VLAPolicy.from_pretrained(model, dtype=d) for d in ("float32", "bfloat16")}
    emb = policies["float32"].embodiment(embodiment)
    codec = policies["float32"].codec(embodiment)
    stride = max(1, sum(ds.episode(i).length for i in episodes) // max_frames)
    observations = [o for _, _, obs, _ in _frames(ds, episodes, stride, emb.cameras, emb.name,
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
        proc, server_url, log = _start(model, Path(tmp))
        try:
            _wait_ready(proc, server_url, log, ready_timeout_s)
            return check(server_url)
        finally:
            _stop(proc)


def _start(model: str, root: Path) -> tuple[subprocess.Popen, str, Path]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = root / "server.log"
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    cmd = [sys.executable, "-m", "vla.serving.cli", "--model", model, "--port", str(port), "--workers", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    why = f"exited with code {proc.returncode}" if proc.poll() is not None else f"not ready after {timeout_s:.0f} s"
    raise VLAError(f"the parity server (`vla serve`) {why}:\n{log.read_text()[-2000:]}\n"
                   "Fix the server error above, or pass --server URL of a server you started.")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
