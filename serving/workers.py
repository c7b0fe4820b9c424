"""Which workers of this server have their model: small status files shared by the worker processes.

BentoML starts the workers as children of one process, so its PID names the server. Each worker
writes ``<pid>.json`` (loading / ready / failed) into a directory named after that parent; a
worker that died leaves a file whose PID no longer runs, and is not counted as ready.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class WorkerBoard:
    def __init__(self, directory: Path, expected: int):
        self.directory, self.expected = directory, expected
        directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_this_server(cls, expected: int) -> "WorkerBoard":
        root = os.environ.get("VLA_STATE_DIR") or tempfile.gettempdir()
        return cls(Path(root) / f"vla-serve-{os.getppid()}", expected)

    def report(self, state: str) -> None:
        tmp = self.directory / f".{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "state": state}))
        tmp.replace(self.directory / f"{os.getpid()}.json")  # atomic: a reader never sees half a file

    def all_ready(self) -> bool:
        ready = 0
        for path in self.directory.glob("*.json"):
            try:
                status = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not _alive(int(status.get("pid", 0))):
                path.unlink(missing_ok=True)  # a dead worker: its replacement will report itself
                continue
            ready += status.get("state") == "ready"
        return ready >= self.expected


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
