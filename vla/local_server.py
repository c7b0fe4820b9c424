"""`vla serve` on 127.0.0.1 as a child process: start it, wait for /readyz, stop it.

The one helper the doctor's parity check, the benchmarks and the tests start servers with. The server
runs in its own session (its PID names its process group) and logs to a file the errors quote.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from .errors import VLAError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``python -m vla.cli serve [--model MODEL] --port P ARGS`` (``vla serve``) with BentoML's state under ``root``.

    ``model=None`` serves the shipped default policy. ``cwd`` and ``env`` (added to this process's
    environment) let a caller run another checkout. Use as a context manager, or ``start`` /
    ``wait_ready`` / ``stop``.
    """

    def __init__(self, model: str | os.PathLike | None, root: str | os.PathLike, args: Sequence[str] = (), *,
                 cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None):
        self.root = Path(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.root / "server.log"
        model_args = [] if model is None else ["--model", str(model)]
        self.cmd = [sys.executable, "-m", "vla.cli", "serve", *model_args, "--port", str(self.port), *args]
        self.cwd, self.env = cwd, {"BENTOML_HOME": str(self.root / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
                                   **(env or {})}
        self.proc: subprocess.Popen | None = None

    @classmethod
    def attached(cls, url: str, pid: int | subprocess.Popen, log: str | os.PathLike) -> "LocalServer":
        """A server started elsewhere (its URL and log known): to wait for, or to stop.

        ``pid``: its ``Popen`` when this process started it (so it is reaped), else its PID.
        """
        server = cls.__new__(cls)
        server.url, server.port, server.log = url, int(url.rsplit(":", 1)[1]), Path(log)
        server.root, server.cmd, server.cwd, server.env = Path(log).parent, [], None, {}
        server.proc = pid if isinstance(pid, subprocess.Popen) else _Foreign(pid)
        return server

    def start(self) -> "LocalServer":
        """Start the server and return at once (it boots while the caller does other work)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env={**os.environ, **self.env}, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 240.0) -> str:
        """Block until /readyz answers 200 and return the URL; VLAError with the log's tail if it never does."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        why = (f"exited with code {self.proc.returncode}" if self.proc.poll() is not None
               else f"was not ready after {timeout_s:.0f} s")
        raise VLAError(f"`vla serve` on port {self.port} {why}:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> bool:
        """SIGTERM to the CLI alone, as a user's ``kill PID``; True when that stopped its whole process group.

        Whatever is left after ``timeout_s`` is killed (SIGKILL to the group) and False returned.
        """
        if self.proc is None or self.proc.poll() is not None and not self.group_alive():
            return True
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        try:
            self.proc.wait(timeout=timeout_s)
            while self.group_alive() and time.monotonic() < deadline:
                time.sleep(0.2)
        except subprocess.TimeoutExpired:
            pass
        if not self.group_alive():
            return True
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return False

    def group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else "(no log)"

    def __enter__(self) -> "LocalServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Foreign:
    """The part of ``subprocess.Popen`` ``LocalServer`` uses, for a process this one did not start."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            self.returncode = -1
        return self.returncode

    def send_signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.2)
        return self.returncode
