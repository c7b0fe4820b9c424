# Over 400 lines: every fine-tuning key with its default and help, plus the parser that reads files and overrides.
"""The fine-tuning configuration: typed sections, YAML/TOML files and ``--section.key value`` overrides.

Every key has a default and a one-line help; ``vla finetune --help`` prints them all.
Unknown keys (in a file or on the command line) raise a ConfigError with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from vla.configuration import ACTION_TOKEN_MODES, DECODING_MODES, VLAConfig
from vla.errors import ConfigError, check_keys
from vla.normalize import NORMALIZATION_MODES


POLICY = VLAConfig.defaults()

def _f(default: Any, help: str, choices: tuple | None = None, **kw: Any) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class DatasetSpec:
    """One dataset of the mixture (``--data NAME=DIR[:weight]``)."""

    path: str = _f("", "LeRobot dataset directory (v2.1 or v3.0)")
    weight: float | None = _f(None, "sampling weight; none given anywhere: proportional to the number of samples")
    embodiment: str | None = _f(None, "embodiment (robot) name; datasets sharing one are pooled (default: the dataset name)")
    chunk_size: int | None = _f(None, "actions per chunk for this dataset's embodiment (default: model.chunk_size)")
    cameras: list[str] | None = _f(None, "camera keys to use, in order (default: all cameras of the dataset)")
    episodes: str = _f("all", "which episodes to train on: all, or only those that reach success (needs the "
                       "next.success column that `vla data generate` and `vla improve` write)", ("all", "successful"))


@dataclass
class ModelSection:
    action_tokenizer: str = _f("bins", "action tokenizer: uniform bins (one token per value) or FAST (DCT+BPE, "
                               "fitted on the training chunks)", ("bins", "fast"))
    bins: int = _f(256, "number of bins (action_tokenizer=bins)")
    fast_scale: float = _f(10.0, "DCT coefficient scale (action_tokenizer=fast)")
    fast_vocab_size: int = _f(1024, "BPE vocabulary size (action_tokenizer=fast)")
    fast_min_frequency: int = _f(2, "least count for a BPE merge (action_tokenizer=fast)")
    fast_max_chunks: int = _f(20000, "fit FAST on at most this many training chunks (evenly spaced)")
    # the policy's own options: their defaults are VLAConfig's (vla.configuration), declared once there
    action_token_mode: str = _f(POLICY.action_token_mode, "action tokens: new vocabulary entries, or reuse the last "
                                "ordinary ids (OpenVLA)", ACTION_TOKEN_MODES)
    decoding: str | None = _f(POLICY.decoding, "decoding layout trained and served: parallel (query slots, all action "
                              "tokens in one forward; bins only; measured better and ~5x faster) or autoregressive "
                              "(needed for FAST); default: parallel for bins, autoregressive for FAST", DECODING_MODES)
    chunk_size: int = _f(8, "default actions per chunk (H); per dataset: datasets.NAME.chunk_size")
    normalization: str = _f("auto", "action/state normalization to [-1, 1] (auto: min/max unless a tail beyond "
                                                "q01/q99 is outliers, see vla.embodiment.Normalizer)", NORMALIZATION_MODES)
    displacement_actions: list[str] = _f([], "action names that are per-step increments of a position target (e.g. "
                                         "[delta_x, delta_y, delta_z]): chunks encode them as the mean displacement "
                                         "so far instead of per step; robots without these names are unaffected")
    use_state: bool = _f(POLICY.use_state, "put the discretized proprioceptive state in the prompt")
    prompt_template: str | None = _f(POLICY.prompt_template, "prompt template ({images}, {instruction}, {embodiment}, "
                                     "{state}); none: the default (configs written before it had one)")
    base_options: dict = _f(POLICY.base_options, "options of the base backbone, e.g. {num_layers: 8, image_tokens: 16} "
                            "for 'default'")

    def policy_config(self) -> VLAConfig:
        """These options as the policy's configuration (``decoding`` resolved for the action tokenizer)."""
        options = {k: getattr(self, k) for k in VLAConfig.OPTIONS}
        if options.get("prompt_template") is None:
            options["prompt_template"] = POLICY.prompt_template
        return VLAConfig(**options).resolved(self.action_tokenizer)


@dataclass
class LoraSection:
    r: int = _f(16, "LoRA rank")
    alpha: float = _f(32.0, "LoRA alpha (scale = alpha / r)")
    dropout: float = _f(0.0, "LoRA dropout (0 as in OpenVLA; dropout costs ~9% of a CPU step)")
    target_modules: list[str] | str = _f("language-model", "'language-model': every linear layer of the language "
                                         "model (not the vision tower/projector); or a list of module names")
    train_projector: bool = _f(True, "train the vision-language projector in full (peft modules_to_save)")
    train_vision: bool = _f(False, "train the vision tower in full (BatchNorm stays in eval mode)")
    quantize: str = _f("none", "4bit: QLoRA (needs CUDA and bitsandbytes)", ("none", "4bit"))


@dataclass
class TrainSection:
    steps: int = _f(1000, "optimizer steps")
    batch_size: int = _f(8, "samples per device per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    lr: float = _f(3e-4, "peak learning rate (AdamW); with the cosine schedule it memorized one episode in ~100 steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    schedule: str = _f("cosine", "learning-rate schedule after warmup", ("cosine", "constant"))
    warmup_steps: int = _f(50, "linear warmup steps")
    max_grad_norm: float = _f(1.0, "gradient clipping (0: off)")
    label_sigma: float = _f(0.0, "bins only: train on Gaussian soft targets of this std in bins (HL-Gauss) "
                                 "instead of one-hot bins, so near misses cost less; 0: one-hot")
    precision: str = _f("auto", "auto: bf16 where the hardware runs it fast (AMX/AVX512-BF16 CPU, bf16 GPU; frozen "
                                "weights stored in bf16, LoRA, optimizer and loss in fp32), else fp32",
                        ("auto", "bf16", "fp32"))
    gradient_checkpointing: bool = _f(False, "recompute decoder activations in backward (less memory, slower)")
    cache_vision: str = _f("auto", "cache frozen vision-tower features per frame; auto: on when the tower is "
                           "frozen, augmentation is off and training is not FSDP", ("auto", "on", "off"))
    cache_max_gb: float = _f(2.0, "memory bound of the vision feature cache (least recently used are dropped)")
    padded_steps: str = _f("auto", "chunk steps past an episode's end (padded by repeating the last action): "
                           "mask = no loss on their tokens (bins), keep = train on the padding, drop = leave "
                           "such chunks out of the loss; auto = mask for bins, keep for fast",
                           ("auto", "mask", "keep", "drop"))
    cpu: bool = _f(False, "train on the CPU even when a GPU is available")


@dataclass
class DataSection:
    val_fraction: float = _f(0.1, "share of each dataset's episodes held out for validation (by episode)")
    augment: bool = _f(False, "random crop + colour jitter on training images")
    num_workers: int = _f(0, "DataLoader worker processes (video decoding)")
    short_episodes: str = _f("exclude", "episodes shorter than the chunk size: exclude (counted), pad or error",
                             ("exclude", "pad", "error"))


@dataclass
class EvalSection:
    every: int = _f(200, "validate every N steps (0: only at the end)")
    max_samples: int = _f(32, "validation samples per embodiment (evenly spaced over held-out episodes)")
    batch_size: int = _f(8, "validation batch size")
    trace_episodes: int = _f(1, "validation episodes per embodiment plotted as predicted vs true action traces")
    trace_steps: int = _f(64, "at most this many steps per plotted episode")


@dataclass
class CheckpointSection:
    every: int = _f(200, "save a checkpoint every N steps (and always at the end)")
    keep_last: int = _f(2, "checkpoints kept (older ones are deleted once a newer one is complete)")


@dataclass
class LogSection:
    every: int = _f(10, "write training metrics every N steps")
    progress: bool = _f(True, "tqdm progress bar")
    tensorboard: bool = _f(False, "also log to TensorBoard (RUN_DIR/tensorboard; needs the tensorboard package)")
    wandb: bool = _f(False, "also log to Weights & Biases (needs wandb and a login)")
    wandb_project: str = _f("vla", "W&B project")


SECTIONS: dict[str, type] = {
    "model": ModelSection, "lora": LoraSection, "train": TrainSection, "data": DataSection,
    "eval": EvalSection, "checkpoint": CheckpointSection, "log": LogSection,
}
TOP_LEVEL_HELP = {
    "base": "base model: 'default' (EfficientNet-Lite0 + SmolLM2-135M), a model directory, a merged VLA checkpoint, or a hub id",
    "out": "run directory (created; must be empty or absent)",
    "seed": "random seed (data order, LoRA init, dropout)",
    "init_from": "a fine-tuned run or adapter checkpoint (e.g. vla/default_policy) to start from: its adapter, "
                 "action tokenizer and normalization statistics, with a fresh optimizer and schedule (a warm start; "
                 "--resume continues a run instead)",
    "datasets": "the mixture: NAME -> {path, weight, embodiment, chunk_size, cameras}",
}
# Keys a resumed run may change (the rest must match the run's config to continue exactly).
RESUMABLE_OVERRIDES = ("train.steps", "checkpoint.", "log.", "eval.", "data.num_workers")


@dataclass
class FinetuneConfig:
    base: str = "default"
    out: str | None = None
    seed: int = 0
    init_from: str | None = None
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "the config") -> "FinetuneConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a mapping of sections, got {type(d).__name__}")
        check_keys(d, [f.name for f in fields(cls)], where)
        cfg = cls()
        for key, value in d.items():
            if key in SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: section {key!r} must be a mapping, got {value!r}")
                section = getattr(cfg, key)
                check_keys(value, [f.name for f in fields(section)], f"section {key!r} of {where}")
                for k, v in value.items():
                    setattr(section, k, coerce(v, _type(type(section), k), f"{key}.{k}"))
            elif key == "datasets":
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: 'datasets' must map names to {{path, weight, ...}}, got {value!r}")
                cfg.datasets = {str(n): dataset_spec(n, v, where) for n, v in value.items()}
            else:
                setattr(cfg, key, coerce(value, _type(cls, key), key))
        return cfg

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ validation
    def validate(self, *, need_data: bool = True) -> "FinetuneConfig":
        """Check values that do not depend on the data or the model; raise ConfigError naming the key."""
        for name, cls in SECTIONS.items():
            section = getattr(self, name)
            for f in fields(cls):
                choices = f.metadata.get("choices")
                if choices and getattr(section, f.name) not in choices and not (f.default is None is getattr(section, f.name)):
                    raise ConfigError(f"{name}.{f.name} is {getattr(section, f.name)!r}; choose one of {list(choices)}")
        positive = {"train.steps": self.train.steps, "train.batch_size": self.train.batch_size,
                    "train.grad_accum": self.train.grad_accum, "model.chunk_size": self.model.chunk_size,
                    "model.bins": self.model.bins, "lora.r": self.lora.r, "eval.max_samples": self.eval.max_samples,
                    "eval.batch_size": self.eval.batch_size, "checkpoint.keep_last": self.checkpoint.keep_last,
                    "log.every": self.log.every, "model.fast_max_chunks": self.model.fast_max_chunks}
        for key, v in positive.items():
            if v < 1:
                raise ConfigError(f"{key} must be >= 1, got {v}")
        for key, v in {"train.warmup_steps": self.train.warmup_steps, "eval.every": self.eval.every,
                       "checkpoint.every": self.checkpoint.every, "data.num_workers": self.data.num_workers,
                       "eval.trace_episodes": self.eval.trace_episodes}.items():
            if v < 0:
                raise ConfigError(f"{key} must be >= 0, got {v}")
        for key, v in {"train.lr": self.train.lr, "lora.alpha": self.lora.alpha,
                       "train.cache_max_gb": self.train.cache_max_gb}.items():
            if not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{key} must be a positive number, got {v}")
        if not 0 <= self.lora.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.lora.dropout}")
        if not 0 <= self.data.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.data.val_fraction}")
        if self.train.max_grad_norm < 0 or self.train.weight_decay < 0:
            raise ConfigError("train.max_grad_norm and train.weight_decay must be >= 0")
        if self.model.decoding == "parallel" and self.model.action_tokenizer != "bins":
            raise ConfigError("model.decoding=parallel needs model.action_tokenizer=bins (a fixed number of tokens per "
                              "chunk); with FAST leave model.decoding unset or set --model.decoding autoregressive")
        if not math.isfinite(self.train.label_sigma) or self.train.label_sigma < 0:
            raise ConfigError(f"train.label_sigma must be >= 0 (in bins), got {self.train.label_sigma}")
        if self.train.label_sigma > 0 and self.model.action_tokenizer != "bins":
            raise ConfigError("train.label_sigma needs model.action_tokenizer=bins: FAST tokens have no order "
                              "to smooth over; set train.label_sigma 0")
        if self.train.padded_steps == "mask" and self.model.action_tokenizer == "fast":
            raise ConfigError("train.padded_steps=mask needs bins: FAST tokens mix all steps of a chunk, so padded "
                              "steps cannot be masked; use keep or drop")
        if isinstance(self.lora.target_modules, str) and self.lora.target_modules != "language-model":
            raise ConfigError(f"lora.target_modules is {self.lora.target_modules!r}: use 'language-model' or a list "
                              "of module names, e.g. [q_proj, v_proj]")
        if need_data and not self.datasets:
            raise ConfigError("no training data: pass --data NAME=DIR[:weight] (repeatable) or a 'datasets' section")
        for name, spec in self.datasets.items():
            if not spec.path:
                raise ConfigError(f"dataset {name!r} has no path")
            if spec.weight is not None and (not math.isfinite(spec.weight) or spec.weight < 0):
                raise ConfigError(f"dataset {name!r}: weight must be >= 0, got {spec.weight}")
            if spec.chunk_size is not None and spec.chunk_size < 1:
                raise ConfigError(f"dataset {name!r}: chunk_size must be >= 1, got {spec.chunk_size}")
        weighted = [n for n, s in self.datasets.items() if s.weight is not None]
        if weighted and len(weighted) != len(self.datasets):
            missing = [n for n in self.datasets if n not in weighted]
            raise ConfigError(f"weights are given for {weighted} but not for {missing}: give every dataset a "
                              "weight (NAME=DIR:WEIGHT), or none (proportional to size)")
        return self


def _type(cls: type, name: str) -> Any:
    """The resolved type of a config field (annotations are strings under ``from __future__``)."""
    return get_type_hints(cls)[name]


def dataset_spec(name: Any, value: Any, where: str = "the config") -> DatasetSpec:
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: dataset {name!r} must be a path or a mapping {{path, weight, ...}}, got {value!r}")
    check_keys(value, [f.name for f in fields(DatasetSpec)], f"dataset {name!r} of {where}")
    spec = DatasetSpec()
    for k, v in value.items():
        setattr(spec, k, coerce(v, _type(DatasetSpec, k), f"datasets.{name}.{k}"))
    return spec


def parse_data_arg(arg: str) -> tuple[str, DatasetSpec]:
    """``NAME=DIR[:weight]`` -> (name, spec). The weight is the part after the last ':' if it is a number."""
    if "=" not in arg:
        raise ConfigError(f"--data {arg!r}: write NAME=DIR or NAME=DIR:WEIGHT, e.g. --data so101=data/so101:0.5")
    name, rest = (s.strip() for s in arg.split("=", 1))
    if not name or not rest:
        raise ConfigError(f"--data {arg!r}: both NAME and DIR are needed (NAME=DIR[:WEIGHT])")
    path, weight = rest, None
    head, sep, tail = rest.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
            path = head
        except ValueError:
            pass  # a ':' that is part of the path
    return name, DatasetSpec(path=path, weight=weight)


# ---------------------------------------------------------------------- typed values
def _is_optional(tp: Any) -> tuple[bool, Any]:
    if get_origin(tp) not in (Union, UnionType):  # list[str] is not a union: keep it whole
        return False, tp
    args = [a for a in get_args(tp) if a is not type(None)]
    return (type(None) in get_args(tp)), (args[0] if len(args) == 1 else tp)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a value from a file or the command line (a string) to the field's type ``tp``."""
    optional, inner = _is_optional(tp)
    if isinstance(value, str) and optional and value.strip().lower() in ("none", "null", "~", ""):
        return None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} cannot be empty")
    origin = get_origin(inner)
    try:
        if inner is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("true", "yes", "on", "1"):
                return True
            if s in ("false", "no", "off", "0"):
                return False
            raise ValueError("expected true or false")
        if inner is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if inner is str:
            if isinstance(value, (dict, list)):
                raise ValueError("expected a string")
            return str(value)
        if inner is dict or origin is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip() else {}
            if not isinstance(value, dict):
                raise ValueError("expected a mapping such as {num_layers: 8}")
            return dict(value)
        if origin is list or (get_origin(tp) is not None and list in [get_origin(a) for a in get_args(tp)]):
            if isinstance(value, str):
                s = value.strip()
                if s.startswith("["):
                    value = yaml.safe_load(s)
                elif list in [get_origin(a) for a in get_args(tp)] and str in get_args(tp) and "," not in s:
                    return s  # list[str] | str: a single word stays a string (e.g. 'language-model')
                else:
                    value = [p.strip() for p in s.split(",") if p.strip()]
            if not isinstance(value, list):
                raise ValueError("expected a list")
            return [str(v) for v in value]
    except (TypeError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{key}: {value!r} is not valid ({e})") from None
    return value


# ---------------------------------------------------------------------- files and overrides
def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            d = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml", ".json"):
            d = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {p}: unknown extension {p.suffix!r}; use .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {p} is not valid {p.suffix[1:].upper()}: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(d).__name__}")
    return d


def all_keys() -> list[str]:
    """Every overridable dotted key (datasets.* excluded)."""
    keys = [k for k in ("base", "out", "seed", "init_from")]
    for name, cls in SECTIONS.items():
        keys += [f"{name}.{f.name}" for f in fields(cls)]
    return keys


def set_key(cfg: FinetuneConfig, key: str, value: Any) -> None:
    """Set ``section.key`` (or a top-level key, or ``datasets.NAME.key``) from a string or a value."""
    parts = key.split(".")
    if parts[0] == "datasets":
        if len(parts) != 3:
            raise ConfigError(f"--{key}: dataset options are set as --datasets.NAME.KEY VALUE")
        if parts[1] not in cfg.datasets:
            close = difflib.get_close_matches(parts[1], list(cfg.datasets), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"--{key}: no dataset named {parts[1]!r}.{hint} Datasets: {list(cfg.datasets)}")
        spec = cfg.datasets[parts[1]]
        check_keys({parts[2]: None}, [f.name for f in fields(DatasetSpec)], f"dataset {parts[1]!r}")
        setattr(spec, parts[2], coerce(value, _type(DatasetSpec, parts[2]), key))
        return
    check_keys({key: None}, all_keys(), "the fine-tuning config")
    if len(parts) == 1:
        setattr(cfg, key, coerce(value, _type(FinetuneConfig, key), key))
    else:
        section = getattr(cfg, parts[0])
        setattr(section, parts[1], coerce(value, _type(type(section), parts[1]), key))


def describe_keys() -> list[tuple[str, str, Any, tuple | None]]:
    """(key, help, default, choices) of every key, for --help."""
    out = [(k, TOP_LEVEL_HELP[k], next(f for f in fields(FinetuneConfig) if f.name == k).default, None) for k in ("base", "out", "seed", "init_from")]
    for name, cls in SECTIONS.items():
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append((f"{name}.{f.name}", f.metadata["help"], default, f.metadata.get("choices")))
    return out
