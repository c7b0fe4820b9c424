"""Where the shipped default policy lives, and how a missing one is reported."""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError

DEFAULT_POLICY_DIR = Path(__file__).parent / "default_policy"


def default_policy_path() -> Path:
    """The default multi-embodiment policy shipped with the package (adapter on the default backbone)."""
    if not (DEFAULT_POLICY_DIR / "vla_config.json").is_file():
        raise CheckpointError(
            f"no default policy is shipped in this install ({DEFAULT_POLICY_DIR} is missing); "
            "pass --model DIR with a checkpoint from `vla finetune`"
        )
    return DEFAULT_POLICY_DIR


def resolve_policy(model: str | Path | None) -> str | Path:
    """``None`` means the default policy; anything else is a checkpoint dir or hub id."""
    return default_policy_path() if model is None else model
