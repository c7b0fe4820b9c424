"""What a VLA checkpoint adds to a Hugging Face model directory: ``vla_config.json``."""

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


@dataclass
class VLAConfig:
    """Everything beyond the backbone that turns model outputs into robot actions."""

    embodiments: list[Embodiment]
    action_token_ids: list[int]  # vocabulary id of action-tokenizer id i
    action_token_mode: str = "new"
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    decoding: str = "autoregressive"
    query_token_id: int | None = None  # parallel decoding's placeholder slot
    use_state: bool = False
    base_model: str | None = None  # set when the directory holds a LoRA adapter
    base_options: dict[str, Any] = field(default_factory=dict)  # e.g. the default backbone's layers kept
    model_id: str = ""
    training: dict[str, Any] = field(default_factory=dict)  # provenance written by fine-tuning
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.embodiments = [e if isinstance(e, Embodiment) else Embodiment.from_dict(e) for e in self.embodiments]
        names = [e.name for e in self.embodiments]
        if len(set(names)) != len(names):
            raise ConfigError(f"embodiment names must be unique, got {names}")
        if self.decoding not in DECODING_MODES:
            raise ConfigError(f"unknown decoding {self.decoding!r}; choose one of {DECODING_MODES}")
        if self.decoding == "parallel" and self.query_token_id is None:
            raise ConfigError("parallel decoding needs query_token_id (the placeholder token's vocabulary id)")
        for key in ("{images}", "{instruction}", "{embodiment}", "{state}"):
            if key not in self.prompt_template:
                raise ConfigError(f"prompt_template lacks {key}: {self.prompt_template!r}")

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
        return cls(**d)

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
