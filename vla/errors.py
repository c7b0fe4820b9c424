"""Typed errors. Every message names the problem and how to fix it."""

from __future__ import annotations

import difflib
from typing import Iterable


class VLAError(Exception):
    """Base class for all errors raised by the vla package."""


class ConfigError(VLAError, ValueError):
    """A configuration key or value is invalid."""


class UnknownEmbodimentError(VLAError, KeyError):
    """The requested embodiment is not in the checkpoint or mixture."""

    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, list(known)
        super().__init__(
            f"unknown embodiment {name!r}; this checkpoint knows {sorted(known)}. "
            "Pass one of those names, or fine-tune with data for the new embodiment."
        )

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class MissingStatisticsError(VLAError, ValueError):
    """Normalization needs statistics that were never computed."""


class InvalidInputError(VLAError, ValueError):
    """An observation (image, state, cameras, instruction) is malformed.

    ``code`` names the kind of problem for machines (the server's error code), the message for people.
    """

    code = "invalid_input"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class CheckpointError(VLAError, OSError):
    """A checkpoint directory is missing files or has an unsupported format."""


class DecodingError(VLAError, RuntimeError):
    """The model produced a token sequence that cannot be decoded into actions."""


class DatasetError(VLAError, ValueError):
    """A dataset is missing files, truncated, or does not match its metadata."""


def check_keys(d: dict, allowed: Iterable[str], what: str) -> None:
    """Raise a ConfigError for unknown keys, with a "did you mean" hint."""
    allowed = list(allowed)
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {key!r} in {what}.{hint} Allowed keys: {allowed}")


def pick(name: str, valid, what: str) -> str:
    """Return ``name`` if valid, else raise a ConfigError listing the valid names (with a close match)."""
    valid = list(valid)
    if name in valid:
        return name
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown {what} {name!r}.{hint} Valid {what}s: {valid}")
