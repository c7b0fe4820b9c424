"""The training loop: optimizer steps (``update_policy``), logging, validation, saving checkpoints, and
stopping cleanly on SIGINT/SIGTERM or a diverged loss.

Determinism: the data order is a pure function of (seed, position) (``vla.data.mixture``), the
torch RNG is re-seeded from (seed, step, micro-step, rank) before every forward (dropout), and
vision features are computed one frame at a time, so a resumed run repeats the losses of an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from vla.configuration import CONFIG_NAME
from vla.errors import VLAError

from . import checkpointing as ckpt
from .data import make_batch
from .lora import set_train_mode
from .metrics import MetricsLog, evaluate
from .outputs import write_outputs
from .session import Session


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + micro * 104_729 + rank * 15_485_863) % (2**63 - 1)


class Signals:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop after the current optimizer step."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum
        print(f"\n[finetune] {signal.Signals(signum).name} received: saving a checkpoint after this step "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class TrainingDiverged(VLAError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the checkpoint that can be trusted."""


@dataclass
class StepMetrics:
    """What optimizer steps measured; ``+`` sums a logging window of them."""

    loss: float = 0.0  # summed over steps (the mean over micro-batches of each)
    correct: int = 0
    n_tokens: int = 0  # labelled action tokens
    tokens: int = 0  # all tokens processed
    samples: int = 0
    grad_norm: float = float("nan")  # of the last step
    steps: int = 0

    def __add__(self, other: "StepMetrics") -> "StepMetrics":
        return StepMetrics(self.loss + other.loss, self.correct + other.correct, self.n_tokens + other.n_tokens,
                           self.tokens + other.tokens, self.samples + other.samples, other.grad_norm,
                           self.steps + other.steps)


def forward(session: Session, samples, step: int, micro: int):
    """(loss, scored tokens, correct tokens, tokens processed) of one micro-batch."""
    s = session
    torch.manual_seed(step_seed(s.cfg.seed, step, micro, s.accelerator.process_index))
    batch = make_batch(samples, s.policy, s.padded_steps)
    with s.cache.keys(batch["keys"]) if s.cache else nullcontext():
        loss, n, correct = s.wrapped(batch["inputs"], batch["appended"], batch["labels"])
    tokens = int(batch["inputs"]["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
    return loss, n, correct, tokens


def update_policy(session: Session, batches: Iterator, step: int) -> StepMetrics:
    """One optimizer step: ``train.grad_accum`` micro-batches forward and backward, clip, step, schedule."""
    s, train, acc = session, session.cfg.train, session.accelerator
    metrics = StepMetrics(steps=1)
    for micro in range(train.grad_accum):
        samples = next(batches)
        with acc.accumulate(s.wrapped):
            loss, n, correct, tokens = forward(s, samples, step, micro)
            acc.backward(loss)
            if acc.sync_gradients and train.max_grad_norm > 0:
                metrics.grad_norm = float(acc.clip_grad_norm_(s.model.parameters(), train.max_grad_norm))
            s.optimizer.step()
            if acc.sync_gradients:
                s.scheduler.step()
            s.optimizer.zero_grad()
        metrics.loss += float(loss.detach()) / train.grad_accum
        metrics.correct += int(correct)
        metrics.n_tokens += int(n)
        metrics.tokens += tokens
        metrics.samples += len(samples)
    return metrics


class Trainer:
    """Trains a built Session: ``train`` (the loop), ``evaluate`` (validation), and saving the policy and
    checkpoints in the format of ``finetune.checkpointing``."""

    def __init__(self, session: Session):
        self.session = session
        self.cfg = session.cfg

    def train(self, signals: Signals) -> tuple[int, int, str]:
        """Train to ``train.steps``; (exit code, step reached, message)."""
        s, cfg, acc = self.session, self.cfg, self.session.accelerator
        self.metrics = MetricsLog(s.run_dir, acc, enabled=acc.is_main_process)
        if acc.log_with:
            acc.init_trackers(s.run_dir.name, config=_flat(cfg.to_dict()))
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.steps, initial=s.start_step, disable=not (acc.is_main_process and cfg.log.progress),
                   desc="finetune", unit="step", dynamic_ncols=True)
        s.started = time.perf_counter()
        step, batches = s.start_step, iter(s.loader)
        window, window_start = StepMetrics(), time.perf_counter()
        last_val: dict[str, dict[str, float]] = {}
        while step < cfg.train.steps:
            metrics = update_policy(s, batches, step)
            if not math.isfinite(metrics.loss):
                raise TrainingDiverged(self._divergence_message(metrics.loss, step + 1))
            step += 1
            s.samples_seen += s.per_step
            bar.update(1)
            window += metrics
            final = step == cfg.train.steps
            if step % cfg.log.every == 0 or final:
                record = self._log_train(step, window, time.perf_counter() - window_start)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                samples_s=f"{record['samples_per_s']:.1f}")
                window, window_start = StepMetrics(), time.perf_counter()
            if cfg.eval.every and step % cfg.eval.every == 0 and not final:
                last_val = self.evaluate(step)
                window_start = time.perf_counter()  # validation time is not training throughput
            if signals.received is not None and not final:
                path = self.save_checkpoint(step, interrupted=True)
                bar.close()
                code = 130 if signals.received == signal.SIGINT else 143
                msg = (f"interrupted at step {step}/{cfg.train.steps}; checkpoint saved to {path}. "
                       f"Continue with: vla finetune --resume {s.run_dir}")
                s.say(f"[finetune] {msg}")
                return code, step, msg
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and not final:
                self.save_checkpoint(step)
        bar.close()
        if step > s.start_step or not (s.run_dir / CONFIG_NAME).is_file():
            last_val = self.evaluate(step) if s.data.val else {}
            self.save_checkpoint(step)
            write_outputs(s, self.save_policy, step, last_val)
        else:
            s.say(f"[finetune] the run is already complete at step {step}")
        acc.end_training()
        return 0, step, ""

    def _log_train(self, step: int, window: StepMetrics, seconds: float) -> dict[str, Any]:
        s, acc = self.session, self.session.accelerator
        if acc.num_processes > 1:  # every rank logs the same, all-process numbers
            keys = ("loss", "correct", "n_tokens", "samples", "tokens")
            summed = acc.reduce(torch.tensor([float(getattr(window, k)) for k in keys], device=acc.device), "sum")
            window = dataclasses.replace(window, **dict(zip(keys, summed.cpu().tolist())))
            window.loss /= acc.num_processes
        dt = max(seconds, 1e-9)
        record = {"step": step, "split": "train", "loss": window.loss / window.steps,
                  "token_accuracy": window.correct / max(window.n_tokens, 1),
                  "lr": s.scheduler.get_last_lr()[0], "grad_norm": window.grad_norm,
                  "samples_per_s": window.samples / dt, "tokens_per_s": window.tokens / dt,
                  "samples_seen": s.samples_seen, "elapsed_s": s.elapsed_s()}
        self.metrics.log(record)
        return record

    def evaluate(self, step: int) -> dict[str, dict[str, float]]:
        s = self.session
        if not s.data.val:
            return {}
        set_train_mode(s.model, False, self.cfg.lora.train_vision)
        s.data.mixture.eval()
        try:
            results = evaluate(s.policy, s.loss_module, s.data.val, max_samples=self.cfg.eval.max_samples,
                               batch_size=self.cfg.eval.batch_size, padded_steps=s.padded_steps, cache=s.cache,
                               autocast=s.accelerator.autocast)
        finally:
            set_train_mode(s.model, True, self.cfg.lora.train_vision)
            s.data.mixture.train()
        for emb, m in results.items():
            self.metrics.log({"step": step, "split": "val", "embodiment": emb, **m})
        return results

    # ------------------------------------------------------------------------------ saving
    def save_policy(self, directory: Path, step: int, extra: dict | None = None) -> None:
        """Adapter (+ projector, token rows), processor, action tokenizer and vla_config.json."""
        s = self.session
        state = None
        if s.fsdp:  # gather the sharded weights on the main process
            full = s.accelerator.get_state_dict(s.wrapped)
            state = {k.removeprefix("model."): v for k, v in full.items()}
        if s.accelerator.is_main_process:
            config = dataclasses.replace(s.policy.config, training=s.provenance(step, extra or {}))
            s.model.save_pretrained(directory, state_dict=state) if state is not None else s.model.save_pretrained(directory)
            s.policy.processor.save_pretrained(directory)
            s.tokenizer.save(directory)
            config.save(directory)

    def save_checkpoint(self, step: int, interrupted: bool = False) -> Path | None:
        """Every process writes its part into the staging directory; the main process verifies and commits it."""
        s = self.session
        acc = s.accelerator
        main = acc.is_main_process
        staging = ckpt.begin(s.run_dir, step) if main else ckpt.staging_dir(s.run_dir, step)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(staging))
            self.save_policy(staging, step)
            if main:
                trainer = {"step": step, "samples_seen": s.samples_seen, "world_size": acc.num_processes,
                           "distributed_type": acc.distributed_type.name, "elapsed_s": s.elapsed_s(),
                           "seed": s.cfg.seed}
                (staging / ckpt.TRAINER_STATE).write_text(json.dumps(trainer, indent=2) + "\n")
        except Exception as e:
            if main:
                ckpt.abandon(s.run_dir, step, e)
            raise
        acc.wait_for_everyone()
        path = None
        if main:
            path = ckpt.commit(s.run_dir, step, {"interrupted": interrupted, "saved_at": ckpt.utc_now()},
                               s.cfg.checkpoint.keep_last)
        acc.wait_for_everyone()
        return path

    def _divergence_message(self, loss: float, step: int) -> str:
        """What went wrong and which checkpoint still verifies (checked now, not assumed)."""
        s = self.session
        text = f"the training loss is {loss} at step {step}"
        if s.resumed_from and step == s.start_step + 1:
            text += f", the first step after resuming from {s.resumed_from}: that checkpoint's weights may be the cause"
        intact, damaged = ckpt.newest_intact(s.run_dir)
        if intact is not None:
            text += f". The newest checkpoint that verifies (checksums, finite weights) is {intact}"
        elif damaged:
            text += f". No checkpoint of this run verifies: {ckpt.describe_damage(damaged)}"
        else:
            text += ". No checkpoint has been written yet"
        return text + (". Lower train.lr or check the data, then start a new run (to continue from a checkpoint: "
                       "vla export CHECKPOINT --merge --out DIR, then --base DIR)")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as flat ``section.key`` values, for the experiment trackers."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out
