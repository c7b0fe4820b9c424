"""Constrained action decoding: KV cache, logits only over action rows, exact value counts.

The language model's ``lm_head`` scores the whole vocabulary at every position. We
need scores only for the action tokens at the positions that predict them, so we
run the backbone's decoder (``model.model``) for hidden states and multiply by the
action rows of the output matrix. Every step masks the tokens that would overshoot
the number of action values still needed, so a finished sequence always decodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessor

from .prompt import append_tokens, position_ids


def unwrap(model):
    """The transformers model under a peft wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def action_head(model, action_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output-layer rows (and bias) of the action tokens, as the model would use them.

    Under peft's trainable tokens the live rows are the adapter's values: we gather just those
    rows (differentiably) instead of asking peft for the whole merged vocab x hidden matrix.
    """
    head = unwrap(model).get_output_embeddings()
    layer = getattr(head, "token_adapter", None)
    base = head if layer is None else layer.get_base_layer()
    ids = torch.as_tensor(list(action_ids), device=base.weight.device)
    weight = base.weight[ids]
    if layer is not None and not getattr(layer, "merged", False):
        for name in layer.active_adapters:
            where = {t: i for i, t in enumerate(layer.token_indices.get(name) or [])}
            rows = [k for k, t in enumerate(action_ids) if t in where]
            if rows:
                delta = layer.trainable_tokens_delta[name]
                source = delta[torch.as_tensor([where[action_ids[k]] for k in rows], device=delta.device)]
                weight = weight.index_copy(0, torch.as_tensor(rows, device=ids.device), source.to(weight))
    bias = getattr(base, "bias", None)
    return weight, (None if bias is None else bias[ids])


def _float_head(head: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Action logits in fp32 whatever the model's dtype: a few hundred rows, and no bf16 ties in the argmax."""
    weight, bias = head
    return weight.float(), None if bias is None else bias.float()


def model_position_ids(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Positions of a left-padded batch that ignore the padding: (B, T), or (3, B, T) for M-RoPE models.

    Qwen-VL's multimodal RoPE gives image tokens (time, row, column) positions on their grid and
    text after an image continues from the largest of them; the model's own ``get_rope_index`` computes
    that, for the prompt and any appended action tokens or query slots alike.
    """
    core = unwrap(model).model
    if "image_grid_thw" in inputs and hasattr(core, "get_rope_index"):
        positions, _ = core.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                           image_grid_thw=inputs["image_grid_thw"],
                                           attention_mask=inputs["attention_mask"])
        return positions
    return position_ids(inputs["attention_mask"])


def extend(model, inputs: dict[str, torch.Tensor], token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """``append_tokens`` with the token type this model gives appended text (see there)."""
    return append_tokens(inputs, token_ids, token_type=0 if unwrap(model).config.model_type == "gemma3" else 1)


def hidden_states(model, inputs: dict[str, torch.Tensor], **kwargs):
    """Run the backbone without its output layer; returns the model output with hidden states."""
    core = unwrap(model).model
    return core(**inputs, position_ids=model_position_ids(model, inputs), **kwargs)


@dataclass
class DecodeResult:
    tokens: list[list[int]]  # action-tokenizer ids per sample
    entropy: list[float]  # mean entropy (nats) of the constrained distributions per sample
    logits: list[torch.Tensor] | None = None  # per step, (B, action vocabulary) before masking (when asked)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return -(p * torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))).sum(-1)


@torch.inference_mode()
def decode_autoregressive(model, inputs: dict[str, torch.Tensor], action_ids: list[int],
                          token_lengths: np.ndarray, values_needed: list[int], return_logits: bool = False) -> DecodeResult:
    """Greedy constrained decoding with a KV cache; one forward per action token."""
    weight, bias = _float_head(action_head(model, action_ids))
    device = weight.device
    lengths = torch.tensor(np.array(token_lengths), device=device, dtype=torch.long)
    remaining = torch.as_tensor(values_needed, device=device, dtype=torch.long)
    lm_ids = torch.as_tensor(action_ids, device=device)
    batch = len(values_needed)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    entropy_sum = torch.zeros(batch, device=device)
    steps: list[torch.Tensor] | None = [] if return_logits else None

    cache = DynamicCache()
    attention = inputs["attention_mask"]
    out = hidden_states(model, inputs, past_key_values=cache, use_cache=True)
    position = model_position_ids(model, inputs)[..., -1:]  # action tokens are text: each one a step further
    while True:
        active = remaining > 0
        if not active.any():
            break
        logits = out.last_hidden_state[:, -1].float() @ weight.T
        if bias is not None:
            logits = logits + bias
        if steps is not None:
            steps.append(logits)
        logits = logits.masked_fill(lengths[None, :] > remaining[:, None], float("-inf"))
        choice = logits.argmax(-1)
        entropy_sum += torch.where(active, _entropy(logits), 0.0)
        remaining = remaining - torch.where(active, lengths[choice], 0)
        for i in torch.nonzero(active).flatten().tolist():
            tokens[i].append(int(choice[i]))
        if not (remaining > 0).any():
            break
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        position = position + 1
        out = unwrap(model).model(input_ids=lm_ids[choice][:, None], attention_mask=attention,
                                  position_ids=position, past_key_values=cache, use_cache=True)
    return DecodeResult(tokens, [float(entropy_sum[i]) / max(len(tokens[i]), 1) for i in range(batch)], steps)


@torch.inference_mode()
def parallel_logits(model, inputs: dict[str, torch.Tensor], action_ids: list[int], query_id: int,
                    num_tokens: int) -> torch.Tensor:
    """(B, num_tokens, len(action_ids)) action-vocabulary logits at ``num_tokens`` appended query slots."""
    weight, bias = _float_head(action_head(model, action_ids))
    batch = inputs["input_ids"].shape[0]
    queries = torch.full((batch, num_tokens), query_id, dtype=inputs["input_ids"].dtype)
    out = hidden_states(model, extend(model, inputs, queries))
    logits = out.last_hidden_state[:, -num_tokens:].float() @ weight.T
    return logits if bias is None else logits + bias


@torch.inference_mode()
def decode_parallel(model, inputs: dict[str, torch.Tensor], action_ids: list[int], query_id: int,
                    num_tokens: int) -> DecodeResult:
    """All action tokens from one forward over ``num_tokens`` appended query slots.

    Only valid for fixed-length action tokenizers and models fine-tuned with the same
    layout (``decoding="parallel"``).
    """
    logits = parallel_logits(model, inputs, action_ids, query_id, num_tokens)
    entropy = _entropy(logits).mean(-1)
    choice = logits.argmax(-1)
    return DecodeResult(choice.tolist(), entropy.tolist())


class OnlyTokens(LogitsProcessor):
    """Mask every vocabulary id but the allowed ones (for ``generate``)."""

    def __init__(self, allowed_ids: list[int]):
        self.allowed = torch.as_tensor(allowed_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.full_like(scores, float("-inf"))
        mask[:, self.allowed.to(scores.device)] = 0
        return scores + mask


@torch.inference_mode()
def decode_with_generate(model, inputs: dict[str, torch.Tensor], action_ids: list[int],
                         num_tokens: int) -> list[list[int]]:
    """The incumbent path (OpenVLA-style): ``generate`` with full-vocabulary logits every step.

    Kept as the reference for parity tests and benchmarks (fixed-length tokenizers).
    """
    out = unwrap(model).generate(
        **inputs, max_new_tokens=num_tokens, min_new_tokens=num_tokens, do_sample=False,
        logits_processor=[OnlyTokens(action_ids)], pad_token_id=0,
    )
    new = out[:, inputs["input_ids"].shape[1]:]
    index = {v: i for i, v in enumerate(action_ids)}
    return [[index[int(t)] for t in row] for row in new]
