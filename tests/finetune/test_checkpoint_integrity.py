"""Damaged checkpoints: found by checksum (or by loading), reported by file, kept, and skipped.

Each damage hits the newest checkpoint (step 9) of a finished 9-step run; resuming to step 12 must
say so in one line, keep the damaged files byte for byte (renamed ``step-00000009.damaged``), go back
to step 6 and repeat the losses of an uninterrupted 12-step run. Also: a state file that is damaged
although its checksum matches fails with the file's name and the fix, a run that diverges names the
checkpoint that really verifies, and resume is exact under 2-process DDP (gloo).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vla.finetune import checkpointing as ckpt
from vla.commands.finetune import main
from vla.finetune.metrics import read_metrics
from vla.finetune.testing import tiny_run_args, write_tiny_mixture
from vla.backbones.tiny import save_tiny_vlm
from vla.errors import CheckpointError

REPO = Path(__file__).resolve().parents[2]
ADAPTER = "adapter_model.safetensors"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels in-process and in the OMP_NUM_THREADS=1 subprocesses
    yield
    torch.set_num_threads(n)


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished 9-step run with checkpoints at 3, 6 and 9, and the losses of an uninterrupted 12-step run."""
    root = tmp_path_factory.mktemp("integrity")
    base, data = save_tiny_vlm(root / "base", "llava"), write_tiny_mixture(root / "data")
    opts = dict(checkpoint__every=3, checkpoint__keep_last=10, eval__trace_episodes=0)
    assert main(tiny_run_args(base, data, root / "run9", train__steps=9, **opts)) == 0
    assert main(tiny_run_args(base, data, root / "run12", train__steps=12, **opts)) == 0
    assert [s for s, _ in ckpt.complete_checkpoints(root / "run9")] == [3, 6, 9]
    return {"base": base, "data": data, "run9": root / "run9", "reference": _losses(root / "run12")}


def _rehash(path: Path) -> None:
    """Record the current contents in the marker: a file that was damaged before it was hashed."""
    marker = json.loads((path / ckpt.MARKER).read_text())
    marker["files"] = {f: {"size": (path / f).stat().st_size, "sha256": ckpt.sha256_file(path / f)}
                       for f in marker["files"]}
    (path / ckpt.MARKER).write_text(json.dumps(marker))


def _sizes_only(path: Path) -> None:
    """Rewrite the marker as the first format wrote it (sizes, no checksums)."""
    marker = json.loads((path / ckpt.MARKER).read_text())
    marker["files"] = {f: rec["size"] for f, rec in marker["files"].items()}
    marker["format"] = 1
    (path / ckpt.MARKER).write_text(json.dumps(marker))


def _header_length(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def truncated(data: bytes) -> bytes:
    return data[:len(data) // 2]


def zeroed_16k(data: bytes) -> bytes:
    start = _header_length(data)
    assert len(data) - start >= 16384, "the adapter is too small for this damage"
    return data[:start] + bytes(16384) + data[start + 16384:]


def corrupt_header(data: bytes) -> bytes:
    return b"\xff" * 8 + data[8:]  # a header length far beyond the file


def random_bytes(data: bytes) -> bytes:
    start = _header_length(data)
    noise = np.random.default_rng(0).integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    return data[:start] + noise


@pytest.mark.parametrize("damage, marker, reason", [
    (truncated, "sha256", rf"{ADAPTER}: [\d,]+ bytes, checkpoint.json recorded [\d,]+"),
    (zeroed_16k, "sha256", rf"{ADAPTER}: contents differ from the SHA-256 recorded in checkpoint.json"),
    (corrupt_header, "sha256", rf"{ADAPTER}: contents differ from the SHA-256 recorded in checkpoint.json"),
    (random_bytes, "sha256", rf"{ADAPTER}: contents differ from the SHA-256 recorded in checkpoint.json"),
    # Without checksums (checkpoints of the first marker format) loading the tensors still catches these two.
    (corrupt_header, "sizes", rf"{ADAPTER}: cannot be read \(SafetensorError"),
    (random_bytes, "sizes", rf"{ADAPTER}: \d+ tensor\(s\) hold NaN or inf"),
], ids=["truncated", "zeroed-16KiB", "corrupt-header", "random-bytes", "corrupt-header-no-checksums",
        "random-bytes-no-checksums"])
def test_damaged_checkpoint_is_reported_kept_and_skipped(runs, tmp_path, capsys, damage, marker, reason):
    run = tmp_path / "run"
    shutil.copytree(runs["run9"], run)
    newest = run / "checkpoints" / "step-00000009"
    damaged_bytes = damage((newest / ADAPTER).read_bytes())
    (newest / ADAPTER).write_bytes(damaged_bytes)
    if marker == "sizes":
        _sizes_only(newest)
    capsys.readouterr()

    assert main(["--resume", str(run), "--train.steps", "12"]) == 0
    err = capsys.readouterr().err
    line, = [ln for ln in err.splitlines() if ln.startswith("[finetune] damaged")]
    assert "step-00000009.damaged (" in line and f"resuming from {run / 'checkpoints' / 'step-00000006'} (step 6)" in line
    assert re.search(reason, line), line
    # Kept byte for byte, out of the way of the new step-9 checkpoint, which verifies.
    assert (run / "checkpoints" / "step-00000009.damaged" / ADAPTER).read_bytes() == damaged_bytes
    assert ckpt.verify(newest) == []
    resumed = _losses(run)
    np.testing.assert_allclose([resumed[s] for s in range(1, 13)], [runs["reference"][s] for s in range(1, 13)],
                               rtol=1e-6, atol=0)


def test_checkpoint_of_the_first_format_still_resumes_exactly(runs, tmp_path):
    """Sizes-only marker and one training_state.pt (optimizer, scheduler, RNG), as runs written before
    accelerate's save_state have them."""
    import random

    run = tmp_path / "run"
    shutil.copytree(runs["run9"], run)
    old = run / "checkpoints" / "step-00000006"
    py = random.getstate()
    np_state = np.random.get_state()
    torch.save({
        "optimizer": torch.load(old / "optimizer.bin", weights_only=True),
        "scheduler": torch.load(old / "custom_checkpoint_0.pkl", weights_only=True),
        "rng": {"python": [py[0], list(py[1]), py[2]], "torch": torch.get_rng_state(), "cuda": [],
                "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                          "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}},
    }, old / ckpt.TRAINING_STATE)
    for f in [*old.glob("*.bin"), *old.glob("*.pkl")]:
        f.unlink()
    marker = json.loads((old / ckpt.MARKER).read_text())
    marker["files"] = {f.name: f.stat().st_size for f in old.iterdir() if f.name != ckpt.MARKER}
    (old / ckpt.MARKER).write_text(json.dumps(marker))
    shutil.rmtree(run / "checkpoints" / "step-00000009")

    assert main(["--resume", str(run), "--train.steps", "12"]) == 0
    resumed = _losses(run)
    np.testing.assert_allclose([resumed[s] for s in range(7, 13)], [runs["reference"][s] for s in range(7, 13)],
                               rtol=1e-6, atol=0)


def test_no_intact_checkpoint_fails_and_deletes_nothing(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["run9"], run)
    for step in (3, 6, 9):
        f = run / "checkpoints" / f"step-{step:08d}" / ADAPTER
        f.write_bytes(truncated(f.read_bytes()))
    assert main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint to resume from: step-00000009 (adapter_model.safetensors: " in err
    assert "step-00000003 (" in err and "they are kept as they are" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step-{s:08d}" for s in (3, 6, 9)]


def test_state_file_damaged_before_hashing_is_named_with_the_fix(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["run9"], run)
    newest = run / "checkpoints" / "step-00000009"
    state = newest / "optimizer.bin"
    state.write_bytes(np.random.default_rng(1).integers(0, 256, state.stat().st_size, dtype=np.uint8).tobytes())
    _rehash(newest)  # the checksums match, so only loading can tell
    capsys.readouterr()
    assert main(["--resume", str(run), "--train.steps", "12"]) == 2
    err = capsys.readouterr().err
    assert f"cannot load {state} (" in err
    assert f"the checkpoint {newest} is damaged: rename or move it out of {newest.parent} and resume again" in err


def test_corrupt_safetensors_is_a_checkpoint_error_naming_the_file(runs, tmp_path):
    bad = tmp_path / "step-00000009" / ADAPTER
    bad.parent.mkdir()
    bad.write_bytes(corrupt_header((runs["run9"] / "checkpoints" / "step-00000009" / ADAPTER).read_bytes()))
    with pytest.raises(CheckpointError, match=rf"cannot read {bad} \(SafetensorError: .*rename or move it out of"):
        ckpt.load_safetensors(bad)


def test_divergence_names_the_newest_checkpoint_that_verifies(runs, tmp_path, capsys):
    run = tmp_path / "diverged"
    args = tiny_run_args(runs["base"], runs["data"], run, train__steps=8, checkpoint__every=1, train__lr=1e6,
                         train__warmup_steps=0, train__max_grad_norm=0, eval__trace_episodes=0)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the training loss is nan at step" in err
    saved = ckpt.complete_checkpoints(run)
    intact, damaged = ckpt.newest_intact(run)
    # The step that produced the NaN weights was checkpointed before the loss showed it: that one does not verify.
    assert damaged and "hold NaN or inf" in damaged[0][1][0] and intact is not None and intact != saved[-1][1]
    assert f"The newest checkpoint that verifies (checksums, finite weights) is {intact}." in err


def _launch_ddp(args: list[str]) -> str:
    """``vla finetune`` as 2 CPU processes (gloo), started the way torchrun starts them; returns rank 0's stderr."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "vla.cli", "finetune", *args], env=env, cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    return errs[0]


def test_resume_under_two_process_ddp_repeats_the_losses(runs, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _launch_ddp(tiny_run_args(runs["base"], runs["data"], full, train__steps=4, train__batch_size=2,
                              checkpoint__every=2, checkpoint__keep_last=10, eval__trace_episodes=0))
    saved = ckpt.complete_checkpoints(full)
    assert [s for s, _ in saved] == [2, 4]
    assert json.loads((saved[0][1] / ckpt.TRAINER_STATE).read_text())["world_size"] == 2
    assert {"random_states_0.pkl", "random_states_1.pkl", "optimizer.bin"} <= {p.name for p in saved[0][1].iterdir()}
    # As if killed right after step 2: the later checkpoint never existed.
    shutil.copytree(full, killed)
    shutil.rmtree(killed / "checkpoints" / "step-00000004")
    assert "resuming from" in _launch_ddp(["--resume", str(killed)])
    assert _losses(killed) == _losses(full) and sorted(_losses(full)) == [1, 2, 3, 4]
    from safetensors.torch import load_file

    a, b = load_file(full / ADAPTER), load_file(killed / ADAPTER)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
