"""Atomic, resumable training checkpoints.

Layout: ``RUN_DIR/checkpoints/step-00000200/`` holds a loadable policy (adapter + projector,
processor, action tokenizer, vla_config.json), ``training_state.pt`` (optimizer, scheduler, RNG)
and ``trainer_state.json`` (step, data position). It is written into a hidden temporary
directory, every file is fsynced, ``checkpoint.json`` (the completion marker, listing every
file and its size) is written last, and only then is the directory renamed into place. A
directory without a valid marker is never used, and a failed write (full disk, quota, read-only
target) removes its temporary directory and raises a CheckpointError.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vla.errors import CheckpointError

CHECKPOINTS = "checkpoints"
MARKER = "checkpoint.json"
TRAINING_STATE = "training_state.pt"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def is_complete(path: Path) -> bool:
    """True when ``path`` has a marker and every file it lists exists with the recorded size."""
    marker = path / MARKER
    if not marker.is_file():
        return False
    try:
        files = json.loads(marker.read_text())["files"]
        return all((path / f).is_file() and (path / f).stat().st_size == size for f, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and is_complete(p):
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1][1] if done else None


def remove_partial(run_dir: str | Path) -> list[Path]:
    """Delete temporary directories left by a run killed while checkpointing; returns them."""
    root = Path(run_dir) / CHECKPOINTS
    gone = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-") or (p.is_dir() and _STEP_DIR.match(p.name) and not is_complete(p)):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
    return gone


def is_io_error(e: BaseException) -> bool:
    """OSError, or a writer's wrapper of one (safetensors' SafetensorError, torch's stream writer)."""
    if isinstance(e, OSError):
        return True
    text = str(e).lower()
    return type(e).__name__ == "SafetensorError" or (
        isinstance(e, RuntimeError) and any(w in text for w in ("write", "os error", "no space", "too large")))


def describe_io_error(e: BaseException) -> str:
    if isinstance(e, OSError):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return f"{e.strerror or e} [errno {e.errno}]{where}"
    return f"{type(e).__name__}: {e}"


def check_free_space(directory: Path, needed: int) -> None:
    """Fail before writing when the disk clearly cannot hold ``needed`` bytes (with 10% slack)."""
    free = shutil.disk_usage(directory).free
    if free < needed * 1.1:
        raise CheckpointError(
            f"not enough disk space for a checkpoint in {directory}: about {needed / 2**20:.1f} MiB needed, "
            f"{free / 2**20:.1f} MiB free. Free some space (or delete old runs) and resume with --resume"
        )


def save_checkpoint(run_dir: str | Path, step: int, write: Callable[[Path], None], meta: dict[str, Any],
                    keep_last: int) -> Path:
    """Write a checkpoint atomically: ``write(tmp_dir)`` fills it, then marker, fsync, rename, prune."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dir_name(step)
    previous = latest_checkpoint(run_dir)
    tmp = root / f".tmp-{step_dir_name(step)}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if previous is not None:
            check_free_space(root, _dir_size(previous))
        tmp.mkdir()
        write(tmp)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        for f in files:
            _fsync(tmp / f)
        (tmp / MARKER).write_text(json.dumps({"step": step, "files": files, **meta}, indent=2) + "\n")
        _fsync(tmp / MARKER)
        if final.exists():  # e.g. SIGTERM right after the periodic save of the same step
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_io_error(e):
            raise
        last = f"the last complete checkpoint is {previous}" if previous else "no complete checkpoint exists yet"
        raise CheckpointError(
            f"could not write the checkpoint of step {step} to {root}: {describe_io_error(e)}. Nothing half-written "
            f"was kept; {last}. Free disk space (or fix the permissions) and continue with "
            f"`vla finetune --resume {Path(run_dir)}`"
        ) from e
    for _, old in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------ RNG state
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/ints (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path / TRAINING_STATE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path / TRAINING_STATE} ({e}); the checkpoint is damaged: remove "
                              f"{path} to resume from the one before it") from e


def read_trainer_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / TRAINER_STATE} ({e}); the checkpoint is damaged") from e
