"""The on-disk format of training checkpoints: begin, commit, verify, the newest intact one, and reading
their files back. What goes into a checkpoint is the trainer's business (``finetune.trainer``); resuming
from one is the session's (``finetune.session``).

Layout: ``RUN_DIR/checkpoints/step-00000200/`` holds a loadable policy (adapter + projector,
processor, action tokenizer, vla_config.json), the training state written by accelerate's
``save_state`` (``optimizer.bin``, ``random_states_<rank>.pkl``, and the scheduler and data position
as ``custom_checkpoint_<i>.pkl``) and ``trainer_state.json`` (step, samples seen). Every process
writes into one hidden staging directory; the main process then fsyncs every file, writes
``checkpoint.json`` (the completion marker: size and SHA-256 of every file) and only then renames
the directory into place. A failed write (full disk, quota, read-only target) removes the staging
directory and raises a CheckpointError.

On resume every file is checked against the marker (and every ``.safetensors`` file must load with
finite values) before anything is read. A checkpoint that fails is never deleted: it is renamed
``step-N.damaged`` and the run continues from the newest one that passes. The state files are
pickles (``torch.load``): only files whose SHA-256 matches the marker we wrote are ever loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NoReturn

import numpy as np
import torch

from vla.errors import CheckpointError

CHECKPOINTS = "checkpoints"
MARKER = "checkpoint.json"
MARKER_FORMAT = 2  # 1: sizes only; 2: size and SHA-256 per file
TRAINER_STATE = "trainer_state.json"
TRAINING_STATE = "training_state.pt"  # optimizer/scheduler/RNG of format-1 checkpoints (before accelerate's save_state)
DAMAGED = ".damaged"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_STAGING = ".tmp-"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def staging_dir(run_dir: str | Path, step: int) -> Path:
    """The directory a checkpoint is written into before it is complete (the same on every process)."""
    return Path(run_dir) / CHECKPOINTS / f"{_STAGING}{step_dir_name(step)}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _marker_files(path: Path) -> dict[str, tuple[int, str | None]]:
    """name -> (size, sha256 or None) from the marker; raises OSError/ValueError/KeyError/TypeError."""
    files = json.loads((path / MARKER).read_text())["files"]
    return {name: (rec, None) if isinstance(rec, int) else (int(rec["size"]), rec.get("sha256"))
            for name, rec in files.items()}


def is_complete(path: Path) -> bool:
    """True when ``path`` has a marker and every file it lists exists with the recorded size (cheap: no hashing)."""
    try:
        return all((path / f).is_file() and (path / f).stat().st_size == size
                   for f, (size, _) in _marker_files(path).items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name)))


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints of a run, oldest first (sizes checked, not contents)."""
    return [(s, p) for s, p in _step_dirs(run_dir) if is_complete(p)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1][1] if done else None


# ------------------------------------------------------------------------------ verification
def _tensor_problem(path: Path) -> str | None:
    """Why the tensors of a safetensors file cannot be used (unreadable, NaN/inf), or None."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            bad = [k for k in f.keys() if (t := f.get_tensor(k)).is_floating_point() and not torch.isfinite(t).all()]
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        return f"cannot be read ({type(e).__name__}: {e})"
    return f"{len(bad)} tensor(s) hold NaN or inf (e.g. {bad[0]})" if bad else None


def verify(path: str | Path) -> list[str]:
    """What is wrong with a checkpoint directory, one entry per file ("NAME: reason"); empty when intact.

    Intact: the marker exists, every file it lists has the recorded size and SHA-256 (format-1 markers
    record sizes only), and every ``.safetensors`` file loads with finite values.
    """
    path = Path(path)
    if not (path / MARKER).is_file():
        return [f"{MARKER}: missing (the checkpoint was never completed)"]
    try:
        files = _marker_files(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{MARKER}: unreadable ({e})"]
    problems = []
    for name, (size, digest) in files.items():
        f = path / name
        if not f.is_file():
            problems.append(f"{name}: missing")
        elif (actual := f.stat().st_size) != size:
            problems.append(f"{name}: {actual:,} bytes, {MARKER} recorded {size:,}")
        elif digest is not None and sha256_file(f) != digest:
            problems.append(f"{name}: contents differ from the SHA-256 recorded in {MARKER}")
        elif name.endswith(".safetensors") and (why := _tensor_problem(f)):
            problems.append(f"{name}: {why}")
    return problems


def newest_intact(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, list[str]]]]:
    """The newest checkpoint that verifies, and the newer ones that did not (with their problems)."""
    damaged = []
    for _, path in reversed(_step_dirs(run_dir)):
        problems = verify(path)
        if not problems:
            return path, damaged
        damaged.append((path, problems))
    return None, damaged


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the step-N names (never listed, resumed from or pruned again)."""
    target = path.with_name(path.name + DAMAGED)
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{DAMAGED}-{n}")
    os.replace(path, target)
    return target


def describe_damage(damaged: list[tuple[Path, list[str]]]) -> str:
    return "; ".join(f"{p.name} ({', '.join(problems)})" for p, problems in damaged)


def damaged_fix(path: Path) -> str:
    return (f"the checkpoint {path} is damaged: rename or move it out of {path.parent} and resume again to "
            "continue from the checkpoint before it")


def remove_partial(run_dir: str | Path) -> list[Path]:
    """Delete staging directories left by a run killed while checkpointing; returns them.

    Only staging directories: a step-N directory is never deleted here, whatever its state.
    """
    root = Path(run_dir) / CHECKPOINTS
    gone = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_STAGING):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
    return gone


# ------------------------------------------------------------------------------ writing
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


def abandon(run_dir: str | Path, step: int, error: BaseException) -> NoReturn:
    """Remove the staging directory of a failed write and raise (I/O errors as a CheckpointError)."""
    shutil.rmtree(staging_dir(run_dir, step), ignore_errors=True)
    if not is_io_error(error):
        raise error
    previous = latest_checkpoint(run_dir)
    last = f"the last complete checkpoint is {previous}" if previous else "no complete checkpoint exists yet"
    raise CheckpointError(
        f"could not write the checkpoint of step {step} to {Path(run_dir) / CHECKPOINTS}: {describe_io_error(error)}. "
        f"Nothing half-written was kept; {last}. Free disk space (or fix the permissions) and continue with "
        f"`vla finetune --resume {Path(run_dir)}`"
    ) from error


def begin(run_dir: str | Path, step: int) -> Path:
    """Create the (empty) staging directory of ``step``; main process only, before anyone writes."""
    tmp = staging_dir(run_dir, step)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        previous = latest_checkpoint(run_dir)
        if previous is not None:
            check_free_space(tmp.parent, _dir_size(previous))
        shutil.rmtree(tmp, ignore_errors=True)  # left by a write that was killed
        tmp.mkdir()
    except CheckpointError:
        raise
    except Exception as e:
        abandon(run_dir, step, e)
    return tmp


def commit(run_dir: str | Path, step: int, meta: dict[str, Any], keep_last: int) -> Path:
    """Hash and fsync the staged files, write the marker last, rename into place and prune old checkpoints."""
    root = Path(run_dir) / CHECKPOINTS
    tmp, final = staging_dir(run_dir, step), root / step_dir_name(step)
    try:
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                _fsync(p)
                files[str(p.relative_to(tmp))] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
        marker = {"step": step, "format": MARKER_FORMAT, "files": files, **meta}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _fsync(tmp / MARKER)
        if final.exists():  # e.g. SIGTERM right after the periodic save of the same step
            if verify(final):
                set_aside(final)
            else:
                shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
    except Exception as e:
        abandon(run_dir, step, e)
    for _, old in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(run_dir: str | Path, step: int, write: Callable[[Path], None], meta: dict[str, Any],
                    keep_last: int) -> Path:
    """Write a checkpoint from one process: ``write(staging_dir)`` fills it, then marker, fsync, rename, prune."""
    tmp = begin(run_dir, step)
    try:
        write(tmp)
    except Exception as e:
        abandon(run_dir, step, e)
    return commit(run_dir, step, meta, keep_last)


# ------------------------------------------------------------------------------ reading
def load_safetensors(path: Path, fix: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a missing or corrupt file is a CheckpointError that ends with ``fix``
    (by default: set the damaged checkpoint aside and resume again)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}: {e}); {fix or damaged_fix(path.parent)}") from e


def unreadable_state_file(path: Path) -> Path | None:
    """The first accelerate state file of a checkpoint that does not load (to name it in an error), or None."""
    from accelerate.utils import load

    for f in sorted(path.glob("*.bin")) + sorted(path.glob("*.pkl")):
        try:
            load(f, map_location="cpu")
        except Exception:  # any unpickling failure: we only need the file's name
            return f
    return None


def read_trainer_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / TRAINER_STATE} ({e}); {damaged_fix(path)}") from e


def load_training_state(path: Path) -> dict[str, Any]:
    """The single-file optimizer/scheduler/RNG state of a format-1 checkpoint."""
    try:
        return torch.load(path / TRAINING_STATE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path / TRAINING_STATE} ({e}); {damaged_fix(path)}") from e


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved in a format-1 checkpoint's training_state.pt."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
