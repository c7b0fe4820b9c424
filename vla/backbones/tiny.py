"""Tiny randomly initialised VLMs of each supported family, built offline from config.

They exist for tests and benchmarks: same classes, processors and code paths as the
real checkpoints, ~100k parameters, a forward pass in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast

FAMILIES = ("llava", "idefics3", "paligemma")
IMAGE_SIZE = 32
_CORPUS = [
    "pick up the red cube and place it in the bowl",
    "open the drawer", "close the window", "push the button", "move the arm to the left",
    "transfer the cube to the other arm", "robot task action state camera image",
    "What is in the image? A robot arm on a table.",
]
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)


def _tokenizer(special: list[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>", *special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={},
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
    else:
        raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {FAMILIES}")
    return model.eval(), proc


def save_tiny_vlm(out_dir: str | Path, family: str = "llava", seed: int = 0) -> Path:
    """Build a tiny VLM and save it as a normal Hugging Face model directory."""
    model, proc = build_tiny_vlm(family, seed)
    out = Path(out_dir)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out
