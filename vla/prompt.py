"""Prompts and model inputs: one code path for training and inference (train/serve parity)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

DEFAULT_PROMPT_TEMPLATE = "{images}Robot: {embodiment}. Task: {instruction}{state}\nAction:"
STATE_BINS = 256
PARALLEL_QUERY_TOKEN = "<act_query>"


def state_text(normalized_state: np.ndarray | None) -> str:
    """Discretize a normalized state into integers in the prompt (as pi0-FAST does)."""
    if normalized_state is None:
        return ""
    bins = np.clip(np.round((np.asarray(normalized_state) + 1) / 2 * (STATE_BINS - 1)), 0, STATE_BINS - 1)
    return " State: " + " ".join(str(int(b)) for b in bins) + "."


def image_placeholder(processor) -> str:
    """The text one camera image takes in a prompt, as the model's published chat template writes it.

    Qwen-VL templates wrap the image pad in <|vision_start|>...<|vision_end|> (the processor then expands
    the pad to one token per merged patch); other families' processors add their own markers.
    """
    token = processor.image_token
    if token == "<|image_pad|>" and _in_vocab(processor.tokenizer, "<|vision_start|>", "<|vision_end|>"):
        return f"<|vision_start|>{token}<|vision_end|>"
    return token


def _in_vocab(tokenizer, *tokens: str) -> bool:
    # a token lookup, not get_vocab(): that builds the whole vocabulary as a dict (~30 ms for 49k
    # tokens), and prompts are rendered for every observation
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    return all(i is not None and i != tokenizer.unk_token_id for i in ids)


def render_prompt(template: str, image_token: str, n_images: int, instruction: str, embodiment: str,
                  normalized_state: np.ndarray | None = None) -> str:
    """Fill the template; each camera contributes one image placeholder, in camera order."""
    return template.format(
        images=image_token * n_images, embodiment=embodiment,
        instruction=" ".join(instruction.split()), state=state_text(normalized_state),
    )


def encode_prompts(processor, prompts: Sequence[str], images: Sequence[Sequence]) -> dict[str, torch.Tensor]:
    """Run the processor on a batch, left-padded so every prompt ends at the last position."""
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = processor(text=list(prompts), images=[list(i) for i in images], return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    batch.pop("labels", None)  # PaliGemma's processor adds an empty one
    return dict(batch)


def append_tokens(inputs: dict[str, torch.Tensor], token_ids: torch.Tensor, token_type: int = 1) -> dict[str, torch.Tensor]:
    """Append a (B, T) block of tokens after left-padded prompts (teacher forcing or query slots).

    ``token_type``: their ``token_type_ids`` where the processor gives them: 1 for PaliGemma (the
    causal suffix), 0 for Gemma 3 (where 1 marks image tokens). Qwen-VL's ``mm_token_type_ids`` get 0 (text).
    """
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], token_ids], dim=1)
    ones = torch.ones_like(token_ids)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], ones], dim=1)
    if "token_type_ids" in inputs:
        out["token_type_ids"] = torch.cat([inputs["token_type_ids"], ones * token_type], dim=1)
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(token_ids)], dim=1)
    return out


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, so a batched prompt equals the same prompt alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
