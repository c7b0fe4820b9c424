"""What a fine-tuning run ships as (the command is ``vla export RUN_DIR (--merge | --adapter) --out DIR``).

``--merge`` writes a standalone checkpoint (LoRA merged into the base): a plain transformers model
directory plus vla_config.json, action tokenizer and model card; it loads without peft or the base.

``--adapter`` writes the small deployable adapter (LoRA, projector, action-token rows, tokenizer,
statistics, card) without the optimizer state; it loads on the base its vla_config.json names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from vla.errors import CheckpointError, ConfigError

COPIED = ("README.md", "training_curves.png", "action_traces.png", "examples")
# What an adapter needs to load and predict; training_state.pt (optimizer, RNG) stays in the run.
REQUIRED = ("adapter_config.json", "adapter_model.safetensors", "vla_config.json", "action_tokenizer.json")
ADAPTER_FILES = REQUIRED + ("action_tokenizer_bpe.json", "tokenizer.json", "tokenizer_config.json",
                            "chat_template.jinja", "processor_config.json")


def export_merged(run_dir: str | Path, out: str | Path, *, dtype: torch.dtype | None = None,
                  overwrite: bool = False) -> Path:
    """Merge the run's adapter into its base and write a standalone checkpoint to ``out`` (atomically)."""
    from vla.policy import VLAPolicy

    run_dir, out = Path(run_dir), Path(out)
    _check_run(run_dir)
    _check_out(out, overwrite)
    policy = VLAPolicy.from_pretrained(run_dir, dtype=dtype or "float32", merge_adapter=True,
                                       optimize_for_inference=False)
    policy.config = dataclasses.replace(policy.config, base_model=None, base_options={},
                                        training={**policy.config.training, "merged_from": str(run_dir.resolve())})

    def write(tmp: Path) -> None:
        policy.save_pretrained(tmp)
        _copy(run_dir, tmp, COPIED)
        if (tmp / "README.md").is_file():  # the card describes an adapter; say it is merged now
            text = (tmp / "README.md").read_text().replace("library_name: peft", "library_name: transformers", 1)
            (tmp / "README.md").write_text(text)

    return _write_atomically(out, write)


def export_adapter(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Copy the run's deployable adapter (no optimizer state) to ``out``; it loads on its recorded base."""
    run_dir, out = Path(run_dir), Path(out)
    _check_run(run_dir)
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise CheckpointError(f"{run_dir} lacks {', '.join(missing)}: export a run after `vla finetune` completed, "
                              "or a checkpoint under RUN_DIR/checkpoints/")
    _check_out(out, overwrite)

    def write(tmp: Path) -> None:
        _copy(run_dir, tmp, ADAPTER_FILES + COPIED)
        cfg_path = tmp / "adapter_config.json"  # the run recorded a local cache path; the base is vla_config's
        adapter_cfg = json.loads(cfg_path.read_text())
        adapter_cfg["base_model_name_or_path"] = json.loads((tmp / "vla_config.json").read_text())["base_model"]
        cfg_path.write_text(json.dumps(adapter_cfg, indent=2) + "\n")

    return _write_atomically(out, write)


def _check_run(run_dir: Path) -> None:
    if not (run_dir / "adapter_config.json").is_file():
        if (run_dir / "vla_config.json").is_file():
            raise CheckpointError(f"{run_dir} is already a standalone checkpoint (no LoRA adapter): nothing to export")
        raise CheckpointError(f"{run_dir} holds no finished run (adapter_config.json and vla_config.json are missing); "
                              "export a run after `vla finetune` completed, or a checkpoint under RUN_DIR/checkpoints/")


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty: choose another --out or pass --overwrite")


def _copy(src_dir: Path, dst_dir: Path, names) -> None:
    for name in names:
        src = src_dir / name
        if src.is_dir():
            shutil.copytree(src, dst_dir / name)
        elif src.is_file():
            shutil.copy2(src, dst_dir / name)


def _write_atomically(out: Path, write) -> Path:
    """Build ``out`` in a temporary sibling, then swap it in: a failed export leaves the old one intact."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write {out}: {e.strerror or e}") from e
    return out
