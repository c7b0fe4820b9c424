"""VLAConfig: a policy's options, with the one set of defaults; saved as ``vla_config.json`` beside the
Hugging Face model directory (what a VLA checkpoint adds to it)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .embodiment import Embodiment
from .errors import CheckpointError, ConfigError, check_keys
from .prompt import DEFAULT_PROMPT_TEMPLATE

FORMAT_VERSION = 1
CONFIG_NAME = "vla_config.json"
DECODING_MODES = ("autoregressive", "parallel")
ACTION_TOKEN_MODES = ("new", "reuse")
# keys older checkpoints lack, and what they meant then (the current defaults differ)
LEGACY_DEFAULTS = {"decoding": "autoregressive"}


def default_decoding(tokenizer_kind: str) -> str:
    """Parallel (query slots, one forward) for fixed-length tokenizers (bins), else autoregressive (FAST)."""
    return "parallel" if tokenizer_kind == "bins" else "autoregressive"


@dataclass
class VLAConfig:
    """Everything beyond the backbone that turns model outputs into robot actions.

    The first fields are the options a user chooses (``VLAPolicy.from_backbone`` and ``vla finetune``'s
    ``model`` section take them from here); the rest is filled in when the policy is built or trained.
    """

    embodiments: list[Embodiment] = field(default_factory=list)
    action_token_mode: str = "new"  # new vocabulary entries, or reuse the last ordinary ids (OpenVLA)
    decoding: str | None = None  # None: default_decoding(the action tokenizer's kind)
    use_state: bool = False  # put the discretized proprioceptive state in the prompt
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    base_options: dict[str, Any] = field(default_factory=dict)  # e.g. the default backbone's layers kept
    # ------------------------------------------------------------ set when the policy is built
    action_token_ids: list[int] = field(default_factory=list)  # vocabulary id of action-tokenizer id i
    query_token_id: int | None = None  # parallel decoding's placeholder slot
    base_model: str | None = None  # set when the directory holds a LoRA adapter
    model_id: str = ""
    training: dict[str, Any] = field(default_factory=dict)  # provenance written by fine-tuning
    format_version: int = FORMAT_VERSION

    OPTIONS = ("action_token_mode", "decoding", "use_state", "prompt_template", "base_options")

    def __post_init__(self) -> None:
        self.embodiments = [e if isinstance(e, Embodiment) else Embodiment.from_dict(e) for e in self.embodiments]
        names = [e.name for e in self.embodiments]
        if len(set(names)) != len(names):
            raise ConfigError(f"embodiment names must be unique, got {names}")
        if self.decoding is not None and self.decoding not in DECODING_MODES:
            raise ConfigError(f"unknown decoding {self.decoding!r}; choose one of {DECODING_MODES}")
        if self.action_token_mode not in ACTION_TOKEN_MODES:
            raise ConfigError(f"unknown action_token_mode {self.action_token_mode!r}; choose one of {ACTION_TOKEN_MODES}")
        if self.prompt_template is None:
            self.prompt_template = DEFAULT_PROMPT_TEMPLATE
        if self.decoding == "parallel" and self.action_token_ids and self.query_token_id is None:
            raise ConfigError("parallel decoding needs query_token_id (the placeholder token's vocabulary id)")
        for key in ("{images}", "{instruction}", "{embodiment}", "{state}"):
            if key not in self.prompt_template:
                raise ConfigError(f"prompt_template lacks {key}: {self.prompt_template!r}")

    @classmethod
    def defaults(cls) -> "VLAConfig":
        """The options' defaults (what ``vla finetune --help`` shows for the model section)."""
        return cls()

    def resolved(self, tokenizer_kind: str) -> "VLAConfig":
        """A copy with ``decoding`` chosen for the action tokenizer, checked against it."""
        decoding = self.decoding or default_decoding(tokenizer_kind)
        if decoding == "parallel" and tokenizer_kind != "bins":
            raise ConfigError("parallel decoding needs a fixed-length action tokenizer (kind 'bins'); "
                              "use decoding='autoregressive' with FAST")
        return dataclasses.replace(self, decoding=decoding)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["embodiments"] = [e.to_dict() for e in self.embodiments]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VLAConfig":
        if not isinstance(d, dict):
            raise CheckpointError(f"{CONFIG_NAME} holds a {type(d).__name__}, not an object; the checkpoint is corrupt")
        version = d.get("format_version", 0)
        if not isinstance(version, int):
            raise CheckpointError(f"{CONFIG_NAME}: format_version {version!r} is not an integer; the checkpoint is corrupt")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format version {version} is newer than this vla supports ({FORMAT_VERSION}); "
                "upgrade the package: pip install -U vla"
            )
        check_keys(d, [f.name for f in dataclasses.fields(cls)], CONFIG_NAME)
        missing = [k for k in ("embodiments", "action_token_ids") if k not in d]
        if missing:
            raise TypeError(f"missing required keys: {', '.join(map(repr, missing))}")  # load() names the file
        return cls(**{**LEGACY_DEFAULTS, **d})

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "VLAConfig":
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing: {directory} is not a VLA checkpoint. Fine-tune a backbone with "
                "`vla finetune`, or build a policy with VLAPolicy.from_backbone(...).save_pretrained(dir)."
            )
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt") from e
        except (TypeError, AttributeError) as e:  # a required key missing, or a value of the wrong type
            raise CheckpointError(f"{path} is not a valid VLA config ({e}); the checkpoint is corrupt") from e
