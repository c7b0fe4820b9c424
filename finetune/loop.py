"""The training run: build data, tokenizer and model, then an accelerate loop with evaluation,
checkpoints, exact resume, signal handling and the run's outputs (plots, model card, final adapter).

Determinism: the data order is a pure function of (seed, position) (``vla.data.mixture``), the
torch RNG is re-seeded from (seed, step, micro-step, rank) before every forward (dropout), and
vision features are computed one frame at a time, so a resumed run repeats the losses of an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
import uuid
from contextlib import nullcontext
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vla.action_tokenizers import load_action_tokenizer, make_action_tokenizer, report as tokenizer_report
from vla.checkpoint import CONFIG_NAME
from vla.errors import CheckpointError, ConfigError, VLAError
from vla.policy import VLAPolicy

from . import checkpointing as ckpt
from .config import FinetuneConfig
from .data import TrainingData, action_chunks, build_data, frame_keys, make_batch, requests, resolve_padded_steps
from .metrics import MetricsLog, action_traces, evaluate, read_metrics, truncate_metrics
from .model import (ActionLoss, apply_lora, check_base, image_features, install_vision_cache, is_vla_checkpoint,
                    load_base_checkpoint, load_quantized, parameter_groups, require_4bit, set_train_mode)

CONFIG_FILE = "config.yaml"
EXAMPLES_DIR = "examples"


def _versions() -> dict[str, str | None]:
    out = {}
    for dist in ("vla", "torch", "transformers", "peft", "accelerate"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def resolve_precision(cfg: FinetuneConfig, use_cuda: bool) -> str:
    """bf16 autocast on GPUs that support it; fp32 on the CPU unless asked (see benchmarks/README.md)."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    return "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "fp32"


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + micro * 104_729 + rank * 15_485_863) % (2**63 - 1)


class Signals:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop after the current optimizer step."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "Signals":
        if threading_main():
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


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class TrainingDiverged(VLAError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the checkpoint that can be trusted."""


class DataPosition:
    """The sampler's position as a checkpointable object for accelerate's ``register_for_checkpointing``.

    The DataLoader prefetches, so the sampler's own position runs ahead of training: the state saved
    is the position after the samples the optimizer steps have consumed.
    """

    def __init__(self, sampler, consumed: Callable[[], int]):
        self.sampler, self.consumed = sampler, consumed

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict(consumed=self.consumed())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


@dataclasses.dataclass
class Outcome:
    """What ``run`` returns: exit code and where things are."""

    code: int
    run_dir: Path | None
    step: int = 0
    plan: dict[str, Any] | None = None
    message: str = ""


class Run:
    """One fine-tuning run (fresh, resumed or dry)."""

    def __init__(self, cfg: FinetuneConfig, *, resume_from: Path | None = None, dry_run: bool = False,
                 dry_run_steps: int = 3, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.dry_run = dry_run
        self.dry_run_steps = dry_run_steps
        self.resume_from = resume_from
        self.run_dir = Path(cfg.out) if cfg.out else None
        self._log = log or (lambda s: print(s, file=sys.stderr, flush=True))

    def say(self, text: str) -> None:
        if self.accelerator is None or self.accelerator.is_main_process:
            self._log(text)

    accelerator = None

    # ------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        if cfg.lora.quantize == "4bit":
            require_4bit()
        use_cuda = torch.cuda.is_available() and not cfg.train.cpu
        self.precision = resolve_precision(cfg, use_cuda)
        trackers = [name for name, on in (("tensorboard", cfg.log.tensorboard), ("wandb", cfg.log.wandb)) if on]
        for t in trackers:
            import importlib.util

            pkg = "tensorboard" if t == "tensorboard" else "wandb"
            if importlib.util.find_spec(pkg) is None and not (t == "tensorboard" and importlib.util.find_spec("tensorboardX")):
                raise ConfigError(f"log.{t}=true needs the {pkg} package: pip install {pkg} (or set log.{t}=false)")
        self.accelerator = Accelerator(
            cpu=not use_cuda, mixed_precision="bf16" if self.precision == "bf16" else "no",
            gradient_accumulation_steps=cfg.train.grad_accum,
            log_with=(trackers or None) if not self.dry_run else None,
            project_dir=str(self.run_dir) if self.run_dir else None,
        )
        set_seed(cfg.seed)
        self.fsdp = self.accelerator.distributed_type.name == "FSDP"
        self.padded_steps = resolve_padded_steps(cfg)

        check_base(cfg.base)
        # Base checkpoint to continue from (a merged VLA checkpoint), if that is what --base names.
        self.base_policy = load_base_checkpoint(cfg.base) if is_vla_checkpoint(cfg.base) else None
        base_embs = self.base_policy.embodiments if self.base_policy else {}
        if self.base_policy is not None:
            self._check_base_compatible()

        self.say("[finetune] reading datasets")
        self.data: TrainingData = build_data(cfg, base_embs, progress=False)
        for info in self.data.datasets:
            if info.excluded:
                self.say(f"[finetune] {info.name}: " + "; ".join(f"{len(v)} episode(s) left out: {k}"
                                                                 for k, v in info.excluded.items()))

        self.tokenizer = self._tokenizer()
        self.policy = self._policy()
        self.model = apply_lora(self.policy, cfg, cfg.seed)
        set_train_mode(self.model, True, cfg.lora.train_vision)
        self.parameters = parameter_groups(self.model)

        use_cache = {"on": True, "off": False}.get(cfg.train.cache_vision)
        if use_cache is None:
            use_cache = not cfg.lora.train_vision and not cfg.data.augment and not self.fsdp
        elif use_cache and (cfg.lora.train_vision or cfg.data.augment):
            raise ConfigError("train.cache_vision=on needs a frozen vision tower and no augmentation "
                              "(lora.train_vision=false, data.augment=false); use auto or off")
        self.cache = install_vision_cache(self.model, cfg.train.cache_max_gb) if use_cache else None
        if self.cache is not None and not self._cache_serves():
            self.cache.remove()
            self.cache = None
            why = ("the processor gives the vision tower tiles, not whole frames (image splitting), and features "
                   "are cached per frame")
            if cfg.train.cache_vision == "on":
                raise ConfigError(f"train.cache_vision=on cannot work here: {why}; set train.cache_vision=auto, "
                                  "or save the processor with do_image_splitting=false")
            self.say(f"[finetune] vision feature cache off: {why}; every step runs the tower")

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

        if cfg.train.schedule == "cosine":
            self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, cfg.train.warmup_steps, cfg.train.steps)
        else:
            self.scheduler = get_constant_schedule_with_warmup(self.optimizer, cfg.train.warmup_steps)
        self.loss_module = ActionLoss(self.model, self.policy.config.action_token_ids,
                                      self.policy.config.decoding == "parallel", cfg.train.label_sigma)

        self.start_step, self.samples_seen, self.elapsed_before = 0, 0, 0.0
        if self.resume_from is not None:
            self._load_adapter(self.resume_from)
        world = self.accelerator.num_processes
        self.per_step = cfg.train.batch_size * cfg.train.grad_accum * world
        remaining = max(cfg.train.steps - self.start_step, 0)
        sampler = self.data.mixture.sampler(num_samples=remaining * self.per_step, start=self.samples_seen)
        loader = torch.utils.data.DataLoader(
            # collate_fn=list: batches stay lists of samples (a mixture mixes action dims and camera counts)
            self.data.mixture, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=list,
            num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(cfg.seed),
        )
        self.wrapped, self.optimizer, self.loader = self.accelerator.prepare(self.loss_module, self.optimizer, loader)
        # accelerate's save_state/load_state carry the optimizer, the RNG of every process and these two;
        # the adapter is saved (and loaded) as the policy's own files, not as a second full copy of the model.
        start = self.samples_seen
        self.accelerator.register_for_checkpointing(
            self.scheduler, DataPosition(sampler, lambda: self.samples_seen - start))
        self.accelerator.register_save_state_pre_hook(lambda models, weights, directory: weights.clear())
        self.accelerator.register_load_state_pre_hook(lambda models, directory: models.clear())
        if self.resume_from is not None:
            self._load_training_state(self.resume_from)
        self.data.mixture.train()
        if self.cache is not None and not self.dry_run:
            self.fill_vision_cache()

    # -------------------------------------------------------------------------- feature cache
    FILL_BATCH = 8

    def _cache_frames(self, samples) -> None:
        """Vision features of these samples' frames, computed as one batch (see VisionFeatureCache)."""
        inputs = self.policy.prepare(requests(samples, self.policy.config.use_state))
        with torch.no_grad(), self.accelerator.autocast(), \
                self.cache.keys(frame_keys(samples, self.policy.embodiments), batched=True):
            image_features(self.model, inputs)

    def _cache_serves(self) -> bool:
        """One frame through the cache: False when the tower never saw that frame as one image."""
        self._cache_frames([self.data.mixture.datasets[0][0]])
        return bool(self.cache.store)

    def cache_fill_plan(self) -> tuple[int, float]:
        """(images in the training split, bytes their features take), from one measured image."""
        mix = self.data.mixture
        images = sum(len(d) * len(d.embodiment.cameras) for d in mix.datasets)
        if not self.cache.store:
            self._cache_frames([mix.datasets[0][0]])
        per_image = self.cache.bytes / max(self.cache.misses, 1)
        return images, per_image * images

    def fill_vision_cache(self) -> None:
        """Compute the features of every training frame once, in a fixed order and batch size."""
        mix = self.data.mixture
        images, need = self.cache_fill_plan()
        if need > self.cache.max_bytes:
            self.say(f"[finetune] vision features of {images} images need {need / 2**30:.2f} GiB, more than "
                     f"train.cache_max_gb={self.cfg.train.cache_max_gb}: caching the most recent ones only")
            return
        self.cache.store.clear()
        self.cache.bytes = self.cache.hits = self.cache.misses = 0
        from tqdm.auto import tqdm

        self.say(f"[finetune] caching the frozen vision features of {images} training images "
                 f"({need / 2**20:.0f} MiB)")
        order = [(d, k) for d in mix.datasets for k in range(len(d))]
        bar = tqdm(total=len(order), desc="vision features", unit="frame", dynamic_ncols=True,
                   disable=not (self.accelerator.is_main_process and self.cfg.log.progress))
        t = time.perf_counter()
        for start in range(0, len(order), self.FILL_BATCH):
            chunk = order[start:start + self.FILL_BATCH]
            self._cache_frames([d[k] for d, k in chunk])
            bar.update(len(chunk))
        bar.close()
        self.cache_fill_seconds = time.perf_counter() - t

    def _check_base_compatible(self) -> None:
        cfg, base = self.cfg, self.base_policy
        if base.action_tokenizer.kind != cfg.model.action_tokenizer:
            raise ConfigError(f"the base checkpoint {cfg.base} uses the {base.action_tokenizer.kind!r} action tokenizer; "
                              f"set model.action_tokenizer={base.action_tokenizer.kind} to continue from it")
        if base.config.decoding != cfg.model.decoding:
            raise ConfigError(f"the base checkpoint {cfg.base} was trained for {base.config.decoding} decoding; "
                              f"set model.decoding={base.config.decoding} to continue from it")

    def _tokenizer(self):
        cfg = self.cfg
        if self.resume_from is not None:
            return load_action_tokenizer(self.resume_from)  # the run's own (FAST is not refitted)
        if self.base_policy is not None:
            return self.base_policy.action_tokenizer
        if cfg.model.action_tokenizer == "bins":
            return make_action_tokenizer("bins", bins=cfg.model.bins)
        tok = make_action_tokenizer("fast", scale=cfg.model.fast_scale, vocab_size=cfg.model.fast_vocab_size,
                                    min_frequency=cfg.model.fast_min_frequency)
        chunks = action_chunks(self.data, cfg.model.fast_max_chunks)
        self.say(f"[finetune] fitting FAST on {len(chunks)} normalized training chunks")
        return tok.fit(chunks)

    def _policy(self) -> VLAPolicy:
        cfg = self.cfg
        if self.base_policy is not None:
            base = self.base_policy
            embodiments = {**base.embodiments, **self.data.embodiments}
            config = dataclasses.replace(base.config, embodiments=list(embodiments.values()),
                                         base_model=str(Path(cfg.base).resolve()), base_options={},
                                         model_id="", training={})
            return VLAPolicy(base.model, base.processor, self.tokenizer, config)
        embodiments = list(self.data.embodiments.values())
        kwargs = dict(action_token_mode=cfg.model.action_token_mode, decoding=cfg.model.decoding,
                      use_state=cfg.model.use_state, prompt_template=cfg.model.prompt_template, seed=0)
        # seed=0: new token rows must match what VLAPolicy.from_pretrained rebuilds under the adapter.
        if cfg.lora.quantize == "4bit":
            policy = VLAPolicy.from_backbone(load_quantized(cfg.base, cfg.model.base_options), embodiments,
                                             self.tokenizer, **kwargs)
            base = str(Path(cfg.base).resolve()) if Path(cfg.base).is_dir() else cfg.base
            policy.config.base_model, policy.config.base_options = base, dict(cfg.model.base_options)
            return policy
        return VLAPolicy.from_backbone(cfg.base, embodiments, self.tokenizer,
                                       base_options=cfg.model.base_options or None, **kwargs)

    # ------------------------------------------------------------------------ checkpoints
    def _load_adapter(self, path: Path) -> None:
        """The adapter weights and the position (step, samples) of the checkpoint ``path``; before prepare."""
        from peft import set_peft_model_state_dict

        weights = path / "adapter_model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{path} has no adapter_model.safetensors; {ckpt.damaged_fix(path)}")
        result = set_peft_model_state_dict(self.model, ckpt.load_safetensors(weights))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise CheckpointError(f"{weights} does not match the model built from the run's config "
                                  f"(unexpected keys {unexpected[:3]}...); was the config changed?")
        trainer = ckpt.read_trainer_state(path)
        world = trainer.get("world_size", 1)
        if world != self.accelerator.num_processes:
            self.say(f"[finetune] warning: the run used {world} process(es), now {self.accelerator.num_processes}: "
                     "the data order continues from the same position, but losses will not repeat exactly")
        self.start_step = int(trainer["step"])
        self.samples_seen = int(trainer["samples_seen"])
        self.elapsed_before = float(trainer.get("elapsed_s", 0.0))
        self.resumed_from = str(path)

    def _load_training_state(self, path: Path) -> None:
        """Optimizer, scheduler, RNG and data position of ``path``, after prepare (its files are verified)."""
        if (path / ckpt.TRAINING_STATE).is_file():  # a checkpoint written before accelerate's save_state
            state = ckpt.load_training_state(path)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            ckpt.set_rng_state(state["rng"])
            return
        try:
            self.accelerator.load_state(str(path))
        except Exception as e:  # unpickling raises many types; name the file and the fix
            bad = ckpt.unreadable_state_file(path)
            what = bad if bad is not None else f"the training state in {path}"
            raise CheckpointError(f"cannot load {what} ({type(e).__name__}: {e}); {ckpt.damaged_fix(path)}") from e

    def _save_policy(self, directory: Path, step: int, extra: dict | None = None) -> None:
        """Adapter (+ projector, token rows), processor, action tokenizer and vla_config.json."""
        model = self.model
        state = None
        if self.fsdp:  # gather the sharded weights on the main process
            full = self.accelerator.get_state_dict(self.wrapped)
            state = {k.removeprefix("model."): v for k, v in full.items()}
        if self.accelerator.is_main_process:
            config = dataclasses.replace(self.policy.config, training=self.provenance(step, extra or {}))
            model.save_pretrained(directory, state_dict=state) if state is not None else model.save_pretrained(directory)
            self.policy.processor.save_pretrained(directory)
            self.tokenizer.save(directory)
            config.save(directory)

    def save_checkpoint(self, step: int, interrupted: bool = False) -> Path | None:
        """Every process writes its part into the staging directory; the main process verifies and commits it."""
        acc = self.accelerator
        main = acc.is_main_process
        staging = ckpt.begin(self.run_dir, step) if main else ckpt.staging_dir(self.run_dir, step)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(staging))
            self._save_policy(staging, step)
            if main:
                trainer = {"step": step, "samples_seen": self.samples_seen, "world_size": acc.num_processes,
                           "distributed_type": acc.distributed_type.name,
                           "elapsed_s": self.elapsed_before + (time.perf_counter() - self.t0), "seed": self.cfg.seed}
                (staging / ckpt.TRAINER_STATE).write_text(json.dumps(trainer, indent=2) + "\n")
        except Exception as e:
            if main:
                ckpt.abandon(self.run_dir, step, e)
            raise
        acc.wait_for_everyone()
        path = None
        if main:
            path = ckpt.commit(self.run_dir, step, {"interrupted": interrupted, "saved_at": _now()},
                               self.cfg.checkpoint.keep_last)
        acc.wait_for_everyone()
        return path

    def provenance(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "tool": "vla finetune",
            "config": self.cfg.to_dict(),
            "step": step,
            "samples_seen": self.samples_seen,
            "datasets": [d.to_dict() for d in self.data.datasets],
            "parameters": self.parameters,
            "precision": self.precision,
            "device": str(self.accelerator.device),
            "world_size": self.accelerator.num_processes,
            "padded_steps": self.padded_steps,
            "vision_cache": self.cache is not None,
            "resumed_from": getattr(self, "resumed_from", None),
            "versions": _versions(),
            "saved_at": _now(),
            **extra,
        }

    # ------------------------------------------------------------------------------- plan
    def plan(self) -> dict[str, Any]:
        cfg = self.cfg
        per_emb = {}
        for name, emb in self.data.embodiments.items():
            ds = next(d for d in self.data.mixture.datasets if d.embodiment.name == name)
            batch = make_batch([ds[0]], self.policy, self.padded_steps)
            chunks = action_chunks(self.data, 256, embodiment=name)
            lengths = [len(self.tokenizer.encode(c)) for c in chunks]
            prompt = int(batch["inputs"]["attention_mask"].sum())
            per_emb[name] = {"prompt_tokens": prompt, "action_tokens_mean": float(np.mean(lengths)),
                             "action_tokens_max": int(np.max(lengths)),
                             "tokens_per_sample": prompt + float(np.mean(lengths))}
        return {
            "base": cfg.base, "base_options": cfg.model.base_options,
            "datasets": [d.to_dict() for d in self.data.datasets],
            "embodiments": {n: {"action_dim": e.action_dim, "chunk_size": e.chunk_size, "cameras": e.cameras,
                                "control_hz": e.control_hz} for n, e in self.data.embodiments.items()},
            "tokenizer": self.tokenizer.config() | {"vocab": self.tokenizer.vocab_size},
            "tokens": per_emb,
            "parameters": self.parameters,
            "steps": cfg.train.steps, "start_step": self.start_step,
            "samples_per_step": self.per_step,
            "samples_total": (cfg.train.steps - self.start_step) * self.per_step,
            "precision": self.precision, "device": str(self.accelerator.device),
            "world_size": self.accelerator.num_processes, "vision_cache": self.cache is not None,
            "padded_steps": self.padded_steps,
        }

    def time_steps(self, n: int) -> dict[str, float]:
        """Seconds per optimizer step from ``n`` timed micro-batches (after one warm-up), without updating.

        With the vision cache on, the timed batches' features are computed first (training runs with
        a filled cache), and the time to fill the cache for the whole training split is extrapolated.
        """
        # From an endless sampler at the run's position: a short run may have fewer batches than are timed.
        order = iter(self.data.mixture.sampler(start=self.samples_seen))
        batch = self.cfg.train.batch_size
        batches = [[self.data.mixture[next(order)] for _ in range(batch)] for _ in range(n + 1)]
        out: dict[str, float] = {}
        if self.cache is not None:
            images, need = self.cache_fill_plan()
            t = time.perf_counter()
            for samples in batches:
                self._cache_frames(samples)
            n_images = sum(len(self.policy.embodiments[x["embodiment"]].cameras) for s in batches for x in s)
            out.update({"cache_images": images, "cache_mib": need / 2**20,
                        "cache_fill_seconds": (time.perf_counter() - t) / n_images * images})
        times = []
        for i, samples in enumerate(batches):
            t = time.perf_counter()
            loss = self._forward(samples, 0, i)[0]
            self.accelerator.backward(loss)
            times.append(time.perf_counter() - t)
        out["memory"] = self.memory_plan(peak_rss_bytes(), out.get("cache_mib", 0.0) * 2**20)
        self.optimizer.zero_grad()
        per_micro = float(np.median(times[1:])) if n else times[0]
        return out | {"seconds_per_step": per_micro * self.cfg.train.grad_accum,
                      "samples_per_s": self.cfg.train.batch_size / per_micro}

    def memory_plan(self, dry_peak: int, cache_need: float) -> dict[str, float]:
        """Peak RSS of training predicted from the dry run's measured peak (weights, activations, gradients).

        Training adds what the dry run never allocates: AdamW's two moments per trainable parameter
        (created by the first optimizer step) and the vision features of the whole training split.
        """
        trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        optimizer = 2 * sum(p.numel() * p.element_size() for p in trainable)
        cache = max(cache_need - (self.cache.bytes if self.cache is not None else 0), 0.0)
        mib = 2**20
        return {"dry_run_peak_rss_mib": dry_peak / mib, "optimizer_state_mib": optimizer / mib,
                "cache_fill_mib": cache / mib, "predicted_peak_rss_mib": (dry_peak + optimizer + cache) / mib}

    # ------------------------------------------------------------------------------- loop
    def _forward(self, samples, step: int, micro: int):
        torch.manual_seed(step_seed(self.cfg.seed, step, micro, self.accelerator.process_index))
        batch = make_batch(samples, self.policy, self.padded_steps)
        with self.cache.keys(batch["keys"]) if self.cache else nullcontext():
            loss, n, correct = self.wrapped(batch["inputs"], batch["appended"], batch["labels"])
        tokens = int(batch["inputs"]["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
        return loss, n, correct, tokens

    def evaluate(self, step: int) -> dict[str, dict[str, float]]:
        if not self.data.val:
            return {}
        set_train_mode(self.model, False, self.cfg.lora.train_vision)
        self.data.mixture.eval()
        try:
            results = evaluate(self.policy, self.loss_module, self.data.val, max_samples=self.cfg.eval.max_samples,
                               batch_size=self.cfg.eval.batch_size, padded_steps=self.padded_steps, cache=self.cache,
                               autocast=self.accelerator.autocast)
        finally:
            set_train_mode(self.model, True, self.cfg.lora.train_vision)
            self.data.mixture.train()
        for emb, m in results.items():
            self.metrics.log({"step": step, "split": "val", "embodiment": emb, **m})
        return results

    def train(self, signals: Signals) -> Outcome:
        cfg, acc = self.cfg, self.accelerator
        self.metrics = MetricsLog(self.run_dir, acc, enabled=acc.is_main_process)
        if acc.log_with:
            acc.init_trackers(self.run_dir.name, config=_flat(cfg.to_dict()))
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.steps, initial=self.start_step, disable=not (acc.is_main_process and cfg.log.progress),
                   desc="finetune", unit="step", dynamic_ncols=True)
        self.t0 = time.perf_counter()
        step = self.start_step
        window = {"loss": 0.0, "tokens": 0, "correct": 0, "samples": 0, "n_tokens": 0, "steps": 0,
                  "t": time.perf_counter()}
        last_val: dict[str, dict[str, float]] = {}
        it = iter(self.loader)
        grad_norm = float("nan")
        while step < cfg.train.steps:
            for micro in range(cfg.train.grad_accum):
                samples = next(it)
                with acc.accumulate(self.wrapped):
                    loss, n, correct, tokens = self._forward(samples, step, micro)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.train.max_grad_norm > 0:
                        grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), cfg.train.max_grad_norm))
                    self.optimizer.step()
                    if acc.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad()
                window["loss"] += float(loss.detach()) / cfg.train.grad_accum
                window["correct"] += int(correct)
                window["n_tokens"] += int(n)
                window["tokens"] += tokens
                window["samples"] += len(samples)
            if not math.isfinite(window["loss"]):
                raise TrainingDiverged(self._divergence_message(window["loss"], step + 1))
            step += 1
            window["steps"] += 1
            self.samples_seen += self.per_step
            bar.update(1)
            if step % cfg.log.every == 0 or step == cfg.train.steps:
                dt = max(time.perf_counter() - window["t"], 1e-9)
                world = acc.num_processes
                if world > 1:  # every rank logs the same, all-process numbers
                    keys = ("loss", "correct", "n_tokens", "samples", "tokens")
                    summed = acc.reduce(torch.tensor([float(window[k]) for k in keys], device=acc.device), "sum")
                    window.update({k: v.item() for k, v in zip(keys, summed.cpu())})
                    window["loss"] /= world
                record = {"step": step, "split": "train", "loss": window["loss"] / window["steps"],
                          "token_accuracy": window["correct"] / max(window["n_tokens"], 1),
                          "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                          "samples_per_s": window["samples"] / dt, "tokens_per_s": window["tokens"] / dt,
                          "samples_seen": self.samples_seen,
                          "elapsed_s": self.elapsed_before + time.perf_counter() - self.t0}
                self.metrics.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                samples_s=f"{record['samples_per_s']:.1f}")
                window = {"loss": 0.0, "tokens": 0, "correct": 0, "samples": 0, "n_tokens": 0, "steps": 0,
                          "t": time.perf_counter()}
            final = step == cfg.train.steps
            if cfg.eval.every and step % cfg.eval.every == 0 and not final:
                last_val = self.evaluate(step)
                window["t"] = time.perf_counter()  # validation time is not training throughput
            if signals.received is not None and not final:
                path = self.save_checkpoint(step, interrupted=True)
                bar.close()
                code = 130 if signals.received == signal.SIGINT else 143
                msg = (f"interrupted at step {step}/{cfg.train.steps}; checkpoint saved to {path}. "
                       f"Continue with: vla finetune --resume {self.run_dir}")
                self.say(f"[finetune] {msg}")
                return Outcome(code, self.run_dir, step, message=msg)
            if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) and not final:
                self.save_checkpoint(step)
        bar.close()
        if step > self.start_step or not (self.run_dir / CONFIG_NAME).is_file():
            last_val = self.evaluate(step) if self.data.val else {}
            self.save_checkpoint(step)
            self.finish(step, last_val)
        else:
            self.say(f"[finetune] the run is already complete at step {step}")
        acc.end_training()
        return Outcome(0, self.run_dir, step)

    def _divergence_message(self, loss: float, step: int) -> str:
        """What went wrong and which checkpoint still verifies (checked now, not assumed)."""
        text = f"the training loss is {loss} at step {step}"
        resumed = getattr(self, "resumed_from", None)
        if resumed and step == self.start_step + 1:
            text += f", the first step after resuming from {resumed}: that checkpoint's weights may be the cause"
        intact, damaged = ckpt.newest_intact(self.run_dir)
        if intact is not None:
            text += f". The newest checkpoint that verifies (checksums, finite weights) is {intact}"
        elif damaged:
            text += f". No checkpoint of this run verifies: {ckpt.describe_damage(damaged)}"
        else:
            text += ". No checkpoint has been written yet"
        return text + (". Lower train.lr or check the data, then start a new run (to continue from a checkpoint: "
                       "vla export CHECKPOINT --merge --out DIR, then --base DIR)")

    # ----------------------------------------------------------------------------- outputs
    def finish(self, step: int, validation: dict[str, dict[str, float]]) -> None:
        """Plots, tokenizer report, the final adapter in RUN_DIR, example frames and the model card."""
        from .model_card import CARD, base_licence, render_card
        from .plots import CURVES, TRACES, plot_curves, plot_traces

        acc = self.accelerator
        if not acc.is_main_process:
            if self.fsdp:
                self._save_policy(Path(os.devnull), step)  # take part in gathering the sharded weights
            acc.wait_for_everyone()
            return
        self.say("[finetune] writing plots, model card and the final adapter")
        set_train_mode(self.model, False, self.cfg.lora.train_vision)
        self.data.mixture.eval()
        traces = action_traces(self.policy, self.data.val, episodes=self.cfg.eval.trace_episodes,
                               max_steps=self.cfg.eval.trace_steps) if self.cfg.eval.trace_episodes else []
        tmp = self.run_dir / f".final-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            plots = [CURVES]
            plot_curves(read_metrics(self.run_dir), tmp / CURVES)
            if plot_traces(traces, tmp / TRACES):
                plots.append(TRACES)
            reports = self.tokenizer_reports()
            extra = {"validation": validation, "tokenizer_reports": {k: _short_report(r) for k, r in reports.items()},
                     "seconds": self.elapsed_before + time.perf_counter() - self.t0, "finished": True}
            self._save_policy(tmp, step, extra)
            self._write_examples(tmp / EXAMPLES_DIR)
            provenance = self.provenance(step, extra)
            base_dir = None
            if self.cfg.base == "default":
                from vla.backbones.loading import resolve_backbone

                base_dir = resolve_backbone("default", self.cfg.model.base_options)
            elif Path(self.cfg.base).is_dir():
                base_dir = self.cfg.base
            card = render_card({
                "run_dir": str(self.run_dir), "base": self.cfg.base, "base_options": self.cfg.model.base_options,
                "base_licence": base_licence(self.cfg.base, base_dir),
                "datasets": [d.to_dict() for d in self.data.datasets],
                "embodiments": [e.to_dict() for e in self.policy.config.embodiments],
                "tokenizer": self.tokenizer.config(), "tokenizer_reports": reports, "validation": validation,
                "action_vocab": self.tokenizer.vocab_size, "action_token_mode": self.policy.config.action_token_mode,
                "decoding": self.policy.config.decoding,
                "training": {**provenance, "steps": step}, "config": self.cfg.to_dict(), "plots": plots,
            })
            (tmp / CARD).write_text(card)
            _publish(tmp, self.run_dir)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"could not write the final outputs to {self.run_dir}: {e.strerror or e}. The last "
                                  f"checkpoint is complete: free disk space and run `vla finetune --resume "
                                  f"{self.run_dir}` to write them") from e
        acc.wait_for_everyone()
        self.say(f"[finetune] done: {self.run_dir} (VLAPolicy.from_pretrained({str(self.run_dir)!r}))")

    def tokenizer_reports(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, emb in self.data.embodiments.items():
            phys = action_chunks(self.data, 512, embodiment=name, normalized=False)
            if phys:
                out[name] = tokenizer_report(self.tokenizer, np.stack(phys), emb.action_normalizer, emb.action_names)
        return out

    def _write_examples(self, directory: Path) -> None:
        """One validation frame per embodiment as PNG files + their instruction and state: ready for `vla predict`."""
        from PIL import Image

        directory.mkdir()
        index = {}
        for emb_name, datasets in self.data.val.items():
            s = datasets[0][0]
            files = []
            for cam, img in zip(self.data.embodiments[emb_name].cameras, s["images"]):
                f = f"{emb_name}_{cam.rsplit('.', 1)[-1]}.png"
                Image.fromarray(img).save(directory / f)
                files.append(f)
            index[emb_name] = {"images": files, "instruction": s["instruction"], "episode": s["episode_index"],
                               "frame": s["frame_index"], "dataset": s["dataset"],
                               "actions": np.asarray(s["actions"]).tolist()}
            if s.get("state") is not None:
                index[emb_name]["state"] = np.asarray(s["state"], dtype=float).tolist()
        (directory / "examples.json").write_text(json.dumps(index, indent=2) + "\n")


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _publish(tmp: Path, run_dir: Path) -> None:
    """Move the final files into RUN_DIR; vla_config.json goes last (it makes the directory loadable)."""
    names = sorted(os.listdir(tmp), key=lambda n: n == CONFIG_NAME)
    for name in names:
        dest = run_dir / name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(tmp / name, dest)
    tmp.rmdir()


def _short_report(r: dict[str, Any]) -> dict[str, Any]:
    return {"tokens_per_chunk": r["tokens_per_chunk"], "overall": r["overall"]}


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------- entry
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
    job = Run(cfg, resume_from=resume_from, dry_run=dry_run, dry_run_steps=dry_run_steps, log=log)
    job.setup()  # everything is validated (config, base, data, model) before the run directory is created
    if not resume and not dry_run:
        if job.accelerator.is_main_process:
            prepare_run_dir(cfg)
        job.accelerator.wait_for_everyone()
    if dry_run:
        plan = job.plan()
        plan["timing"] = job.time_steps(dry_run_steps)
        return Outcome(0, None, plan=plan)
    if resume_from is not None:
        if damaged:  # renamed only now, once every process has chosen the same checkpoint
            job.accelerator.wait_for_everyone()
            if job.accelerator.is_main_process:
                kept = [(ckpt.set_aside(p), problems) for p, problems in damaged]
                job.say(f"[finetune] damaged checkpoint(s) kept, renamed and skipped: {ckpt.describe_damage(kept)}; "
                        f"resuming from {resume_from} (step {job.start_step})")
            job.accelerator.wait_for_everyone()
        else:
            job.say(f"[finetune] resuming from {resume_from} (step {job.start_step})")
        write_config(cfg, Path(cfg.out))
    with Signals() as signals:
        return job.train(signals)
