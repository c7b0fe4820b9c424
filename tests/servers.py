"""A real `vla serve` on 127.0.0.1 for tests (vla.local_server.LocalServer): bounded in time, stopped by PID."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from vla.errors import VLAError
from vla.local_server import LocalServer, free_port  # noqa: F401  free_port: for the tests

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


_SERVERS: dict[int, LocalServer] = {}  # the servers this process started, by PID


def start_server(ckpt: Path | None, root: Path, *args: str) -> tuple[subprocess.Popen, str, Path]:
    """Start the server in its own session (it boots while the caller does other work).

    ``ckpt=None`` starts it without ``--model``: the shipped default policy.
    """
    server = LocalServer(ckpt, root, ["--max-latency-ms", "30000", *args], cwd=REPO,
                         env={"HF_HUB_OFFLINE": "1"}).start()
    _SERVERS[server.proc.pid] = server
    return server.proc, server.url, server.log


def wait_ready(proc, url: str, log: Path, timeout_s: float = 240) -> None:
    server = _SERVERS.get(proc.pid) or LocalServer.attached(url, _own(proc), log)
    try:
        server.wait_ready(timeout_s)
    except VLAError as e:
        pytest.fail(str(e))


def stop_server(proc) -> None:
    # as a user would (`kill PID`): SIGTERM to the CLI alone must stop the whole server
    server = _SERVERS.pop(proc.pid, None) or LocalServer.attached("http://127.0.0.1:0", _own(proc), "server.log")
    if not server.stop():
        pytest.fail("SIGTERM to `vla serve` left server processes running")


def _own(proc) -> subprocess.Popen | int:
    """A server this process started elsewhere (a README line's Popen) is waited on as a child; others by PID."""
    return proc if isinstance(proc, subprocess.Popen) else proc.pid


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
                proc, url, log = start_server(None, self.root / "default-server")
                self.record.write_text(json.dumps({"pid": proc.pid, "url": url, "log": str(log)}))
        info = json.loads(self.record.read_text())
        wait_ready(_Pid(info["pid"]), info["url"], Path(info["log"]))
        return info["url"]

    def stop(self) -> None:
        if not self.record.is_file():
            return
        pid = json.loads(self.record.read_text())["pid"]
        self.record.unlink()
        stop_server(_Pid(pid))


class _Pid:
    def __init__(self, pid: int):
        self.pid = pid
