"""VLAPolicy: camera images + instruction -> the next H actions, in physical units.

Data flows one way: observation -> prompt + images -> backbone -> constrained action
tokens -> action tokenizer decode -> unnormalize -> ActionChunk.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError

from .action_codec import ActionCodec
from .action_tokenizers import ActionTokenizer, load_action_tokenizer
from .action_vocab import add_action_tokens
from .backbones.loading import load_backbone
from .configuration import VLAConfig
from .decoding import decode_autoregressive, decode_parallel, unwrap
from .embodiment import Embodiment
from .errors import CheckpointError, ConfigError, InvalidInputError, UnknownEmbodimentError
from .images import to_rgb_array
from .precision import Precision, resolve_precision
from .prompt import PARALLEL_QUERY_TOKEN, encode_prompts, image_placeholder, render_prompt
from .types import ActionChunk, PredictRequest, state_array


def to_pil(image: Any, what: str = "image") -> Image.Image:
    """Accept a PIL image, a uint8 (H, W, 3) array or PNG/JPEG bytes; return an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    return Image.fromarray(to_rgb_array(image, what=what))


def optimize_model_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Fold the vision tower's BatchNorms (in fp32, before any cast): same outputs, a faster tower."""
    for module in model.modules():
        if hasattr(module, "fold_batch_norm") and hasattr(module, "batch_norm_folded"):
            dtype = next(module.parameters()).dtype
            module.float().fold_batch_norm().to(dtype)
    return model


_COUNTS_KEPT = 256  # instructions whose token counts a policy remembers (a few per robot)
_COUNTS_LOCK = threading.Lock()

class VLAPolicy:
    """A vision-language backbone plus action tokens, statistics and a prompt template."""

    precision = Precision(torch.float32, "as built")

    def __init__(self, model, processor, action_tokenizer: ActionTokenizer, config: VLAConfig):
        self.model, self.processor, self.action_tokenizer, self.config = model, processor, action_tokenizer, config
        self.embodiments: dict[str, Embodiment] = {e.name: e for e in config.embodiments}
        if len(config.action_token_ids) != action_tokenizer.vocab_size:
            raise CheckpointError(
                f"vla_config.json maps {len(config.action_token_ids)} action tokens but the action tokenizer "
                f"has {action_tokenizer.vocab_size}; the checkpoint is inconsistent"
            )

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_backbone(cls, backbone: str | Path | tuple, embodiments: Sequence[Embodiment],
                      action_tokenizer: ActionTokenizer, config: VLAConfig | None = None, *, seed: int = 0,
                      **options: Any) -> "VLAPolicy":
        """A fresh (not yet fine-tuned) policy: the backbone gets action tokens for the tokenizer.

        ``config`` holds the options (defaults: :class:`vla.configuration.VLAConfig`); ``options`` override
        single ones, e.g. ``decoding="autoregressive"``, ``use_state=True``.
        """
        unknown = sorted(set(options) - set(VLAConfig.OPTIONS))
        if unknown:
            raise ConfigError(f"unknown policy option(s) {unknown}; the options are {list(VLAConfig.OPTIONS)}")
        config = dataclasses.replace(config or VLAConfig(), embodiments=list(embodiments),
                                     **{k: v for k, v in options.items() if v is not None})
        config = config.resolved(action_tokenizer.kind)
        if isinstance(backbone, tuple):
            model, processor = backbone
            base = None
        else:
            model, processor = load_backbone(backbone, options=config.base_options or None)
            base = str(Path(backbone).resolve()) if Path(backbone).is_dir() else str(backbone)
        extra = (PARALLEL_QUERY_TOKEN,) if config.decoding == "parallel" else ()
        ids = add_action_tokens(model, processor, action_tokenizer.vocab_size, config.action_token_mode, extra, seed)
        query = processor.tokenizer.convert_tokens_to_ids(PARALLEL_QUERY_TOKEN) if extra else None
        config = dataclasses.replace(config, action_token_ids=ids, query_token_id=query, base_model=base,
                                     model_id=base or "")
        return cls(model, processor, action_tokenizer, config)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: str | torch.dtype = "auto", merge_adapter: bool = True,
                        optimize_for_inference: bool = True, trust_remote_code: bool = False) -> "VLAPolicy":
        """Load a checkpoint directory (full model, or LoRA adapter on its recorded base).

        ``dtype``: "auto" (bf16 where the hardware runs it fast, else fp32: :mod:`vla.precision`),
        "float32" or "bfloat16". ``optimize_for_inference`` folds the vision tower's BatchNorms into its
        convolutions: such a policy predicts, but cannot be fine-tuned or saved (pass False for that).
        A hub id is downloaded with ``huggingface_hub`` first; offline that fails with a clear error.
        """
        precision = resolve_precision(dtype, device)
        dtype = precision.dtype
        directory = _local_checkpoint(path)
        config = VLAConfig.load(directory)
        tokenizer = load_action_tokenizer(directory)
        if (directory / "adapter_config.json").is_file():
            from peft import PeftModel

            from .backbones.processors import load_processor

            if not config.base_model:
                raise CheckpointError(f"{directory} holds a LoRA adapter but vla_config.json names no base_model")
            model, _ = load_backbone(config.base_model, options=config.base_options, dtype=dtype,
                                     trust_remote_code=trust_remote_code)
            processor = load_processor(directory, model.config.model_type, trust_remote_code=trust_remote_code)
            with torch.random.fork_rng():
                torch.manual_seed(0)
                model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
            if not (directory / "adapter_model.safetensors").is_file():
                raise CheckpointError(f"{directory} has adapter_config.json but no adapter_model.safetensors; "
                                      "copy the adapter weights there or re-save the run")
            try:
                model = PeftModel.from_pretrained(model, directory)
            except SafetensorError as e:  # truncated or corrupt file
                raise CheckpointError(f"{directory}/adapter_model.safetensors is corrupt ({e}); "
                                      "copy it again or re-save the run") from e
            if merge_adapter:
                model = model.merge_and_unload()
        else:
            model, processor = load_backbone(directory, dtype=dtype, trust_remote_code=trust_remote_code)
        config.model_id = config.model_id or str(path)
        if optimize_for_inference:
            optimize_model_for_inference(model)
        policy = cls(model.to(dtype).eval(), processor, tokenizer, config)
        policy.precision = precision
        return policy.to(device) if device is not None else policy

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a normal Hugging Face model (or adapter) directory plus vla_config.json."""
        if any(getattr(m, "batch_norm_folded", False) for m in self.model.modules()):
            raise ConfigError("this policy was loaded for inference (its vision tower's BatchNorms are folded), so it "
                              "cannot be saved in the checkpoint format; load it with "
                              "VLAPolicy.from_pretrained(path, optimize_for_inference=False) to fine-tune or save it")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.processor.save_pretrained(out)
        self.action_tokenizer.save(out)
        self.config.save(out)
        return out

    def to(self, device: str | torch.device) -> "VLAPolicy":
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ inference
    def embodiment(self, name: str) -> Embodiment:
        if name not in self.embodiments:
            raise UnknownEmbodimentError(name, list(self.embodiments))
        return self.embodiments[name]

    @property
    def default_embodiment(self) -> str | None:
        """The embodiment of a request that names none: the model's only one (None when it has several)."""
        return next(iter(self.embodiments)) if len(self.embodiments) == 1 else None

    def codec(self, name: str) -> ActionCodec:
        """The action codec of embodiment ``name``: physical chunks <-> this policy's action-token ids."""
        codecs = self.__dict__.setdefault("_codecs", {})
        emb = self.embodiment(name)
        if name not in codecs or codecs[name].embodiment is not emb or codecs[name].tokenizer is not self.action_tokenizer:
            codecs[name] = ActionCodec(emb, self.action_tokenizer)
        return codecs[name]

    def validate(self, request: PredictRequest, max_instruction_tokens: int | None = None) -> PredictRequest:
        """Check one observation against its embodiment, cheaply, before any image is decoded or model run.

        Refuses (``InvalidInputError`` with a ``code``) an unknown embodiment, an empty or undecodable
        instruction, one that contains the processor's reserved tokens or needs more tokens than
        ``max_instruction_tokens`` or the model's positions, the wrong cameras, and a state of the
        wrong size or with NaN/inf. Returns the request with ``state`` as a float array.
        """
        emb = self.embodiment(request.embodiment)
        self._check_instruction(emb, request.instruction, max_instruction_tokens)
        images = request.images
        if isinstance(images, dict):
            if set(images) != set(emb.cameras):
                raise InvalidInputError(
                    f"embodiment {emb.name!r} needs exactly the cameras {emb.cameras}; got {sorted(images)}. "
                    "Key each image by its camera name.", code="wrong_cameras")
        elif len(images if isinstance(images, (list, tuple)) else [images]) != len(emb.cameras):
            raise InvalidInputError(
                f"embodiment {emb.name!r} needs {len(emb.cameras)} images in camera order {emb.cameras}", code="wrong_cameras")
        state = None if request.state is None else state_array(request.state)
        if state is not None and state.size != emb.state_dim:
            raise InvalidInputError(
                f"state has {state.size} values; embodiment {emb.name!r} expects {emb.state_dim}: {emb.state_names}",
                code="invalid_state")
        if state is None and self.config.use_state and emb.state_dim:
            raise InvalidInputError(
                f"this model conditions on the robot state: send 'state' with {emb.state_dim} values {emb.state_names}",
                code="missing_state")
        return PredictRequest(images=images, instruction=request.instruction, embodiment=emb.name, state=state)

    def prepare(self, requests: Sequence[PredictRequest]) -> dict[str, torch.Tensor]:
        """The backbone's inputs for observations already validated (``validate``; training data is trusted)."""
        if not requests:
            raise InvalidInputError("empty batch: send at least one observation")
        prompts, images = [], []
        for r in requests:
            emb = self.embodiment(r.embodiment)
            prompts.append(render_prompt(self.config.prompt_template, image_placeholder(self.processor), len(emb.cameras),
                                         r.instruction, emb.name, self._normalized_state(emb, r.state)))
            images.append(self._ordered_images(emb, r.images))
        inputs = encode_prompts(self.processor, prompts, images)
        dtype = next(self.model.parameters()).dtype
        return {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device)) for k, v in inputs.items()}

    def predict(self, images, instruction: str, embodiment: str, state: np.ndarray | None = None) -> ActionChunk:
        """The next action chunk for one observation."""
        return self.predict_batch([PredictRequest(images, instruction, embodiment, state)])[0]

    def predict_batch(self, requests: Sequence[PredictRequest], *, validated: bool = False) -> list[ActionChunk]:
        """Action chunks for many observations in one batched forward.

        Each observation is validated here unless ``validated`` says the caller did (the server's
        ``Engine.check`` at its edge), so a request is checked and its instruction tokenized once.
        """
        start = time.perf_counter()
        if not validated:
            requests = [self.validate(r) for r in requests]
        inputs = self.prepare(requests)
        embs = [self.embodiment(r.embodiment) for r in requests]
        sizes = [(e.chunk_size, e.action_dim) for e in embs]
        model_start = time.perf_counter()
        if self.config.decoding == "parallel":
            if len(set(sizes)) != 1:
                raise InvalidInputError("parallel decoding batches one chunk shape at a time; split the batch by embodiment")
            result = decode_parallel(self.model, inputs, self.config.action_token_ids, self.config.query_token_id,
                                     sizes[0][0] * sizes[0][1])
        else:
            result = decode_autoregressive(self.model, inputs, self.config.action_token_ids,
                                           self.action_tokenizer.token_lengths, [h * d for h, d in sizes])
        model_ms = (time.perf_counter() - model_start) * 1e3
        chunks = []
        for emb, ids, entropy in zip(embs, result.tokens, result.entropy):
            actions = self.codec(emb.name).decode(ids)
            chunks.append(ActionChunk(actions, emb.name, list(emb.action_names), emb.control_hz, entropy))
        total_ms = (time.perf_counter() - start) * 1e3
        for c in chunks:
            c.timings = {"model_ms": model_ms, "policy_ms": total_ms, "batch_size": len(requests)}
        return chunks

    def metadata(self) -> dict[str, Any]:
        """What a client needs to check compatibility before it moves a robot."""
        return {
            "model_id": self.config.model_id,
            "format_version": self.config.format_version,
            "backbone": unwrap(self.model).config.model_type,
            "base_model": self.config.base_model,
            "decoding": self.config.decoding,
            "dtype": self.precision.name,
            "dtype_reason": self.precision.reason,
            "uses_state": self.config.use_state,
            "action_tokenizer": self.action_tokenizer.config(),
            # the datasets (and simulator seeds) it was trained on: lets a remote evaluator keep its seeds apart
            "training_datasets": self.config.training.get("datasets", []),
            "embodiments": {
                e.name: {
                    "action_dim": e.action_dim, "action_names": e.action_names, "chunk_size": e.chunk_size,
                    "control_hz": e.control_hz, "cameras": e.cameras,
                    "image_size": list(e.image_size) if e.image_size else None,
                    "state_dim": e.state_dim, "state_names": e.state_names,
                }
                for e in self.embodiments.values()
            },
        }

    # ------------------------------------------------------------------ helpers
    def _ordered_images(self, emb: Embodiment, images) -> list[Image.Image]:
        """The images in the embodiment's camera order (``validate`` checked the camera set)."""
        if isinstance(images, dict):
            images = [images[c] for c in emb.cameras]
        elif not isinstance(images, (list, tuple)):
            images = [images]
        return [to_pil(img, f"image for camera {cam!r}") for img, cam in zip(images, emb.cameras)]

    def _normalized_state(self, emb: Embodiment, state: np.ndarray | None) -> np.ndarray | None:
        return emb.state_normalizer.normalize(state) if self.config.use_state and state is not None else None

    def _check_instruction(self, emb: Embodiment, instruction: Any, max_tokens: int | None) -> None:
        if not isinstance(instruction, str) or not instruction.strip():
            raise InvalidInputError("instruction must be a non-empty string", code="invalid_instruction")
        try:
            instruction.encode("utf-8")
        except UnicodeEncodeError as e:  # e.g. a lone surrogate from "\ud800" in JSON
            raise InvalidInputError(f"instruction is not valid Unicode text ({e.reason} at character {e.start})",
                                    code="invalid_instruction") from None
        reserved = [t for t in self._reserved_tokens() if t in instruction]
        if reserved:
            raise InvalidInputError(f"instruction contains the model's reserved token(s) {reserved}; remove them "
                                    "(images are sent as images, not as placeholders in the text)",
                                    code="invalid_instruction")
        room = self._token_room(emb)
        limit = min(max_tokens, room) if max_tokens and room is not None else max_tokens or room
        # Tokenizing costs time in proportion to the text: past a prefix that already holds more
        # tokens than allowed, the rest need not be read (a prefix never has more tokens than the whole).
        prefix = instruction if limit is None else instruction[:4 * (limit + 1)]
        n = self.instruction_tokens(emb, prefix)
        if prefix != instruction and n <= limit + 1:  # a merge across the cut could save a token: read it all
            prefix, n = instruction, self.instruction_tokens(emb, instruction)
        if limit is not None and n > limit:
            why = (f"the model's {self._max_positions()} positions leave room for {room}" if limit == room
                   else f"this server's --max-instruction-tokens is {max_tokens}")
            count = f"{n}" if prefix == instruction else f"more than {n}"
            raise InvalidInputError(f"instruction is {count} tokens after the prompt template; the limit is {limit} "
                                    f"({why}). Shorten the instruction.", code="instruction_too_long")

    def instruction_tokens(self, emb: Embodiment, instruction: str) -> int:
        """How many tokens ``instruction`` adds to this embodiment's prompt (after the template)."""
        base = getattr(self, "_template_tokens", {})
        if emb.name not in base:
            base[emb.name] = self._text_tokens(emb, "")
            self._template_tokens = base
        return self._text_tokens(emb, instruction) - base[emb.name]

    def _text_tokens(self, emb: Embodiment, instruction: str) -> int:
        # A controller sends the same instruction with every chunk of an episode: remember the recent
        # counts, so that a request's instruction is tokenized once, for its prompt.
        key = (emb.name, instruction)
        with _COUNTS_LOCK:
            counts = self.__dict__.setdefault("_token_counts", OrderedDict())
            if key in counts:
                counts.move_to_end(key)
                return counts[key]
        text = render_prompt(self.config.prompt_template, "", 0, instruction, emb.name)
        n = len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        with _COUNTS_LOCK:
            counts[key] = n
            while len(counts) > _COUNTS_KEPT:
                counts.popitem(last=False)
        return n

    def _reserved_tokens(self) -> list[str]:
        if not hasattr(self, "_reserved"):
            tok = self.processor.tokenizer
            special = set(tok.all_special_tokens) | {t for t in tok.get_added_vocab() if t.startswith("<")}
            special.update({self.processor.image_token, image_placeholder(self.processor)})
            self._reserved = sorted(t for t in special if t and not t.isspace())
        return self._reserved

    def _max_positions(self) -> int | None:
        text_config = unwrap(self.model).config.get_text_config()
        return getattr(text_config, "max_position_embeddings", None)

    def _token_room(self, emb: Embodiment) -> int | None:
        """Instruction tokens that fit in the model's positions next to images, state and action slots."""
        positions = self._max_positions()
        if positions is None:
            return None
        room = getattr(self, "_room", {})
        if emb.name not in room:
            blank = Image.new("RGB", tuple(emb.image_size or (224, 224)))
            prompt = render_prompt(self.config.prompt_template, image_placeholder(self.processor), len(emb.cameras), "",
                                   emb.name)
            fixed = encode_prompts(self.processor, [prompt], [[blank] * len(emb.cameras)])["input_ids"].shape[1]
            slots = emb.chunk_size * emb.action_dim + 1  # every action token covers at least one value
            state = 4 * emb.state_dim + 4 if self.config.use_state else 0  # " State: " + up to 4 tokens a value
            room[emb.name] = max(0, positions - fixed - slots - state)
            self._room = room
        return room[emb.name]


def _local_checkpoint(path: str | Path) -> Path:
    local = Path(path)
    if local.is_dir():
        return local
    if local.exists() or str(path).startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path)))
    except Exception as e:  # the hub raises many types; all mean "not available here"
        raise CheckpointError(
            f"{path!r} is not a local directory and could not be fetched from the Hugging Face Hub ({type(e).__name__}: "
            f"{e}). Pass a local checkpoint directory, or run on a machine with Hub access (unset HF_HUB_OFFLINE)."
        ) from e
