"""The dry run (``vla finetune --dry-run``): what a run would train on and how long and how much
memory it would take, measured on a few real micro-batches without updating the weights."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from .data import action_chunks, make_batch
from .session import Session
from .trainer import forward


def plan(session: Session) -> dict[str, Any]:
    """Datasets, embodiments, tokens per sample, parameters and steps of the run, without timing."""
    s, cfg = session, session.cfg
    per_emb = {}
    for name, emb in s.data.embodiments.items():
        ds = next(d for d in s.data.mixture.datasets if d.embodiment.name == name)
        batch = make_batch([ds[0]], s.policy, s.padded_steps)
        chunks = action_chunks(s.data, 256, embodiment=name)
        lengths = [len(s.tokenizer.encode(c)) for c in chunks]
        prompt = int(batch["inputs"]["attention_mask"].sum())
        per_emb[name] = {"prompt_tokens": prompt, "action_tokens_mean": float(np.mean(lengths)),
                         "action_tokens_max": int(np.max(lengths)),
                         "tokens_per_sample": prompt + float(np.mean(lengths))}
    return {
        "base": cfg.base, "base_options": cfg.model.base_options,
        "datasets": [d.to_dict() for d in s.data.datasets],
        "embodiments": {n: {"action_dim": e.action_dim, "chunk_size": e.chunk_size, "cameras": e.cameras,
                            "control_hz": e.control_hz} for n, e in s.data.embodiments.items()},
        "tokenizer": s.tokenizer.config() | {"vocab": s.tokenizer.vocab_size},
        "tokens": per_emb,
        "parameters": s.parameters,
        "steps": cfg.train.steps, "start_step": s.start_step,
        "samples_per_step": s.per_step,
        "samples_total": (cfg.train.steps - s.start_step) * s.per_step,
        "precision": s.precision, "precision_reason": s.precision_reason, "device": str(s.accelerator.device),
        "world_size": s.accelerator.num_processes, "vision_cache": s.cache is not None,
        "padded_steps": s.padded_steps,
    }


def time_steps(session: Session, n: int) -> dict[str, float]:
    """Seconds per optimizer step from ``n`` timed micro-batches (after one warm-up), without updating.

    With the vision cache on, the timed batches' features are computed first (training runs with
    a filled cache), and the time to fill the cache for the whole training split is extrapolated.
    """
    s = session
    # From an endless sampler at the run's position: a short run may have fewer batches than are timed.
    order = iter(s.data.mixture.sampler(start=s.samples_seen))
    batch = s.cfg.train.batch_size
    batches = [[s.data.mixture[next(order)] for _ in range(batch)] for _ in range(n + 1)]
    out: dict[str, float] = {}
    if s.cache is not None:
        images, need = s.cache_fill_plan()
        t = time.perf_counter()
        for samples in batches:
            s.cache_frames(samples)
        n_images = sum(len(s.policy.embodiments[x["embodiment"]].cameras) for b in batches for x in b)
        out.update({"cache_images": images, "cache_mib": need / 2**20,
                    "cache_fill_seconds": (time.perf_counter() - t) / n_images * images})
    times = []
    for i, samples in enumerate(batches):
        t = time.perf_counter()
        loss = forward(s, samples, 0, i)[0]
        s.accelerator.backward(loss)
        times.append(time.perf_counter() - t)
    out["memory"] = memory_plan(s, peak_rss_bytes(), out.get("cache_mib", 0.0) * 2**20)
    s.optimizer.zero_grad()
    per_micro = float(np.median(times[1:])) if n else times[0]
    return out | {"seconds_per_step": per_micro * s.cfg.train.grad_accum,
                  "samples_per_s": s.cfg.train.batch_size / per_micro}


def memory_plan(session: Session, dry_peak: int, cache_need: float) -> dict[str, float]:
    """Peak RSS of training predicted from the dry run's measured peak (weights, activations, gradients).

    Training adds what the dry run never allocates: AdamW's two moments per trainable parameter
    (created by the first optimizer step) and the vision features of the whole training split.
    """
    trainable = [p for group in session.optimizer.param_groups for p in group["params"]]
    optimizer = 2 * sum(p.numel() * p.element_size() for p in trainable)
    cache = max(cache_need - (session.cache.bytes if session.cache is not None else 0), 0.0)
    mib = 2**20
    return {"dry_run_peak_rss_mib": dry_peak / mib, "optimizer_state_mib": optimizer / mib,
            "cache_fill_mib": cache / mib, "predicted_peak_rss_mib": (dry_peak + optimizer + cache) / mib}


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
