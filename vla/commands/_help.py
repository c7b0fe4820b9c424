"""The one help layout of every ``vla`` command: examples verbatim, option defaults shown."""

from __future__ import annotations

import argparse
from typing import Any


def _says_something(default: Any) -> bool:
    """A default worth printing: not absent (None, SUPPRESS), not an off switch (False), not empty."""
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    return not (isinstance(default, (list, tuple)) and not default)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of a multi-line description or epilog (examples, tables) and wraps a
    one-paragraph text to the terminal; appends ``(default: X)`` to an option's help where X says
    something (not None, False or []) and the help does not already name its default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip("\n"):
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if "default" in help_.lower() or not _says_something(action.default):
            return help_
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            help_ += " (default: %(default)s)"
        return help_


def parser(prog: str, description: str | None = None, epilog: str | None = None, **kwargs: Any
           ) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` for command ``prog`` with the shared help layout."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=HelpFormatter, **kwargs)


def subcommand(subparsers: Any, name: str, help: str, description: str | None = None,
               epilog: str | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand's parser (``vla data info``) with the shared help layout."""
    return subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                 formatter_class=HelpFormatter, **kwargs)
