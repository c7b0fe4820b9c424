"""``vla export RUN_DIR --merge --out DIR``: a standalone checkpoint (LoRA merged into the base).

The result is a plain transformers model directory plus vla_config.json, action tokenizer and the
model card: it loads with ``VLAPolicy.from_pretrained(DIR)`` without peft and without the base.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from vla.errors import CheckpointError, ConfigError, VLAError

PROG = "vla export"
COPIED = ("README.md", "training_curves.png", "action_traces.png", "examples")


def export_merged(run_dir: str | Path, out: str | Path, *, dtype: torch.dtype | None = None,
                  overwrite: bool = False) -> Path:
    """Merge the run's adapter into its base and write a standalone checkpoint to ``out`` (atomically)."""
    from vla.policy import VLAPolicy

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "adapter_config.json").is_file():
        if (run_dir / "vla_config.json").is_file():
            raise CheckpointError(f"{run_dir} is already a standalone checkpoint (no LoRA adapter): nothing to merge")
        raise CheckpointError(f"{run_dir} holds no finished run (adapter_config.json and vla_config.json are missing); "
                              "export a run after `vla finetune` completed, or a checkpoint under RUN_DIR/checkpoints/")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    policy = VLAPolicy.from_pretrained(run_dir, dtype=dtype, merge_adapter=True)
    policy.config = dataclasses.replace(policy.config, base_model=None, base_options={},
                                        training={**policy.config.training, "merged_from": str(run_dir.resolve())})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        policy.save_pretrained(tmp)
        for name in COPIED:
            src = run_dir / name
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
        if (tmp / "README.md").is_file():  # the card describes an adapter; say it is merged now
            text = (tmp / "README.md").read_text().replace("library_name: peft", "library_name: transformers", 1)
            (tmp / "README.md").write_text(text)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write {out}: {e.strerror or e}") from e
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=PROG, description="Write a standalone checkpoint from a fine-tuning run: the LoRA adapter (and the "
                               "trained projector and action-token rows) merged into the base model.",
        epilog="example: vla export runs/demo --merge --out models/demo-merged",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="run directory (or one of its checkpoints/step-N directories)")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base (required; the only mode)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="weights dtype")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)
    if not args.merge:
        print(f"{PROG}: error: pass --merge (an adapter run directory is already loadable as is)", file=sys.stderr)
        return 2
    try:
        out = export_merged(args.run_dir, args.out, dtype=getattr(torch, args.dtype), overwrite=args.overwrite)
    except VLAError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"merged checkpoint written to {out} (loads with VLAPolicy.from_pretrained, no peft needed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
