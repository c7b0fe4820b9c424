"""Which workers of this server have their model: small status files shared by the worker processes.

BentoML starts the workers as children of one process, so that process names the server. Each
worker writes ``<pid>.json`` (loading / ready / failed) into a directory named after the server's
PID *and start time*, so a reused PID never reads an old server's "ready". A worker that died
leaves a file whose process no longer runs, and is not counted as ready. A worker removes its file
when it shuts down, the last one the directory, and each server sweeps away the directories of
servers that are gone (killed without a shutdown).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import psutil

PREFIX = "vla-serve-"


def _started(pid: int) -> int | None:
    """The process's start time in ms (with its PID, a name no later process can reuse); None: not running."""
    try:
        return int(psutil.Process(pid).create_time() * 1000)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _alive(pid: int, started: int | None) -> bool:
    return pid > 0 and started is not None and _started(pid) == started


class WorkerBoard:
    def __init__(self, directory: Path, expected: int):
        self.directory, self.expected = directory, expected
        directory.mkdir(parents=True, exist_ok=True)
        self._me = {"pid": os.getpid(), "started": _started(os.getpid())}

    @classmethod
    def for_this_server(cls, expected: int) -> "WorkerBoard":
        root = Path(os.environ.get("VLA_STATE_DIR") or tempfile.gettempdir())
        server = os.getppid()
        sweep(root)
        return cls(root / f"{PREFIX}{server}-{_started(server)}", expected)

    def report(self, state: str) -> None:
        tmp = self.directory / f".{os.getpid()}.tmp"
        tmp.write_text(json.dumps({**self._me, "state": state}))
        tmp.replace(self.directory / f"{os.getpid()}.json")  # atomic: a reader never sees half a file

    def all_ready(self) -> bool:
        ready = 0
        for path in self.directory.glob("*.json"):
            try:
                status = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not _alive(int(status.get("pid", 0)), status.get("started")):
                path.unlink(missing_ok=True)  # a dead worker: its replacement will report itself
                continue
            ready += status.get("state") == "ready"
        return ready >= self.expected

    def close(self) -> None:
        """This worker is shutting down: remove its file, and the directory once it is empty."""
        (self.directory / f"{os.getpid()}.json").unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:  # other workers still report here
            pass


def sweep(root: Path) -> None:
    """Remove the boards of servers that no longer run."""
    for path in root.glob(f"{PREFIX}*"):
        pid, _, started = path.name.removeprefix(PREFIX).partition("-")
        if not pid.isdigit():
            continue
        # a name without a start time (older servers): only its PID can tell whether it still runs
        running = _alive(int(pid), int(started)) if started.isdigit() else psutil.pid_exists(int(pid))
        if not running:
            shutil.rmtree(path, ignore_errors=True)
