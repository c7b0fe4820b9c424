"""Typed errors. Every message names the problem and how to fix it."""


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
