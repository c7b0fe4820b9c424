"""The ``vla`` commands: one module per command, each a parser and a thin ``main(argv) -> exit code``.

The only place besides the dispatcher (vla/cli.py) that parses command lines (argparse) or imports the
apps (vla.serving, vla.finetune): a library module takes plain arguments, and what it needs from an app
as an argument that the command passes in. Every parser comes from ``_help.parser``.
"""
