"""peft LoRA on a vision-language model: where its parts are, what LoRA targets, train mode (frozen
towers stay in eval), frozen weights stored in bf16, parameter counts, and loading an adapter's weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vla.decoding import unwrap
from vla.errors import CheckpointError, ConfigError

from .checkpointing import load_safetensors
from .config import FinetuneConfig

# Attribute names of the three parts inside ``model.model`` across the supported families.
TOWER_NAMES = ("vision_tower", "vision_model", "visual")
PROJECTOR_NAMES = ("multi_modal_projector", "connector", "visual.merger")
LM_NAMES = ("language_model", "text_model")
# Qwen-VL keeps its projector (the 2x2 patch merger) inside the vision tower, and Qwen3-VL adds the
# DeepStack mergers that feed intermediate tower layers into the LM: all are trained as the projector.
EXTRA_PROJECTORS = ("deepstack_merger_list",)


@dataclass
class Parts:
    """Module paths (from the top transformers model) of the vision tower, projector and language model."""

    tower: str
    projector: str
    language_model: str
    extra_projectors: tuple[str, ...] = ()

    @property
    def projector_inside_tower(self) -> bool:
        return self.projector.startswith(self.tower + ".")


def find_parts(model) -> Parts:
    core = getattr(unwrap(model), "model", None)
    found = {}
    for key, names in (("tower", TOWER_NAMES), ("projector", PROJECTOR_NAMES), ("language_model", LM_NAMES)):
        name = next((n for n in names if core is not None and _has_path(core, n)), None)
        if name is None:
            raise ConfigError(
                f"the base model ({type(unwrap(model)).__name__}) has no {key.replace('_', ' ')} under "
                f"model.{'/'.join(names)}; supported VLM families: LLaVA, Idefics3/SmolVLM, PaliGemma, "
                "Qwen2.5-VL, Qwen3-VL, Gemma 3"
            )
        found[key] = f"model.{name}"
    tower = core.get_submodule(found["tower"].split(".", 1)[1])
    # each merger on its own: peft cannot save a ModuleList whole
    extra = tuple(f"{found['tower']}.{n}.{i}" for n in EXTRA_PROJECTORS for i in range(len(getattr(tower, n, ()))))
    return Parts(**found, extra_projectors=extra)


def _has_path(module, dotted: str) -> bool:
    for name in dotted.split("."):
        module = getattr(module, name, None)
        if module is None:
            return False
    return True



def lora_targets(model, parts: Parts, spec: str | list[str]) -> list[str]:
    """Full names of the LoRA target modules: by default every linear layer of the language model."""
    if spec != "language-model":
        return list(spec)
    prefix = parts.language_model + "."
    names = [n for n, m in unwrap(model).named_modules() if isinstance(m, nn.Linear) and n.startswith(prefix)]
    if not names:
        raise ConfigError(f"found no linear layers under {parts.language_model}; set lora.target_modules explicitly")
    return names


def tied_embeddings(model) -> bool:
    m = unwrap(model)
    out = m.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()


def module_name(model, module) -> str:
    return next(n for n, m in unwrap(model).named_modules() if m is module)


def apply_lora(policy, cfg: FinetuneConfig, seed: int):
    """Wrap ``policy.model`` in a peft LoRA model; returns the PeftModel (also set on the policy).

    Action-token rows are trained through ``trainable_token_indices``: on the input embeddings
    (plus the parallel-decoding query slot) and on the output layer. When the two are tied
    (PaliGemma, SmolLM2), peft ties the lm_head rows to the embedding's by itself, and naming
    lm_head again (or putting it in modules_to_save) is an error, so only the embedding is named.
    """
    from peft import LoraConfig, get_peft_model

    model = policy.model
    parts = find_parts(model)
    ids = list(policy.config.action_token_ids)
    extra = [policy.config.query_token_id] if policy.config.query_token_id is not None else []
    embed = module_name(model, unwrap(model).get_input_embeddings()).rsplit(".", 1)[-1]
    tokens = {embed: sorted(set(ids + extra))}
    if not tied_embeddings(model):
        head = module_name(model, unwrap(model).get_output_embeddings()).rsplit(".", 1)[-1]
        tokens[head] = sorted(set(ids))
    to_save = []
    if cfg.lora.train_projector:
        to_save += [parts.projector.rsplit(".", 1)[-1], *(p.split(".", 2)[-1] for p in parts.extra_projectors)]
    if cfg.lora.train_vision:
        to_save.append(parts.tower.rsplit(".", 1)[-1])
    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=lora_targets(model, parts, cfg.lora.target_modules),
        modules_to_save=to_save or None, trainable_token_indices=tokens,
    )
    if cfg.lora.quantize == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # LoRA A matrices are random: same seed, same start (and exact resume)
        peft_model = get_peft_model(model, lora)
    if cfg.train.gradient_checkpointing:
        unwrap(peft_model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        unwrap(peft_model).config.use_cache = False
    policy.model = peft_model
    return peft_model


def set_train_mode(model, training: bool, train_vision: bool) -> None:
    """``model.train(training)``, but a frozen vision tower stays in eval mode and BatchNorm always does.

    peft's ``.train()`` reaches every submodule: a frozen CNN tower would then update its BatchNorm
    running statistics and normalize with batch statistics (silently wrong features).
    """
    model.train(training)
    tower = unwrap(model).get_submodule(find_parts(model).tower)
    if training and not train_vision:
        tower.eval()
    for m in tower.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def store_frozen_weights(model, dtype: torch.dtype) -> None:
    """Keep frozen weights in ``dtype`` (bf16): autocast would otherwise re-cast them on every step.

    Trainable parameters (LoRA, action-token rows, projector) stay fp32, and so do the optimizer state
    and the loss; tied weights stay tied (the Parameter object is kept, only its data changes).
    """
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(dtype)
    for module in model.modules():  # BatchNorm running statistics follow their (frozen) weights
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.data = module.running_mean.data.to(dtype)
            module.running_var.data = module.running_var.data.to(dtype)


def parameter_groups(model) -> dict[str, int]:
    """Trainable parameter counts by kind, plus the total."""
    model = unwrap(model) if not hasattr(model, "peft_config") else model
    parts = find_parts(model)
    groups = {"lora": 0, "action_token_rows": 0, "projector": 0, "vision_tower": 0, "other": 0}
    total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if not p.requires_grad:
            continue
        if "lora_" in name:
            groups["lora"] += p.numel()
        elif "trainable_tokens_delta" in name:
            groups["action_token_rows"] += p.numel()
        elif any(q + "." in name for q in (parts.projector.rsplit(".", 1)[-1],
                                          *(p.split(".", 2)[-1] for p in parts.extra_projectors))):
            groups["projector"] += p.numel()
        elif parts.tower.rsplit(".", 1)[-1] + "." in name:
            groups["vision_tower"] += p.numel()
        else:
            groups["other"] += p.numel()
    groups["trainable"] = sum(groups.values())
    groups["total"] = total
    return groups


def load_adapter_weights(model, path: Path, fix: str) -> None:
    """Load ``path/adapter_model.safetensors`` into the LoRA ``model``; every key must fit.

    ``fix`` ends the error when the file is missing or unreadable (what the user should do instead).
    """
    from peft import set_peft_model_state_dict

    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path} has no adapter_model.safetensors; {fix}")
    result = set_peft_model_state_dict(model, load_safetensors(weights, fix))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise CheckpointError(f"{weights} does not fit the model built from this config (unexpected keys "
                              f"{unexpected[:3]}...): the LoRA settings differ from the checkpoint's (lora.r, "
                              "lora.target_modules, lora.train_projector)")
