"""Load a stock transformers VLM and its processor from a directory, a hub id, or "default"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForImageTextToText

from ..errors import CheckpointError, ConfigError
from . import efficientnet  # noqa: F401  (registers the default backbone's vision tower with AutoModel)
from .processors import load_processor

SUPPORTED_MODEL_TYPES = ("llava", "idefics3", "smolvlm", "paligemma", "qwen2_5_vl", "qwen3_vl", "gemma3")
DEFAULT_BACKBONE = "default"


def resolve_backbone(name_or_path: str | Path, options: dict[str, Any] | None = None) -> str:
    """Turn "default" into the built default backbone's directory (building it once)."""
    if str(name_or_path) == DEFAULT_BACKBONE:
        from .default import ensure_default_backbone

        return str(ensure_default_backbone(**(options or {})))
    return str(name_or_path)


def load_backbone(name_or_path: str | Path, *, options: dict[str, Any] | None = None,
                  dtype: torch.dtype | None = None, trust_remote_code: bool = False):
    """Return (model, processor) for a supported VLM; fail with the reason and the fix otherwise."""
    source = resolve_backbone(name_or_path, options)
    local = Path(source).is_dir()
    if not local and Path(source).exists():
        raise CheckpointError(f"{source} is a file; pass the model directory that holds config.json")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as e:
        where = "local directory" if local else "Hugging Face Hub id"
        raise CheckpointError(
            f"could not load the backbone config from {where} {source!r}: {e}. Pass a local model directory "
            "(e.g. one written by save_pretrained), 'default' for the offline default backbone, or a hub id "
            "on a machine that can reach the Hub (unset HF_HUB_OFFLINE)."
        ) from e
    if config.model_type not in SUPPORTED_MODEL_TYPES and not trust_remote_code:
        raise ConfigError(
            f"{source!r} is a {config.model_type!r} model; supported VLM backbones are {SUPPORTED_MODEL_TYPES}."
        )
    try:
        # safetensors only: a pytorch_model.bin is a pickle, and we never unpickle weights
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                            trust_remote_code=trust_remote_code)
    except (OSError, SafetensorError) as e:  # missing files, or a truncated/corrupt safetensors header
        raise CheckpointError(
            f"could not load the weights of {source!r}: {e}. The directory needs its model.safetensors "
            "(or sharded *.safetensors with their index); re-save the model with save_pretrained() "
            "(safetensors is the default) or copy the missing files."
        ) from e
    processor = load_processor(source, config.model_type, trust_remote_code=trust_remote_code)
    if not hasattr(processor, "tokenizer") or not getattr(processor, "image_token", None):
        raise CheckpointError(
            f"{source!r} has no multimodal processor (AutoProcessor returned {type(processor).__name__}); "
            "save the processor with the model (processor.save_pretrained(dir))."
        )
    return model.eval(), processor
