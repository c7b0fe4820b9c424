"""A finished run's outputs in RUN_DIR: the final adapter, plots, the tokenizer report, example
frames and the model card, written into a staging directory and moved in with vla_config.json last."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vla.action_tokenizers import report as tokenizer_report
from vla.configuration import CONFIG_NAME
from vla.errors import CheckpointError

from .data import action_chunks
from .metrics import action_traces, read_metrics
from .lora import set_train_mode
from .session import Session

EXAMPLES_DIR = "examples"


def write_outputs(session: Session, save_policy: Callable[..., None], step: int,
                  validation: dict[str, dict[str, float]]) -> None:
    """Plots, tokenizer report, the final adapter in RUN_DIR (``save_policy(directory, step, extra)``, the
    trainer's), example frames and the model card."""
    from .license import base_license
    from .model_card import CARD, render_card
    from .plots import CURVES, TRACES, plot_curves, plot_traces

    s, cfg = session, session.cfg
    acc = s.accelerator
    if not acc.is_main_process:
        if s.fsdp:
            save_policy(Path(os.devnull), step)  # take part in gathering the sharded weights
        acc.wait_for_everyone()
        return
    s.say("[finetune] writing plots, model card and the final adapter")
    set_train_mode(s.model, False, cfg.lora.train_vision)
    s.data.mixture.eval()
    with s.accelerator.autocast():
        traces = action_traces(s.policy, s.data.val, episodes=cfg.eval.trace_episodes,
                               max_steps=cfg.eval.trace_steps) if cfg.eval.trace_episodes else []
    tmp = s.run_dir / f".final-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        plots = [CURVES]
        plot_curves(read_metrics(s.run_dir), tmp / CURVES)
        if plot_traces(traces, tmp / TRACES):
            plots.append(TRACES)
        reports = tokenizer_reports(s)
        extra = {"validation": validation, "tokenizer_reports": {k: _short_report(r) for k, r in reports.items()},
                 "seconds": s.elapsed_s(), "finished": True}
        save_policy(tmp, step, extra)
        _write_examples(s, tmp / EXAMPLES_DIR)
        provenance = s.provenance(step, extra)
        base_dir = None
        if cfg.base == "default":
            from vla.backbones.loading import resolve_backbone

            base_dir = resolve_backbone("default", cfg.model.base_options)
        elif Path(cfg.base).is_dir():
            base_dir = cfg.base
        card = render_card({
            "run_dir": str(s.run_dir), "base": cfg.base, "base_options": cfg.model.base_options,
            "base_licence": base_license(cfg.base, base_dir),
            "datasets": [d.to_dict() for d in s.data.datasets],
            "embodiments": [e.to_dict() for e in s.policy.config.embodiments],
            "tokenizer": s.tokenizer.config(), "tokenizer_reports": reports, "validation": validation,
            "action_vocab": s.tokenizer.vocab_size, "action_token_mode": s.policy.config.action_token_mode,
            "decoding": s.policy.config.decoding,
            "training": {**provenance, "steps": step}, "config": cfg.to_dict(), "plots": plots,
        })
        (tmp / CARD).write_text(card)
        _publish(tmp, s.run_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write the final outputs to {s.run_dir}: {e.strerror or e}. The last "
                              f"checkpoint is complete: free disk space and run `vla finetune --resume "
                              f"{s.run_dir}` to write them") from e
    acc.wait_for_everyone()
    s.say(f"[finetune] done: {s.run_dir} (VLAPolicy.from_pretrained({str(s.run_dir)!r}))")


def tokenizer_reports(session: Session) -> dict[str, dict[str, Any]]:
    """Per embodiment: how the action tokenizer encodes the training chunks (tokens, reconstruction error)."""
    out = {}
    for name, emb in session.data.embodiments.items():
        phys = action_chunks(session.data, 512, embodiment=name, normalized=False)
        if phys:
            out[name] = tokenizer_report(session.tokenizer, np.stack(phys), emb.action_normalizer, emb.action_names)
    return out


def _write_examples(session: Session, directory: Path) -> None:
    """One validation frame per embodiment as PNG files + their instruction and state: ready for `vla predict`."""
    from PIL import Image

    directory.mkdir()
    index = {}
    for emb_name, datasets in session.data.val.items():
        s = datasets[0][0]
        files = []
        for cam, img in zip(session.data.embodiments[emb_name].cameras, s["images"]):
            f = f"{emb_name}_{cam.rsplit('.', 1)[-1]}.png"
            Image.fromarray(img).save(directory / f)
            files.append(f)
        index[emb_name] = {"images": files, "instruction": s["instruction"], "episode": s["episode_index"],
                           "frame": s["frame_index"], "dataset": s["dataset"],
                           "actions": np.asarray(s["actions"]).tolist()}
        if s.get("state") is not None:
            index[emb_name]["state"] = np.asarray(s["state"], dtype=float).tolist()
    (directory / "examples.json").write_text(json.dumps(index, indent=2) + "\n")


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
