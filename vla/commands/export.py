"""``vla export RUN_DIR (--merge | --adapter) --out DIR``: what a fine-tuning run ships as (the library part
is ``vla.finetune.export``)."""

from __future__ import annotations

import argparse
import sys

from vla.errors import VLAError

from . import _help

PROG = "vla export"
EPILOG = """\
examples:
  vla export runs/demo --merge --out models/demo-merged     # no peft or base needed
  vla export runs/demo --adapter --out models/demo-adapter   # ~15 MB, loads on its base"""


def build_parser() -> argparse.ArgumentParser:
    p = _help.parser(PROG, "Write what a fine-tuning run ships as: a standalone checkpoint with the LoRA adapter (and "
                           "the trained projector and action-token rows) merged into the base (--merge), or the small "
                           "adapter alone without optimizer state (--adapter).", EPILOG)
    p.add_argument("run_dir", help="run directory (or one of its checkpoints/step-N directories)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--merge", action="store_true", help="merge the adapter into the base")
    mode.add_argument("--adapter", action="store_true", help="copy the adapter, tokenizer, statistics and card only")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="weights dtype (--merge)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vla export``; returns the exit code (2 on bad input)."""
    args = build_parser().parse_args(argv)
    import torch

    from vla.finetune.export import export_adapter, export_merged

    try:
        if args.merge:
            out = export_merged(args.run_dir, args.out, dtype=getattr(torch, args.dtype), overwrite=args.overwrite)
        else:
            out = export_adapter(args.run_dir, args.out, overwrite=args.overwrite)
    except VLAError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    what = "merged checkpoint (no peft needed)" if args.merge else "adapter (loads on its recorded base)"
    print(f"{what} written to {out}; load it with VLAPolicy.from_pretrained or `vla serve --model {out}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
