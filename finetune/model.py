"""The model side of fine-tuning: base loading, peft LoRA setup, the action-token loss and the vision cache.
(Over 400 lines: loading, LoRA, loss and vision cache are the four ways training touches the backbone.)

Loss: hidden states come from ``vla.decoding.hidden_states`` (the backbone without its output layer);
only the positions that predict action tokens are multiplied by the action rows of the output layer,
so the cost is (tokens x action vocabulary), not (positions x full vocabulary).
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from vla.configuration import CONFIG_NAME
from vla.decoding import action_head, extend, hidden_states, model_position_ids, unwrap
from vla.errors import CheckpointError, ConfigError

from .config import FinetuneConfig

IGNORE = -100
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


# ------------------------------------------------------------------------------------- peft
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


# ------------------------------------------------------------------------- action rows and loss
class ActionLoss(nn.Module):
    """Cross-entropy over the action vocabulary at the positions that predict action tokens.

    ``forward(inputs, appended, labels)``: ``inputs`` are the left-padded prompts from
    ``VLAPolicy.prepare`` (train/serve parity), ``appended`` (B, T) the teacher-forced action
    tokens (autoregressive) or query slots (parallel), ``labels`` (B, T) action-vocabulary indices
    with -100 where no loss is taken (padding of shorter sequences, masked steps).
    ``label_sigma`` > 0 (bins only) replaces each one-hot target with a Gaussian of that standard
    deviation in bins, integrated over the bins (HL-Gauss, Imani & White 2018; Farebrother et al.
    2024), so a near miss costs less than a far one and neighbouring bins learn from each other.
    Returns (mean loss, number of labelled tokens, number predicted right).
    """

    def __init__(self, model, action_ids: Sequence[int], parallel: bool, label_sigma: float = 0.0):
        super().__init__()
        self.model = model
        self.action_ids = list(action_ids)
        self.parallel = parallel
        self.label_sigma = label_sigma

    def targets(self, target: torch.Tensor) -> torch.Tensor:
        """(n, vocab) soft targets: the mass of N(bin, label_sigma) that falls on each bin."""
        edges = torch.arange(len(self.action_ids) + 1, device=target.device, dtype=torch.float32) - 0.5
        cdf = torch.special.ndtr((edges[None, :] - target[:, None].float()) / self.label_sigma)
        mass = cdf[:, 1:] - cdf[:, :-1]
        return mass / mass.sum(-1, keepdim=True)  # the tails beyond the first and last bin go to the rest

    def forward(self, inputs: dict[str, torch.Tensor], appended: torch.Tensor, labels: torch.Tensor):
        prompt_len = inputs["input_ids"].shape[1]
        steps = appended.shape[1]
        out = hidden_states(self.model, extend(self.model, inputs, appended))
        start = prompt_len if self.parallel else prompt_len - 1  # position p predicts the token at p + 1
        h = out.last_hidden_state[:, start:start + steps]
        weight, bias = action_head(self.model, self.action_ids)
        valid = labels != IGNORE
        h = h[valid]  # only labelled positions are multiplied by the action rows
        logits = (h.to(weight.dtype) @ weight.T).float()
        if bias is not None:
            logits = logits + bias.float()
        target = labels[valid]
        n = target.numel()
        soft = self.targets(target) if self.label_sigma > 0 else target
        loss = nn.functional.cross_entropy(logits, soft, reduction="sum") / max(n, 1)
        correct = (logits.argmax(-1) == target).sum()
        return loss, torch.tensor(n, device=loss.device), correct


class NaiveLoss(ActionLoss):
    """The incumbent path, for benchmarks: full-vocabulary logits at every position through the model's
    own forward (lm_head over all positions), then cross-entropy restricted to the action positions."""

    def forward(self, inputs, appended, labels):
        prompt_len = inputs["input_ids"].shape[1]
        steps = appended.shape[1]
        full = extend(self.model, inputs, appended)
        logits = self.model(**full, position_ids=model_position_ids(self.model, full)).logits
        start = prompt_len if self.parallel else prompt_len - 1
        logits = logits[:, start:start + steps].float()
        valid = labels != IGNORE
        target = torch.as_tensor(self.action_ids, device=logits.device)[labels[valid]]
        selected = logits[valid]
        n = target.numel()
        loss = nn.functional.cross_entropy(selected, target, reduction="sum") / max(n, 1)
        return loss, torch.tensor(n, device=loss.device), (selected.argmax(-1) == target).sum()


# ------------------------------------------------------------------------------ vision cache
class VisionFeatureCache:
    """Per-frame cache of a frozen vision tower's outputs (bounded, least recently used dropped).

    Installed as an instance-level ``forward`` of the tower: inside ``with cache.keys(k)`` the
    tower returns stored outputs for known frames and computes the others. Outside the context,
    and whenever the images do not match the keys, it is the plain tower.

    Exactness: a frame's features must not depend on the batch it first came in (a resumed run
    would otherwise see last-bit differences). Misses are therefore computed one image at a time,
    except in ``fill`` (``batched=True``), which runs over every training frame in a fixed order
    and batch size before training starts, the same way in a fresh and in a resumed run.
    """

    def __init__(self, tower: nn.Module, max_bytes: float):
        self.tower = tower
        self.max_bytes = max_bytes
        self.store: OrderedDict[Any, dict[str, Any]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        self._keys: list | None = None
        self._batched = False
        self._forward = tower.forward
        tower.forward = self._cached_forward  # instance attribute: the class and the library stay untouched

    def remove(self) -> None:
        if self.tower.__dict__.get("forward") == self._cached_forward:
            del self.tower.forward

    def __contains__(self, key) -> bool:
        return key in self.store

    @contextmanager
    def keys(self, keys: list | None, batched: bool = False):
        self._keys, self._batched = keys, batched
        try:
            yield
        finally:
            self._keys, self._batched = None, False

    def _cached_forward(self, pixel_values, *args, **kwargs):
        keys = self._keys
        n = pixel_values.shape[0]
        if keys is None or n != len(keys) or args:
            return self._forward(pixel_values, *args, **kwargs)
        missing = list(dict.fromkeys(i for i, k in enumerate(keys) if k not in self.store))
        self.misses += len(missing)
        self.hits += n - len(missing)
        groups = [missing] if self._batched else [[i] for i in missing]
        computed = {}
        for group in filter(None, groups):
            idx = torch.as_tensor(group, device=pixel_values.device)
            sliced = {k: (v[idx] if torch.is_tensor(v) and v.shape[:1] == pixel_values.shape[:1] else v)
                      for k, v in kwargs.items()}
            with torch.no_grad():
                out = self._forward(pixel_values[idx], **sliced)
            fields = _detach(dict(out))
            for j, i in enumerate(group):
                computed[keys[i]] = {"type": type(out), "fields": _row(fields, j)}
        parts = []
        for k in keys:
            item = computed.get(k)
            if item is None:
                item = self.store[k]
                self.store.move_to_end(k)
            parts.append(item)
        for k, item in computed.items():
            self._put(k, item)
        return parts[0]["type"](**_concat([p["fields"] for p in parts]))

    def _put(self, key, item) -> None:
        size = _nbytes(item["fields"])
        self.store[key] = item
        self.bytes += size
        while self.bytes > self.max_bytes and len(self.store) > 1:
            _, old = self.store.popitem(last=False)
            self.bytes -= _nbytes(old["fields"])


def _row(x, j: int):
    """Row j of every batched tensor, copied (a view would keep the whole batch alive)."""
    if torch.is_tensor(x):
        return x[j:j + 1].clone()
    if isinstance(x, dict):
        return {k: _row(v, j) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_row(v, j) for v in x)
    return x


IMAGE_INPUTS = ("pixel_values", "pixel_attention_mask", "image_sizes")


def image_features(model, inputs: dict[str, torch.Tensor]):
    """Run only the vision side (tower + projector) of a batch, e.g. to fill the feature cache."""
    core = unwrap(model).model
    return core.get_image_features(**{k: inputs[k] for k in IMAGE_INPUTS if k in inputs})


def _detach(x):
    if torch.is_tensor(x):
        return x.detach()
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(v) for v in x)
    return x


def _nbytes(x) -> int:
    if torch.is_tensor(x):
        return x.numel() * x.element_size()
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(v) for v in x)
    return 0


def _concat(items: list):
    first = items[0]
    if torch.is_tensor(first):
        return torch.cat(items, 0)
    if isinstance(first, dict):
        return {k: _concat([it[k] for it in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_concat([it[j] for it in items]) for j in range(len(first)))
    return first


def vision_cache_blocker(model) -> str | None:
    """Why per-frame caching of the frozen tower's outputs cannot serve this model (None when it can)."""
    if find_parts(model).projector_inside_tower:
        return ("the Qwen-VL vision tower takes the patches of all images as one sequence (dynamic resolution) "
                "and ends in the projector (patch merger), which is trained")
    return None


def install_vision_cache(model, max_gb: float) -> VisionFeatureCache:
    tower = unwrap(model).get_submodule(find_parts(model).tower)
    return VisionFeatureCache(tower, max_gb * 2**30)


# --------------------------------------------------------------------------------- base checks
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


def load_adapter_weights(model, path: Path) -> None:
    """Load ``path/adapter_model.safetensors`` into the LoRA ``model``; every key must fit."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path} has no adapter_model.safetensors")
    result = set_peft_model_state_dict(model, load_file(weights))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise CheckpointError(f"{weights} does not fit the model built from this config (unexpected keys "
                              f"{unexpected[:3]}...): the LoRA settings differ from the checkpoint's (lora.r, "
                              "lora.target_modules, lora.train_projector)")


def load_base_checkpoint(base: str):
    """A merged VLA checkpoint to continue from (an adapter checkpoint must be merged first)."""
    from vla.policy import VLAPolicy

    if (Path(base) / "adapter_config.json").is_file():
        raise CheckpointError(
            f"{base} is a LoRA adapter checkpoint; to continue fine-tuning from it, merge it first: "
            f"vla export {base} --merge --out MERGED_DIR, then pass --base MERGED_DIR"
        )
    return VLAPolicy.from_pretrained(base, dtype="float32", optimize_for_inference=False)
