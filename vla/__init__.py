"""vla: vision-language-action policies on stock Hugging Face VLMs.

Heavy modules (torch, transformers) load lazily, so ``vla.types`` and ``vla.errors``
stay cheap for robot-side clients.
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "VLAPolicy": "vla.policy",
    "Embodiment": "vla.embodiment",
    "Stats": "vla.normalize",
    "Normalizer": "vla.normalize",
    "ActionChunk": "vla.types",
    "PredictRequest": "vla.types",
    "make_action_tokenizer": "vla.action_tokenizers",
    "load_action_tokenizer": "vla.action_tokenizers",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from .action_tokenizers import load_action_tokenizer, make_action_tokenizer
    from .embodiment import Embodiment
    from .normalize import Normalizer, Stats
    from .policy import VLAPolicy
    from .types import ActionChunk, PredictRequest


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vla' has no attribute {name!r}")
