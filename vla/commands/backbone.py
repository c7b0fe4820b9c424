"""``vla backbone build``: assemble the offline default backbone once (the library part is
``vla.backbones.default``)."""

from __future__ import annotations

import argparse
import sys

from . import _help


def build_parser() -> argparse.ArgumentParser:
    p = _help.parser("vla backbone")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = _help.subcommand(
        sub, "build", "convert EfficientNet-Lite0 + SmolLM2-135M into a LLaVA model dir (cached)",
        description="Assemble the default backbone once: EfficientNet-Lite0 (ImageNet) vision tower + "
                    "SmolLM2-135M-Instruct, in a stock LlavaForConditionalGeneration. The projector between "
                    "them is new (random) and is learned during fine-tuning. Written to $VLA_CACHE "
                    "(default ~/.cache/vla) unless --out is given.",
    )
    build.add_argument("--layers", type=int, default=None, help="keep only the first K decoder layers (default: all 30)")
    build.add_argument("--image-tokens", type=int, choices=(49, 16), default=49,
                       help="visual tokens per camera: 49 (7x7 grid) or 16 (pooled 4x4, cheaper)")
    build.add_argument("--out", default=None, help="output directory (default: the cache path for these options)")
    build.add_argument("--force", action="store_true", help="rebuild even if the directory exists")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vla backbone``; returns the exit code."""
    args = build_parser().parse_args(argv)
    from vla.backbones.default import build_default_backbone

    path = build_default_backbone(args.out, num_layers=args.layers, image_tokens=args.image_tokens, force=args.force)
    print(f"default backbone ready at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
