"""The stock processor of a VLM, or the same processor without its video part where torchvision is missing.

Qwen2.5-VL, Qwen3-VL and SmolVLM2 processors also hold a video processor, and transformers cannot
construct one without torchvision (``AttributeError: type object 'VIDEO_PROCESSOR_MAPPING' has no
attribute '_extra_content'``). A policy never sends video. The fallback is a subclass of the stock
processor class whose only parts are the image processor (the PIL one) and the tokenizer: the stock
``__call__``, image-token expansion and chat template run unchanged, so the prompt is the stock one,
token for token. It saves in the published layout (``processor_class`` names the stock class).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from transformers import AutoProcessor, ProcessorMixin

from ..errors import CheckpointError

# model_type -> stock processor class whose construction needs a video processor
VIDEO_PROCESSOR_FAMILIES = {
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
    "smolvlm": "SmolVLMProcessor",
}


@functools.cache
def image_only_processor_class(stock_name: str) -> type[ProcessorMixin]:
    """A subclass of the stock processor ``stock_name`` built from (image_processor, tokenizer) only."""
    import transformers

    stock = getattr(transformers, stock_name)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_seq_len=None, **kwargs):
        # ProcessorMixin reads the parts from this signature, and the saved settings it passes on from its
        # argument names: no video_processor (neither type-checked, the torchvision failure, nor expected);
        # image_seq_len is SmolVLM's one setting.
        if image_seq_len is not None:
            kwargs["image_seq_len"] = image_seq_len
        stock.__init__(self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                       chat_template=chat_template, **kwargs)

    doc = f"{stock_name} without its video processor (no torchvision needed); prompts are the stock ones."
    # The stock name: saved files say processor_class=<stock>, so a machine with torchvision loads the stock class.
    return type(stock_name, (stock,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


def is_image_only(processor) -> bool:
    """True when ``processor`` is the torchvision-free fallback of its stock class."""
    return type(processor).__module__ == __name__


@functools.cache
def _announce(model_type: str, stock_name: str) -> None:
    print(f"[vla] {stock_name} cannot be built without torchvision (it also holds a video processor); using the "
          f"same processor without its video part: image processor + tokenizer + the model's image-token "
          f"expansion, token-for-token the stock prompt. Policies never send video.", file=sys.stderr)


def load_processor(source: str | Path, model_type: str, *, trust_remote_code: bool = False):
    """``AutoProcessor.from_pretrained``, falling back (announced once) to the image-only processor."""
    try:
        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (AttributeError, ImportError, OSError) as e:  # which one depends on the files: all name the video side
        stock_name = VIDEO_PROCESSOR_FAMILIES.get(model_type)
        if stock_name is None or not any(w in str(e).lower() for w in ("video_processor", "torchvision", "video processor")):
            raise
    try:
        processor = image_only_processor_class(stock_name).from_pretrained(source)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"could not build the image processor and tokenizer of {source!r} ({err}); the directory needs "
            "preprocessor_config.json and the tokenizer files of the published checkpoint"
        ) from err
    _announce(model_type, stock_name)
    return processor
