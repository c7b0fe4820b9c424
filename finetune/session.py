"""What a fine-tuning run is built from: accelerator, datasets, action tokenizer, policy with LoRA,
optimizer, schedule, loss and data loader, each validated before the run directory is created.

A ``Session`` also knows where training stands (step, samples seen, time spent before a resume, and
the checkpoint it resumed from), how the policy it trains was made (its provenance), and keeps the
frozen vision tower's feature cache: whether it can serve this processor, and filling it for the whole
training split in a fixed order.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from vla.action_tokenizers import load_action_tokenizer, make_action_tokenizer
from vla.errors import CheckpointError, ConfigError
from vla.policy import VLAPolicy
from vla.precision import resolve_precision as hardware_precision

from . import checkpointing as ckpt
from .config import FinetuneConfig
from .data import TrainingData, action_chunks, build_data, frame_keys, requests, resolve_padded_steps
from .loading import (check_base, is_vla_checkpoint, load_base_checkpoint, load_init_checkpoint, load_quantized,
                      require_4bit)
from .lora import apply_lora, load_adapter_weights, parameter_groups, set_train_mode, store_frozen_weights
from .loss import ActionLoss
from .vision_cache import image_features, install_vision_cache, vision_cache_blocker


def resolve_precision(cfg: FinetuneConfig, use_cuda: bool) -> tuple[str, str]:
    """("bf16" or "fp32", why): auto picks bf16 where the hardware runs it fast (:mod:`vla.precision`)."""
    if cfg.train.precision != "auto":
        return cfg.train.precision, "asked for"
    chosen = hardware_precision("auto", "cuda" if use_cuda else "cpu")
    return ("bf16" if chosen.dtype == torch.bfloat16 else "fp32"), chosen.reason


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


class Session:
    """One fine-tuning run's parts (fresh, resumed or dry) and its position; ``build`` makes them."""

    FILL_BATCH = 8
    accelerator = None

    def __init__(self, cfg: FinetuneConfig, *, resume_from: Path | None = None, dry_run: bool = False,
                 log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.dry_run = dry_run
        self.resume_from = resume_from
        self.run_dir = Path(cfg.out) if cfg.out else None
        self._log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.start_step, self.samples_seen, self.elapsed_before = 0, 0, 0.0
        self.resumed_from: str | None = None
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        if self.accelerator is None or self.accelerator.is_main_process:
            self._log(text)

    def elapsed_s(self) -> float:
        """Training seconds so far, across resumes."""
        return self.elapsed_before + time.perf_counter() - self.started

    # ------------------------------------------------------------------------------ build
    def build(self) -> None:
        """Everything, in order; a resumed run loads its adapter and position, then its training state."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        if cfg.lora.quantize == "4bit":
            require_4bit()
        use_cuda = torch.cuda.is_available() and not cfg.train.cpu
        self.precision, self.precision_reason = resolve_precision(cfg, use_cuda)
        trackers = [name for name, on in (("tensorboard", cfg.log.tensorboard), ("wandb", cfg.log.wandb)) if on]
        for t in trackers:
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
        self.say(f"[finetune] precision {self.precision} ({self.precision_reason})")
        self.fsdp = self.accelerator.distributed_type.name == "FSDP"
        self.padded_steps = resolve_padded_steps(cfg)

        check_base(cfg.base)
        # Base checkpoint to continue from (a merged VLA checkpoint), if that is what --base names.
        self.base_policy = load_base_checkpoint(cfg.base) if is_vla_checkpoint(cfg.base) else None
        base_embs = self.base_policy.embodiments if self.base_policy else {}
        if self.base_policy is not None:
            self._check_base_compatible()
        # A warm start: the adapter, action tokenizer and statistics of a trained run (also on resume: its
        # embodiments' statistics are the ones the run trained with).
        self.init_policy = load_init_checkpoint(cfg) if cfg.init_from else None
        if self.init_policy is not None:
            base_embs = self.init_policy.embodiments

        self.say("[finetune] reading datasets")
        self.data: TrainingData = build_data(cfg, base_embs, progress=False)
        for info in self.data.datasets:
            if info.excluded:
                self.say(f"[finetune] {info.name}: " + "; ".join(f"{len(v)} episode(s) left out: {k}"
                                                                 for k, v in info.excluded.items()))

        self.tokenizer = self._tokenizer()
        self.policy = self._policy()
        self.model = apply_lora(self.policy, cfg, cfg.seed)
        if self.init_policy is not None:
            load_adapter_weights(self.model, Path(cfg.init_from), "point init_from at an intact run directory")
            self.init_policy = None  # its model is no longer needed
        set_train_mode(self.model, True, cfg.lora.train_vision)
        if self.precision == "bf16":
            store_frozen_weights(self.model, torch.bfloat16)
        self.parameters = parameter_groups(self.model)
        self.cache = self._vision_cache()

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

        if cfg.train.schedule == "cosine":
            self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, cfg.train.warmup_steps, cfg.train.steps)
        else:
            self.scheduler = get_constant_schedule_with_warmup(self.optimizer, cfg.train.warmup_steps)
        self.loss_module = ActionLoss(self.model, self.policy.config.action_token_ids,
                                      self.policy.config.decoding == "parallel", cfg.train.label_sigma)

        if self.resume_from is not None:
            self._resume_position(self.resume_from)
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
            self._restore_training_state(self.resume_from)
        self.data.mixture.train()
        if self.cache is not None and not self.dry_run:
            self.fill_vision_cache()

    # ------------------------------------------------------------------------------ resume
    def _resume_position(self, path: Path) -> None:
        """The adapter weights and the position (step, samples, time) of the checkpoint ``path``; before prepare."""
        load_adapter_weights(self.model, path, ckpt.damaged_fix(path))
        trainer = ckpt.read_trainer_state(path)
        world = trainer.get("world_size", 1)
        if world != self.accelerator.num_processes:
            self.say(f"[finetune] warning: the run used {world} process(es), now {self.accelerator.num_processes}: "
                     "the data order continues from the same position, but losses will not repeat exactly")
        self.start_step = int(trainer["step"])
        self.samples_seen = int(trainer["samples_seen"])
        self.elapsed_before = float(trainer.get("elapsed_s", 0.0))
        self.resumed_from = str(path)

    def _restore_training_state(self, path: Path) -> None:
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

    def provenance(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        """How the policy saved at ``step`` was made: config, data, position, precision, versions."""
        return {
            "tool": "vla finetune",
            "config": self.cfg.to_dict(),
            "step": step,
            "samples_seen": self.samples_seen,
            "datasets": [d.to_dict() for d in self.data.datasets],
            "parameters": self.parameters,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "device": str(self.accelerator.device),
            "world_size": self.accelerator.num_processes,
            "padded_steps": self.padded_steps,
            "vision_cache": self.cache is not None,
            "resumed_from": self.resumed_from,
            "versions": _versions(),
            "saved_at": ckpt.utc_now(),
            **extra,
        }

    def _check_base_compatible(self) -> None:
        cfg, base = self.cfg, self.base_policy
        if base.action_tokenizer.kind != cfg.model.action_tokenizer:
            raise ConfigError(f"the base checkpoint {cfg.base} uses the {base.action_tokenizer.kind!r} action tokenizer; "
                              f"set model.action_tokenizer={base.action_tokenizer.kind} to continue from it")
        if base.config.decoding != cfg.model.policy_config().decoding:
            raise ConfigError(f"the base checkpoint {cfg.base} was trained for {base.config.decoding} decoding; "
                              f"set model.decoding={base.config.decoding} to continue from it")

    def _tokenizer(self):
        cfg = self.cfg
        if self.resume_from is not None:
            return load_action_tokenizer(self.resume_from)  # the run's own (FAST is not refitted)
        if self.base_policy is not None:
            return self.base_policy.action_tokenizer
        if self.init_policy is not None:
            return self.init_policy.action_tokenizer
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
        config = cfg.model.policy_config()
        if self.init_policy is not None:  # keep every robot the checkpoint drives, with its prompt
            embodiments = list({**self.init_policy.embodiments, **self.data.embodiments}.values())
            config = dataclasses.replace(config, prompt_template=self.init_policy.config.prompt_template)
        # seed=0: new token rows must match what VLAPolicy.from_pretrained rebuilds under the adapter.
        if cfg.lora.quantize == "4bit":
            policy = VLAPolicy.from_backbone(load_quantized(cfg.base, cfg.model.base_options), embodiments,
                                             self.tokenizer, config, seed=0)
            policy.config.base_model = str(Path(cfg.base).resolve()) if Path(cfg.base).is_dir() else cfg.base
            return policy
        return VLAPolicy.from_backbone(cfg.base, embodiments, self.tokenizer, config, seed=0)

    # -------------------------------------------------------------------------- feature cache
    def _vision_cache(self):
        """The frozen tower's per-frame feature cache when it applies (train.cache_vision), else None."""
        cfg = self.cfg
        use_cache = {"on": True, "off": False}.get(cfg.train.cache_vision)
        if use_cache is None:
            use_cache = not cfg.lora.train_vision and not cfg.data.augment and not self.fsdp
        elif use_cache and (cfg.lora.train_vision or cfg.data.augment):
            raise ConfigError("train.cache_vision=on needs a frozen vision tower and no augmentation "
                              "(lora.train_vision=false, data.augment=false); use auto or off")
        blocker = vision_cache_blocker(self.model) if use_cache else None
        self.cache = install_vision_cache(self.model, cfg.train.cache_max_gb) if use_cache and not blocker else None
        if self.cache is not None and not self._cache_serves():
            self.cache.remove()
            self.cache = None
            blocker = ("the processor gives the vision tower tiles, not whole frames (image splitting), and features "
                       "are cached per frame")
            fix = "or save the processor with do_image_splitting=false"
        else:
            fix = "or train.cache_vision=off"
        if blocker:
            if cfg.train.cache_vision == "on":
                raise ConfigError(f"train.cache_vision=on cannot work here: {blocker}; set train.cache_vision=auto, {fix}")
            self.say(f"[finetune] vision feature cache off: {blocker}; every step runs the tower")
        return self.cache

    def cache_frames(self, samples) -> None:
        """Vision features of these samples' frames, computed as one batch (see VisionFeatureCache)."""
        inputs = self.policy.prepare(requests(samples, self.policy.config.use_state))
        with torch.no_grad(), self.accelerator.autocast(), \
                self.cache.keys(frame_keys(samples, self.policy.embodiments), batched=True):
            image_features(self.model, inputs)

    def _cache_serves(self) -> bool:
        """One frame through the cache: False when the tower never saw that frame as one image."""
        self.cache_frames([self.data.mixture.datasets[0][0]])
        return bool(self.cache.store)

    def cache_fill_plan(self) -> tuple[int, float]:
        """(images in the training split, bytes their features take), from one measured image."""
        mix = self.data.mixture
        images = sum(len(d) * len(d.embodiment.cameras) for d in mix.datasets)
        if not self.cache.store:
            self.cache_frames([mix.datasets[0][0]])
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
            self.cache_frames([d[k] for d, k in chunk])
            bar.update(len(chunk))
        bar.close()
        self.cache_fill_seconds = time.perf_counter() - t


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("vla", "torch", "transformers", "peft", "accelerate"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out
