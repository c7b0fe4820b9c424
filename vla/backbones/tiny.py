"""Tiny randomly initialised VLMs of each supported family, built offline from config.

They exist for tests and benchmarks: same classes, processors and code paths as the
real checkpoints, ~100k parameters, a forward pass in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast

from .processors import image_only_processor_class

FAMILIES = ("llava", "idefics3", "paligemma", "qwen2_5_vl", "qwen3_vl", "smolvlm", "gemma3")
IMAGE_SIZE = 32
_CORPUS = [
    "pick up the red cube and place it in the bowl",
    "open the drawer", "close the window", "push the button", "move the arm to the left",
    "transfer the cube to the other arm", "robot task action state camera image",
    "What is in the image? A robot arm on a table.",
]
QWEN_SPECIAL = {"image": "<|image_pad|>", "video": "<|video_pad|>", "vision_start": "<|vision_start|>",
                "vision_end": "<|vision_end|>"}
# The published Qwen2.5-VL-Instruct chat template (chat_template.json): an image renders as
# <|vision_start|><|image_pad|><|vision_end|>, which the processor expands to one pad per merged patch.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The image and text parts of the published SmolVLM2 and Gemma 3 templates (their full templates also
# handle video, tools and system turns): an image renders as <image> and <start_of_image>.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)


def _tokenizer(special: list[str], vocab_size: int = 400, named: dict[str, str] | None = None,
               chat_template: str | None = None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>", *special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    # ``named``: special tokens a processor reads as tokenizer attributes (Gemma 3's boi_token, ...)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens=dict(named or {}), chat_template=chat_template,
    )


def _text_config(vocab_size: int, **extra) -> dict:
    return dict(_TEXT, vocab_size=vocab_size, pad_token_id=3, bos_token_id=1, eos_token_id=2, dtype="float32", **extra)


def build_tiny_vlm(family: str = "llava", seed: int = 0):
    """Return (model, processor) of a tiny VLM of ``family`` (one of FAMILIES)."""
    torch.manual_seed(seed)
    if family == "llava":
        from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                                  LlavaForConditionalGeneration, LlavaProcessor)
        tok = _tokenizer(["<image>"])
        proc = LlavaProcessor(
            image_processor=CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                                  crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
            tokenizer=tok, patch_size=8, vision_feature_select_strategy="full", num_additional_image_tokens=1,
        )
        cfg = LlavaConfig(
            vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=8),
            text_config=LlamaConfig(**_text_config(len(tok))),
            image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
            vision_feature_select_strategy="full", projector_hidden_act="gelu",
        )
        model = LlavaForConditionalGeneration(cfg)
    elif family == "idefics3":
        from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                                  Idefics3Processor, Idefics3VisionConfig, LlamaConfig)
        tok = _tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"])
        scale = 2
        seq_len = (IMAGE_SIZE // 8) ** 2 // scale**2
        proc = Idefics3Processor(
            image_processor=Idefics3ImageProcessorPil(
                do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                max_image_size={"longest_edge": IMAGE_SIZE}, do_resize=True),
            tokenizer=tok, image_seq_len=seq_len,
        )
        cfg = Idefics3Config(
            vision_config=Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=8),
            text_config=LlamaConfig(**_text_config(len(tok))),
            image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale, tie_word_embeddings=False,
        )
        model = Idefics3ForConditionalGeneration(cfg)
    elif family == "paligemma":
        from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration,
                                  PaliGemmaProcessor, SiglipImageProcessorPil, SiglipVisionConfig)
        tok = _tokenizer(["<image>"])
        image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        image_processor.image_seq_length = (IMAGE_SIZE // 8) ** 2
        proc = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
        tok = proc.tokenizer  # the processor adds its <loc>/<seg> tokens: size the vocab after it
        cfg = PaliGemmaConfig(
            vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=8,
                                             projection_dim=32),
            text_config=GemmaConfig(**_text_config(len(tok), head_dim=8)),
            image_token_id=tok.convert_tokens_to_ids("<image>"), projection_dim=32,
        )
        model = PaliGemmaForConditionalGeneration(cfg)
    elif family in ("qwen2_5_vl", "qwen3_vl"):
        model, proc = _tiny_qwen(family)
    elif family == "smolvlm":
        from transformers import (LlamaConfig, SmolVLMConfig, SmolVLMForConditionalGeneration,
                                  SmolVLMImageProcessorPil, SmolVLMVisionConfig)
        tok = _tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", "<|im_start|>"],
                         chat_template=SMOLVLM_CHAT_TEMPLATE)
        scale = 2
        proc = image_only_processor_class("SmolVLMProcessor")(
            image_processor=SmolVLMImageProcessorPil(
                do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                max_image_size={"longest_edge": IMAGE_SIZE}, do_resize=True),
            tokenizer=tok, image_seq_len=(IMAGE_SIZE // 8) ** 2 // scale**2, chat_template=SMOLVLM_CHAT_TEMPLATE,
        )
        cfg = SmolVLMConfig(
            vision_config=SmolVLMVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=8),
            text_config=LlamaConfig(**_text_config(len(tok))),
            image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale, tie_word_embeddings=False,
        )
        model = SmolVLMForConditionalGeneration(cfg)
    elif family == "gemma3":
        from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil,
                                  Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig)
        named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
        tok = _tokenizer([*named.values(), "<start_of_turn>", "<end_of_turn>"], named=named, chat_template=GEMMA3_CHAT_TEMPLATE)
        tokens_per_image = (IMAGE_SIZE // 16) ** 2  # the tower's 4x4 patches average-pooled to 2x2
        proc = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
                               tokenizer=tok, image_seq_length=tokens_per_image, chat_template=GEMMA3_CHAT_TEMPLATE)
        ids = {k: tok.convert_tokens_to_ids(v) for k, v in named.items()}
        cfg = Gemma3Config(
            vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=8),
            text_config=Gemma3TextConfig(**_text_config(len(tok), head_dim=8, query_pre_attn_scalar=8,
                                                        sliding_window=64)),
            mm_tokens_per_image=tokens_per_image, boi_token_index=ids["boi_token"],
            eoi_token_index=ids["eoi_token"], image_token_index=ids["image_token"],
        )
        model = Gemma3ForConditionalGeneration(cfg)
    else:
        raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {FAMILIES}")
    return model.eval(), proc


def _tiny_qwen(family: str):
    """Qwen2.5-VL or Qwen3-VL: dynamic resolution (patch 8, 2x2 merge: a 32 px frame is 4 tokens), M-RoPE."""
    from transformers import Qwen2VLImageProcessorPil

    tok = _tokenizer([*QWEN_SPECIAL.values(), "<|im_start|>", "<|im_end|>"], chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    ids = {f"{k}_token_id": tok.convert_tokens_to_ids(v) for k, v in QWEN_SPECIAL.items()}
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=32)
    # mrope_section splits each head's rotary half (head_dim 8 -> 4) over time, height and width
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=8, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": IMAGE_SIZE * IMAGE_SIZE, "longest_edge": 4 * IMAGE_SIZE * IMAGE_SIZE})
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        cfg = Qwen2_5_VLConfig(vision_config=dict(vision, window_size=32, fullatt_block_indexes=[1]),
                               text_config=_text_config(len(tok), rope_parameters=rope), **ids)
        model, stock = Qwen2_5_VLForConditionalGeneration(cfg), "Qwen2_5_VLProcessor"
    else:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
        image_processor.image_mean = image_processor.image_std = [0.5, 0.5, 0.5]
        cfg = Qwen3VLConfig(vision_config=dict(vision, num_position_embeddings=16, deepstack_visual_indexes=[0]),
                            text_config=_text_config(len(tok), head_dim=8, rope_parameters=dict(rope, mrope_interleaved=True)),
                            **ids)
        model, stock = Qwen3VLForConditionalGeneration(cfg), "Qwen3VLProcessor"
    proc = image_only_processor_class(stock)(image_processor=image_processor, tokenizer=tok,
                                             chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    return model, proc


# Families whose published checkpoints keep the processor parts in separate files: the video processor
# config is the image one under the video class name (the classes need torchvision to be built here).
_PUBLISHED_VIDEO = {"qwen2_5_vl": None, "qwen3_vl": "Qwen3VLVideoProcessor", "smolvlm": "SmolVLMVideoProcessor"}


def save_tiny_vlm(out_dir: str | Path, family: str = "llava", seed: int = 0) -> Path:
    """Build a tiny VLM and save it as a Hugging Face model directory laid out as its published checkpoints are."""
    model, proc = build_tiny_vlm(family, seed)
    out = Path(out_dir)
    model.save_pretrained(out)
    if family not in _PUBLISHED_VIDEO:
        proc.save_pretrained(out)
        return out
    # config, weights, tokenizer files, preprocessor_config.json, chat_template.json (+ video and processor configs)
    proc.tokenizer.save_pretrained(out)
    proc.image_processor.save_pretrained(out)
    (out / "chat_template.json").write_text(json.dumps({"chat_template": proc.chat_template}, indent=2))
    video = _PUBLISHED_VIDEO[family]
    if video:
        settings = dict(proc.image_processor.to_dict(), processor_class=type(proc).__name__)
        settings.pop("image_processor_type", None)
        (out / "video_preprocessor_config.json").write_text(json.dumps(dict(settings, video_processor_type=video), indent=2))
    if family == "smolvlm":
        (out / "processor_config.json").write_text(json.dumps(
            {"image_seq_len": proc.image_seq_len, "processor_class": type(proc).__name__}, indent=2))
    return out
