"""Metrics: the JSON-lines log (plus optional TensorBoard/W&B through accelerate) and validation.

Validation, per embodiment, on held-out episodes:
* ``loss`` and ``token_accuracy``: teacher-forced, the training loss on validation samples;
* ``l1`` / ``rmse``: decoded actions in physical units against the recorded ones, through the
  serving path (``VLAPolicy.predict_batch``: constrained decoding, detokenize, unnormalize),
  over the real steps of each chunk (steps past an episode's end are not scored);
* ``l1_normalized``: the same L1 in normalized units (comparable across robots);
* ``valid_decodes``: share of predictions that decoded into finite actions.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.errors import VLAError

from .data import make_batch, requests, validation_samples

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per line to RUN_DIR/metrics.jsonl (main process only)."""

    def __init__(self, run_dir: Path, accelerator=None, enabled: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.accelerator = accelerator
        self.enabled = enabled
        self._trackers = bool(accelerator is not None and accelerator.log_with)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
        if self._trackers:
            split = record.get("split", "train")
            prefix = f"{split}/" + (f"{record['embodiment']}/" if "embodiment" in record else "")
            values = {prefix + k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(values, step=int(record["step"]))


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if torch.is_tensor(x):
        return x.item() if x.numel() == 1 else x.tolist()
    return str(x)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records after ``step`` (a killed run may have logged past its last checkpoint)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def evaluate(policy, loss_module, val: dict, *, max_samples: int, batch_size: int, padded_steps: str,
             cache=None, autocast=nullcontext) -> dict[str, dict[str, float]]:
    """Validation metrics per embodiment (see the module docstring)."""
    results: dict[str, dict[str, float]] = {}
    for emb_name, datasets in val.items():
        emb = policy.embodiments[emb_name]
        norm = emb.action_normalizer
        per_ds = max(1, -(-max_samples // len(datasets)))
        samples = [ds[i] for ds in datasets for i in validation_samples(ds, per_ds)][:max_samples]
        if not samples:
            continue
        loss_sum = tokens = correct = 0.0
        abs_sum = sq_sum = abs_norm_sum = 0.0
        values = 0
        valid = 0
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            batch = make_batch(chunk, policy, padded_steps)
            with torch.no_grad(), autocast(), (cache.keys(batch["keys"]) if cache else nullcontext()):
                loss, n, c = loss_module(batch["inputs"], batch["appended"], batch["labels"])
            loss_sum += float(loss) * int(n)
            tokens += int(n)
            correct += int(c)
            with autocast():  # the serving path too: frozen weights may be stored in bf16
                predictions = _predict(policy, chunk)
            for s, pred in zip(chunk, predictions):
                if pred is None or not np.all(np.isfinite(pred)):
                    continue
                valid += 1
                mask = np.asarray(s["action_mask"], bool)
                truth = np.asarray(s["actions"], np.float64)[mask]
                err = pred[mask] - truth
                abs_sum += float(np.abs(err).sum())
                sq_sum += float((err ** 2).sum())
                abs_norm_sum += float(np.abs(norm.normalize(pred[mask]) - norm.normalize(truth)).sum())
                values += err.size
        results[emb_name] = {
            "samples": len(samples),
            "loss": loss_sum / max(tokens, 1),
            "token_accuracy": correct / max(tokens, 1),
            "l1": abs_sum / max(values, 1),
            "rmse": float(np.sqrt(sq_sum / max(values, 1))),
            "l1_normalized": abs_norm_sum / max(values, 1),
            "valid_decodes": valid / len(samples),
        }
    return results


def _predict(policy, samples) -> list[np.ndarray | None]:
    """Physical action chunks through the serving path; a sample that fails to decode gives None."""
    reqs = requests(samples, policy.config.use_state)
    try:
        return [c.actions for c in policy.predict_batch(reqs)]
    except VLAError:
        out = []
        for r in reqs:  # find out which ones fail
            try:
                out.append(policy.predict_batch([r])[0].actions)
            except VLAError:
                out.append(None)
        return out


def action_traces(policy, val: dict, *, episodes: int, max_steps: int) -> list[dict[str, Any]]:
    """Predicted vs recorded actions over whole validation episodes: a chunk is predicted every H
    steps from the recorded observation and its actions are laid end to end."""
    traces = []
    for emb_name, datasets in val.items():
        emb = policy.embodiments[emb_name]
        H = emb.chunk_size
        ds = datasets[0]
        for e in range(min(episodes, len(ds.episodes))):
            T = min(int(ds.lengths[e]), max_steps)
            starts = list(range(0, T, H))
            samples = [ds[int(ds.offsets[e]) + t] for t in starts]
            preds = _predict(policy, samples)
            truth = ds.actions[ds.offsets[e]:ds.offsets[e] + T].astype(np.float64)
            pred = np.full_like(truth, np.nan)
            for t, p in zip(starts, preds):
                if p is not None:
                    n = min(H, T - t)
                    pred[t:t + n] = p[:n]
            traces.append({"embodiment": emb_name, "dataset": ds.name, "episode": int(ds.episodes[e]),
                           "action_names": list(emb.action_names), "truth": truth, "pred": pred,
                           "control_hz": emb.control_hz, "chunk_size": H})
    return traces
