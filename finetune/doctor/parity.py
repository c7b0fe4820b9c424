"""Parity: the same recorded frames through a live server and in-process (``vla eval --parity``).

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

from vla.errors import VLAError


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
