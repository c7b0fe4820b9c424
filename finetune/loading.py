"""What a run starts from: a backbone (checked before any data is read, or loaded in 4-bit for QLoRA), a
merged VLA checkpoint (``--base``), or a trained run's adapter (``init_from``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import torch

from vla.configuration import CONFIG_NAME
from vla.errors import CheckpointError, ConfigError

from .config import FinetuneConfig
from .lora import PROJECTOR_NAMES, TOWER_NAMES


def is_vla_checkpoint(base: str) -> bool:
    return (Path(base) / CONFIG_NAME).is_file()


def require_4bit() -> None:
    """QLoRA needs CUDA and bitsandbytes: say which is missing and what to do."""
    problems = []
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is visible to torch")
    if importlib.util.find_spec("bitsandbytes") is None:
        problems.append("the bitsandbytes package is not installed (pip install bitsandbytes)")
    if problems:
        raise ConfigError("lora.quantize=4bit (QLoRA) is not possible here: " + "; ".join(problems) +
                          ". Train without quantization (lora.quantize=none), or run on a CUDA machine with bitsandbytes.")


def load_quantized(base: str, options: dict, parts_hint: Sequence[str] = ()):
    """(model, processor) with the language model's linear layers in 4-bit NF4 (QLoRA)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, BitsAndBytesConfig

    from vla.backbones.loading import SUPPORTED_MODEL_TYPES, resolve_backbone
    from vla.backbones.processors import load_processor

    require_4bit()
    source = resolve_backbone(base, options)
    config = AutoConfig.from_pretrained(source)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"{base!r} is a {config.model_type!r} model; supported VLM backbones are {SUPPORTED_MODEL_TYPES}")
    skip = [*TOWER_NAMES, *PROJECTOR_NAMES, "lm_head", *parts_hint]  # only the LM's linears are quantized
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=skip)
    model = AutoModelForImageTextToText.from_pretrained(source, quantization_config=quant, device_map={"": 0})
    return model.eval(), load_processor(source, config.model_type)



def check_base(base: str) -> None:
    """Fail fast (before reading any data) when --base is not a supported VLM or cannot be found."""
    if base == "default" or is_vla_checkpoint(base):
        return
    from transformers import AutoConfig

    from vla.backbones.loading import SUPPORTED_MODEL_TYPES

    local = Path(base).is_dir()
    if not local and (Path(base).exists() or base.startswith((".", "/", "~"))):
        raise CheckpointError(f"--base {base}: no such model directory")
    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as e:
        where = "directory" if local else "Hugging Face Hub id"
        raise CheckpointError(
            f"--base {base}: could not read a model config from the {where} ({e}). Pass 'default', a local VLM "
            "directory (config.json + processor), a merged VLA checkpoint, or a hub id on a machine that can reach "
            "the Hub (unset HF_HUB_OFFLINE)"
        ) from e
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"--base {base} is a {config.model_type!r} model, not a supported vision-language model; supported "
            f"backbone types: {', '.join(SUPPORTED_MODEL_TYPES)} (or 'default')"
        )


def load_init_checkpoint(cfg: FinetuneConfig):
    """The adapter checkpoint ``init_from`` names, checked against this run's base and model options."""
    from vla.policy import VLAPolicy

    src = Path(cfg.init_from)
    if not (src / "adapter_config.json").is_file():
        raise CheckpointError(f"init_from {src}: not an adapter checkpoint (no adapter_config.json); pass a run "
                              "directory or vla/default_policy, or use --base for a merged checkpoint")
    policy = VLAPolicy.from_pretrained(src, dtype="float32", optimize_for_inference=False)
    c = policy.config
    base = str(Path(cfg.base).resolve()) if Path(cfg.base).is_dir() else cfg.base  # a run records its base resolved
    mismatches = [f"{key}: the checkpoint has {theirs!r}, this run {ours!r}" for key, theirs, ours in (
        ("base", c.base_model, base), ("model.base_options", dict(c.base_options or {}), cfg.model.base_options),
        ("model.action_tokenizer", policy.action_tokenizer.kind, cfg.model.action_tokenizer),
        ("model.decoding", c.decoding, cfg.model.policy_config().decoding),
        ("model.action_token_mode", c.action_token_mode, cfg.model.action_token_mode),
        ("model.use_state", c.use_state, cfg.model.use_state)) if theirs != ours]
    if mismatches:
        raise ConfigError(f"init_from {src} was trained with other model options; set them as it has them: "
                          + "; ".join(mismatches))
    return policy



def load_base_checkpoint(base: str):
    """A merged VLA checkpoint to continue from (an adapter checkpoint must be merged first)."""
    from vla.policy import VLAPolicy

    if (Path(base) / "adapter_config.json").is_file():
        raise CheckpointError(
            f"{base} is a LoRA adapter checkpoint; to continue fine-tuning from it, merge it first: "
            f"vla export {base} --merge --out MERGED_DIR, then pass --base MERGED_DIR"
        )
    return VLAPolicy.from_pretrained(base, dtype="float32", optimize_for_inference=False)
