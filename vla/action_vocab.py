"""Map action-tokenizer ids (0..N-1) onto language-model vocabulary ids."""

from __future__ import annotations

import torch

from .errors import ConfigError

ACTION_TOKEN_MODES = ("new", "reuse")


def action_token_strings(n: int) -> list[str]:
    return [f"<act_{i}>" for i in range(n)]


def add_action_tokens(model, processor, n: int, mode: str = "new", extra_tokens: tuple[str, ...] = (),
                      seed: int = 0) -> list[int]:
    """Give the model ``n`` action tokens and return their vocabulary ids.

    ``new`` adds ``<act_i>`` tokens and resizes the embeddings (the default);
    ``reuse`` takes the last ``n`` ordinary ids of the vocabulary, as OpenVLA does
    with Llama's least-used tokens. ``extra_tokens`` (e.g. the parallel-decoding
    query slot) are always added as new tokens. New rows are initialised from a
    seeded generator, so a base rebuilt the same way has the same rows.
    """
    if mode not in ACTION_TOKEN_MODES:
        raise ConfigError(f"unknown action token mode {mode!r}; choose one of {ACTION_TOKEN_MODES}")
    tokenizer = processor.tokenizer
    if mode == "new":
        new = action_token_strings(n) + list(extra_tokens)
        tokenizer.add_tokens(new, special_tokens=True)
        ids = tokenizer.convert_tokens_to_ids(action_token_strings(n))
    else:
        special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
        ordinary = [i for i in range(tokenizer.vocab_size) if i not in special]
        if len(ordinary) < n:
            raise ConfigError(f"the vocabulary has only {len(ordinary)} ordinary tokens; cannot reuse {n}")
        ids = ordinary[-n:]
        if extra_tokens:
            tokenizer.add_tokens(list(extra_tokens), special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return list(ids)
