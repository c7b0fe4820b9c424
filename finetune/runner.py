"""``run(cfg)``: one fine-tuning run from its config: fresh, resumed from the newest intact
checkpoint, or planned (``dry_run``). It validates everything before the run directory is created,
then hands over to the parts that do the work:

- session.py: build the run (accelerator, data, tokenizer, policy + LoRA, optimizer, loader, vision cache),
  resume it from a checkpoint, and the provenance the policy carries;
- trainer.py: the training loop (``update_policy``: one optimizer step; validation, signals, saving);
- checkpointing.py: the on-disk format of checkpoints (begin, commit, verify, the newest intact one);
- planner.py: the dry run's plan, timing and memory estimate;
- outputs.py: the finished run's adapter, plots, examples and model card.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from vla.errors import CheckpointError, ConfigError

from . import checkpointing as ckpt
from .config import FinetuneConfig
from .metrics import truncate_metrics
from .planner import plan, time_steps
from .session import Session
from .trainer import Signals, Trainer

CONFIG_FILE = "config.yaml"


@dataclasses.dataclass
class Outcome:
    """What ``run`` returns: exit code and where things are."""

    code: int
    run_dir: Path | None
    step: int = 0
    plan: dict[str, Any] | None = None
    message: str = ""


def check_run_dir(cfg: FinetuneConfig) -> Path:
    """The run directory must be new (or empty): refuse before any work is done."""
    if not cfg.out:
        raise ConfigError("no run directory: pass --out RUN_DIR")
    run_dir = Path(cfg.out)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(f"{run_dir} exists and is not empty: choose another --out, or continue that run with "
                          f"--resume {run_dir}")
    return run_dir


def prepare_run_dir(cfg: FinetuneConfig) -> Path:
    run_dir = check_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)
    return run_dir


def write_config(cfg: FinetuneConfig, run_dir: Path) -> None:
    tmp = run_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(cfg.dump())
    os.replace(tmp, run_dir / CONFIG_FILE)


def run(cfg: FinetuneConfig, *, resume: bool = False, dry_run: bool = False, dry_run_steps: int = 3,
        log: Callable[[str], None] | None = None) -> Outcome:
    """Train (or resume, or plan) a run; returns an Outcome (exit code 0 on success)."""
    cfg.validate()
    resume_from = None
    damaged: list[tuple[Path, list[str]]] = []
    if resume:
        run_dir = Path(cfg.out)
        if int(os.environ.get("RANK", "0")) == 0:
            ckpt.remove_partial(run_dir)
        resume_from, damaged = ckpt.newest_intact(run_dir)
        if resume_from is None:
            found = f": {ckpt.describe_damage(damaged)}; they are kept as they are" if damaged else " (there is none)"
            raise CheckpointError(f"{run_dir} has no intact checkpoint to resume from{found}. Restore the damaged "
                                  "files, or start the run again with a new --out")
        truncate_metrics(run_dir, ckpt.read_trainer_state(resume_from)["step"])
    elif not dry_run and int(os.environ.get("RANK", "0")) == 0:
        check_run_dir(cfg)
    session = Session(cfg, resume_from=resume_from, dry_run=dry_run, log=log)
    session.build()  # everything is validated (config, base, data, model) before the run directory is created
    trainer = Trainer(session)
    acc = session.accelerator
    if not resume and not dry_run:
        if acc.is_main_process:
            prepare_run_dir(cfg)
        acc.wait_for_everyone()
    if dry_run:
        return Outcome(0, None, plan=plan(session) | {"timing": time_steps(session, dry_run_steps)})
    if resume_from is not None:
        if damaged:  # renamed only now, once every process has chosen the same checkpoint
            acc.wait_for_everyone()
            if acc.is_main_process:
                kept = [(ckpt.set_aside(p), problems) for p, problems in damaged]
                session.say(f"[finetune] damaged checkpoint(s) kept, renamed and skipped: {ckpt.describe_damage(kept)}; "
                            f"resuming from {resume_from} (step {session.start_step})")
            acc.wait_for_everyone()
        else:
            session.say(f"[finetune] resuming from {resume_from} (step {session.start_step})")
        if acc.is_main_process:  # one writer: under DDP every rank would race for the same temp file
            write_config(cfg, Path(cfg.out))
        acc.wait_for_everyone()
    with Signals() as signals:
        code, step, message = trainer.train(signals)
    return Outcome(code, session.run_dir, step, message=message)
