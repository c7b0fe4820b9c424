"""Real-size VLMs through `vla finetune`: the dry-run plan against 3 real LoRA steps and one `vla predict`.

    python benchmarks/bench_real_size.py                                   # SmolVLM-256M (~12 min here)
    python benchmarks/bench_real_size.py --models smolvlm-256m,paligemma-3b  # + PaliGemma-3B in bf16 (needs a
                                                                           # CPU with native bf16, or a GPU)
    python benchmarks/bench_real_size.py --models smolvlm2-500m,qwen3-vl-2b   # fp32
    python benchmarks/bench_real_size.py --models qwen2.5-vl-3b             # bf16, like PaliGemma-3B

Each architecture is built from its published config sizes with random weights (no Hub access
needed) and saved as an ordinary model directory with a processor built offline: a word-level
tokenizer with the real vocabulary size and the family's own image processor with its real
settings (SmolVLM: image splitting into 512 px tiles after resizing the longest edge to 2048 px,
64 tokens per tile; PaliGemma: 224 px, 256 image tokens). Random weights cost exactly what trained
ones cost in time and memory; the losses mean nothing.

For each model, as separate processes on one tiny LeRobot dataset (224 px camera, parallel
decoding with 256 bins):
  1. `vla finetune --dry-run --json`: the plan, its s/step and its predicted peak RSS;
  2. `vla finetune --train.steps 3`: measured s/step (median of steps 2-3, step 1 warms up, as the
     dry run's first micro-batch does) and the process's peak RSS (``wait4``'s ru_maxrss);
  3. `vla predict` on the run's example frame (loads base + adapter, one parallel-decoding forward).
The table gives measured/predicted for both; the plan is meant to be within +-25%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# HuggingFaceTB/SmolVLM-256M-Instruct: config.json (Idefics3 layout: SigLIP base-patch16-512 tower,
# SmolLM2-135M text model, pixel-shuffle connector with scale factor 4) and preprocessor_config.json.
SMOLVLM_256M = {
    "text": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64, vocab_size=49280, max_position_embeddings=8192,
                 rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   image_size=512, patch_size=16),
    "scale_factor": 4, "image_seq_len": 64,
    "image_processor": dict(do_image_splitting=True, size={"longest_edge": 2048},
                            max_image_size={"longest_edge": 512}),
    "base_vocab": 49152,  # ordinary tokens; the other 128 are special (image, row/col, chat) tokens
}
# google/paligemma-3b-pt-224: config.json (SigLIP So400m/14 tower at 224 px, Gemma-2B text model).
PALIGEMMA_3B = {
    "text": dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
                 num_key_value_heads=1, head_dim=256, vocab_size=257216, max_position_embeddings=8192,
                 rope_theta=10000.0, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh"),
    "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                   image_size=224, patch_size=14, projection_dim=2048),
    "projection_dim": 2048, "image_seq_length": 256,
    "base_vocab": 256000,  # Gemma's; the processor adds 1,024 <loc> and 128 <seg> tokens
}
# HuggingFaceTB/SmolVLM2-500M-Video-Instruct: config.json (SmolVLM layout: SigLIP base-patch16-512 tower,
# SmolLM2-360M text model, scale factor 4, 64 tokens per 512 px tile). Image splitting off, as SmolVLA
# runs it: one 512 px view per camera, 64 tokens.
SMOLVLM2_500M = {
    "text": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5, head_dim=64, vocab_size=49280, max_position_embeddings=8192,
                 rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "vision": SMOLVLM_256M["vision"], "scale_factor": 4, "image_seq_len": 64,
    "image_processor": dict(do_image_splitting=False, size={"longest_edge": 512}, max_image_size={"longest_edge": 512}),
    "base_vocab": 49152,
}
# Qwen/Qwen2.5-VL-3B-Instruct and Qwen/Qwen3-VL-2B-Instruct: config.json and preprocessor_config.json
# (dynamic resolution: a 224 px frame is 8x8 = 64 tokens at patch 14, 7x7 = 49 at patch 16).
QWEN2_5_VL_3B = {
    "text": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
    "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=2048,
                   fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    "tie_word_embeddings": True, "patch_size": 14, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "base_vocab": 151643,
}
QWEN3_VL_2B = {
    "text": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                 rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                                     "mrope_section": [24, 20, 20], "mrope_interleaved": True}),
    "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                   spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048, num_position_embeddings=2304,
                   deepstack_visual_indexes=[5, 11, 17]),
    "tie_word_embeddings": True, "patch_size": 16, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "base_vocab": 151643,
}
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
INSTRUCTION = "pick up the red cube and put it in the bowl"


def word_tokenizer(size: int, special: list[str]):
    """A word-level fast tokenizer with exactly ``size`` entries (the real vocabulary size), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    head = ["<unk>", "<s>", "</s>", "<pad>", *special]
    words = list(dict.fromkeys(INSTRUCTION.split() + "what action should the robot take to".split()))
    vocab = {w: i for i, w in enumerate(head + words)}
    vocab.update({f"w{i}": i for i in range(len(vocab), size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens={})
    fast.add_special_tokens({"additional_special_tokens": special})
    return fast


def build_smolvlm_256m():
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor, Idefics3VisionConfig, LlamaConfig)

    c = SMOLVLM_256M
    grid = [f"<row_{r}_col_{k}>" for r in range(1, 7) for k in range(1, 7)]
    special = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *grid]
    tok = word_tokenizer(c["base_vocab"], special)
    proc = Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**c["image_processor"]), tokenizer=tok,
                             image_seq_len=c["image_seq_len"])
    cfg = Idefics3Config(
        vision_config=Idefics3VisionConfig(**c["vision"]),
        text_config=LlamaConfig(**c["text"], pad_token_id=3, bos_token_id=1, eos_token_id=2, dtype="float32"),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=c["scale_factor"],
        tie_word_embeddings=False)
    return Idefics3ForConditionalGeneration(cfg), proc


def build_paligemma_3b():
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessorPil, SiglipVisionConfig)

    c = PALIGEMMA_3B
    tok = word_tokenizer(c["base_vocab"], ["<image>"])
    size = c["vision"]["image_size"]
    image_processor = SiglipImageProcessorPil(size={"height": size, "width": size})
    image_processor.image_seq_length = c["image_seq_length"]
    proc = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    cfg = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(**c["vision"]),
        text_config=GemmaConfig(**c["text"], pad_token_id=3, bos_token_id=1, eos_token_id=2),
        image_token_id=proc.tokenizer.convert_tokens_to_ids("<image>"), projection_dim=c["projection_dim"])
    return PaliGemmaForConditionalGeneration(cfg), proc


def build_smolvlm2_500m():
    from transformers import (LlamaConfig, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil,
                              SmolVLMVisionConfig)

    from vla.backbones.processors import image_only_processor_class

    c = SMOLVLM2_500M
    grid = [f"<row_{r}_col_{k}>" for r in range(1, 7) for k in range(1, 7)]
    tok = word_tokenizer(c["base_vocab"], ["<fake_token_around_image>", "<image>", "<end_of_utterance>",
                                           "<global-img>", *grid])
    proc = image_only_processor_class("SmolVLMProcessor")(
        image_processor=SmolVLMImageProcessorPil(**c["image_processor"]), tokenizer=tok, image_seq_len=c["image_seq_len"])
    cfg = SmolVLMConfig(
        vision_config=SmolVLMVisionConfig(**c["vision"]),
        text_config=LlamaConfig(**c["text"], pad_token_id=3, bos_token_id=1, eos_token_id=2, dtype="float32"),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=c["scale_factor"], tie_word_embeddings=False)
    return SmolVLMForConditionalGeneration(cfg), proc


def _build_qwen(c: dict, model_class: str, config_class: str, processor_class: str):
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    from vla.backbones.processors import image_only_processor_class

    tok = word_tokenizer(c["base_vocab"], QWEN_SPECIAL)
    ids = {f"{k}_token_id": tok.convert_tokens_to_ids(f"<|{k}|>") for k in ("vision_start", "vision_end")}
    ids |= {"image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
            "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>")}
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=c["patch_size"], merge_size=2, temporal_patch_size=2, image_mean=c["image_mean"],
        image_std=c["image_std"], size={"shortest_edge": 3136, "longest_edge": 12845056})
    proc = image_only_processor_class(processor_class)(image_processor=image_processor, tokenizer=tok)
    cfg = getattr(transformers, config_class)(
        vision_config=c["vision"], text_config=dict(c["text"], dtype="float32"),
        tie_word_embeddings=c["tie_word_embeddings"], **ids)
    return getattr(transformers, model_class)(cfg), proc


def build_qwen2_5_vl_3b():
    return _build_qwen(QWEN2_5_VL_3B, "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig", "Qwen2_5_VLProcessor")


def build_qwen3_vl_2b():
    return _build_qwen(QWEN3_VL_2B, "Qwen3VLForConditionalGeneration", "Qwen3VLConfig", "Qwen3VLProcessor")


# name -> (builder, weight dtype). 3B-class models in fp32 need ~15 GiB for the weights alone: bf16 there,
# which is fast only on CPUs with native bf16 (AMX/AVX512-BF16) or a GPU.
MODELS = {"smolvlm-256m": (build_smolvlm_256m, "float32"), "paligemma-3b": (build_paligemma_3b, "bfloat16"),
          "smolvlm2-500m": (build_smolvlm2_500m, "float32"), "qwen3-vl-2b": (build_qwen3_vl_2b, "float32"),
          "qwen2.5-vl-3b": (build_qwen2_5_vl_3b, "bfloat16")}


def save_model(name: str, out: Path) -> tuple[int, float]:
    """Build ``name`` with random weights in its benchmark dtype and save it; (parameters, seconds)."""
    import torch

    build, dtype = MODELS[name]
    t = time.perf_counter()
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # build in place: a 3B fp32 copy would double the peak
    try:
        model, proc = build()
    finally:
        torch.set_default_dtype(previous)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    proc.save_pretrained(out)
    del model
    return params, time.perf_counter() - t


def run_measured(cmd: list[str], log: Path) -> tuple[int, float, float, str]:
    """Run ``cmd`` to the end (stderr to ``log``); (exit code, wall seconds, peak RSS MiB of the process, stdout)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t = time.perf_counter()
    with open(log, "w") as err, tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        stdout = out.read()
    return os.waitstatus_to_exitcode(status), time.perf_counter() - t, usage.ru_maxrss / 1024, stdout  # KiB on Linux


def finetune_args(base: Path, data: Path, out: Path, steps: int) -> list[str]:
    return ["--base", str(base), "--data", f"arm={data}", "--out", str(out), "--train.steps", str(steps),
            "--train.batch_size", "1", "--model.chunk_size", "8", "--model.decoding", "parallel",
            "--data.val_fraction", "0.5", "--eval.max_samples", "1", "--eval.trace_episodes", "0",
            "--checkpoint.every", "0", "--log.every", "1", "--log.progress", "false"]


def bench(name: str, root: Path, dry_run_steps: int, train_steps: int = 3) -> dict:
    from vla.finetune.metrics import read_metrics
    from vla.finetune.testing import write_tiny_dataset

    base, out = root / name, root / f"{name}-run"
    params, build_s = save_model(name, base)
    print(f"[{name}] built {params / 1e6:.0f}M parameters in {build_s:.0f} s", flush=True)
    data = write_tiny_dataset(root / "data", episodes=2, length=8, action_dim=7, cameras=["front"], robot_type="arm",
                              size=224, tasks=(INSTRUCTION,)) if not (root / "data").exists() else root / "data"
    py = sys.executable
    code, dry_s, dry_rss, stdout = run_measured([py, "-m", "vla.cli", "finetune", *finetune_args(base, data, out, train_steps),
                                                 "--dry-run", "--dry-run-steps", str(dry_run_steps), "--json"],
                                                root / f"{name}-dry.log")
    assert code == 0, (root / f"{name}-dry.log").read_text()[-3000:]
    plan = json.loads(stdout)
    (root / f"{name}-plan.json").write_text(stdout)
    timing = plan["timing"]
    print(f"[{name}] dry run: {dry_s:.0f} s, {timing['seconds_per_step']:.2f} s/step, predicted peak RSS "
          f"{timing['memory']['predicted_peak_rss_mib']:.0f} MiB", flush=True)

    code, train_s, train_rss, _ = run_measured([py, "-m", "vla.cli", "finetune", *finetune_args(base, data, out, train_steps)],
                                            root / f"{name}-train.log")
    assert code == 0, (root / f"{name}-train.log").read_text()[-3000:]
    steps = [r for r in read_metrics(out) if r["split"] == "train"]
    per_step = [1 / r["samples_per_s"] for r in steps[1:]]  # batch 1, one step per record: seconds per step
    measured_s = float(np.median(per_step))
    print(f"[{name}] {train_steps} steps: {train_s:.0f} s wall, {measured_s:.2f} s/step, peak RSS {train_rss:.0f} MiB", flush=True)

    ex = json.loads((out / "examples" / "examples.json").read_text())["arm"]
    code, predict_s, predict_rss, predicted = run_measured(
        [py, "-m", "vla.cli", "predict", "--model", str(out), "--image", str(out / "examples" / ex["images"][0]),
         "--instruction", ex["instruction"], "--embodiment", "arm", "--json"], root / f"{name}-predict.log")
    assert code == 0, (root / f"{name}-predict.log").read_text()[-3000:]
    model_ms = json.loads(predicted)["timings"]["model_ms"]  # the first forward, in the process: no warm-up
    print(f"[{name}] predict: {predict_s:.0f} s wall (load + {model_ms / 1e3:.1f} s model), peak RSS {predict_rss:.0f} MiB",
          flush=True)
    tokens = plan["tokens"]["arm"]
    return {"model": name, "params": params, "dtype": MODELS[name][1], "tokens": tokens["tokens_per_sample"],
            "trainable": plan["parameters"]["trainable"],
            "pred_s": timing["seconds_per_step"], "meas_s": measured_s,
            "pred_rss": timing["memory"]["predicted_peak_rss_mib"], "meas_rss": train_rss,
            "dry_rss": dry_rss, "dry_s": dry_s, "train_s": train_s, "predict_s": predict_s, "predict_rss": predict_rss,
            "model_s": model_ms / 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smolvlm-256m", help=f"comma-separated, from {list(MODELS)}")
    p.add_argument("--steps", type=int, default=3, help="measured LoRA steps (the first one warms up)")
    p.add_argument("--dry-run-steps", type=int, default=2, help="micro-batches the dry run times after its warm-up")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    args = p.parse_args()
    from vla.precision import cpu_capability, cpu_name

    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores; native bf16: {cpu_capability() or 'unknown'})", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_real_size_") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = [bench(name, root, args.dry_run_steps, args.steps) for name in args.models.split(",")]
    print("\n| model | params | weights | tokens/sample | trainable | s/step predicted | s/step measured (ratio) "
          "| peak RSS predicted MiB | peak RSS measured MiB (ratio) | predict s (model s) | predict RSS MiB |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:,.0f}M | {r['dtype']} | {r['tokens']:.0f} | "
              f"{r['trainable'] / 1e6:.1f}M | {r['pred_s']:.2f} | {r['meas_s']:.2f} ({r['meas_s'] / r['pred_s']:.2f}x) | "
              f"{r['pred_rss']:,.0f} | {r['meas_rss']:,.0f} ({r['meas_rss'] / r['pred_rss']:.2f}x) | "
              f"{r['predict_s']:.0f} ({r['model_s']:.1f}) | {r['predict_rss']:,.0f} |")
    for r in rows:
        off = [what for what, ratio in (("s/step", r["meas_s"] / r["pred_s"]), ("peak RSS", r["meas_rss"] / r["pred_rss"]))
               if not 0.75 <= ratio <= 1.25]
        print(f"{r['model']}: " + (f"plan off by more than 25% for {', '.join(off)}" if off else "plan within 25%"))


if __name__ == "__main__":
    main()
