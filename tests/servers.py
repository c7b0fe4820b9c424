"""A real `vla serve` on 127.0.0.1 for tests: bounded in time, stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def predict_latencies(url: str, observation: dict, n: int, stop=None, headers: dict | None = None) -> list[float]:
    """Seconds per JSON /predict of one robot: at least ``n`` calls, and on until ``stop`` (an Event) is set."""
    out = []
    body = json.dumps(observation).encode()
    with httpx.Client(base_url=url, headers=headers or {}, timeout=60) as c:
        while len(out) < n or (stop is not None and not stop.is_set()):
            t0 = time.perf_counter()
            r = c.post("/predict", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            out.append(time.perf_counter() - t0)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt: Path | None, root: Path, *args: str) -> tuple[subprocess.Popen, str, Path]:
    """Start the server in its own session (it boots while the caller does other work).

    ``ckpt=None`` starts it without ``--model``: the shipped default policy.
    """
    port, log = free_port(), root / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    model = [] if ckpt is None else ["--model", str(ckpt)]
    cmd = [sys.executable, "-m", "vla.serving.cli", *model, "--port", str(port), "--max-latency-ms", "30000", *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


def stop_server(proc: subprocess.Popen) -> None:
    # as a user would (`kill PID`): SIGTERM to the CLI alone must stop the whole server
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
        deadline = time.monotonic() + 20
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    except subprocess.TimeoutExpired:
        pass
    if _group_alive(proc.pid):  # the CLI ran in its own session: its PID names the group
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        pytest.fail("SIGTERM to `vla serve` left server processes running")


_STARTED: dict[int, subprocess.Popen] = {}  # servers this process started, by PID


class SharedServer:
    """One `vla serve` of the shipped default policy for the whole test run, shared by the xdist workers.

    The first worker that needs it starts it (under a file lock in the run's shared temp root) and
    records its PID; the others reuse it; ``stop`` ends it once, when the run finishes.
    """

    def __init__(self, root: Path):
        self.root, self.record = root, root / "default-server.json"

    def url(self) -> str:
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "default-server.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.record.is_file():
                home = self.root / "default-server"
                home.mkdir(exist_ok=True)
                proc, url, log = start_server(None, home)
                _STARTED[proc.pid] = proc
                self.record.write_text(json.dumps({"pid": proc.pid, "url": url, "log": str(log)}))
        info = json.loads(self.record.read_text())
        wait_ready(_STARTED.get(info["pid"]) or _Pid(info["pid"]), info["url"], Path(info["log"]))
        return info["url"]

    def stop(self) -> None:
        """SIGTERM to the CLI alone must stop the whole server (as in ``stop_server``)."""
        if not self.record.is_file():
            return
        pid = json.loads(self.record.read_text())["pid"]
        self.record.unlink()
        if pid in _STARTED:  # started by this very process: stop it as its parent
            stop_server(_STARTED.pop(pid))
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 40
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pid):
            os.killpg(pid, signal.SIGKILL)
            raise RuntimeError("SIGTERM to the shared `vla serve` left server processes running")


class _Pid:
    """The part of ``subprocess.Popen`` that ``wait_ready`` uses, for a server another process started."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if _group_alive(self.pid):
            return None
        self.returncode = -1
        return self.returncode


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
