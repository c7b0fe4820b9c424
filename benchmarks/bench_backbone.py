"""Default backbone: build, reload and forward cost per option (layers x image tokens).

Incumbents in the same run: loading the language model straight from the GGUF wheel (what one would do
without a cached build) against reloading the built directory; the full 30-layer / 49-token backbone
against the truncated / pooled variants for one forward (one 224 px image + a short chat prompt).

    .venv/bin/python benchmarks/bench_backbone.py                 # ~3-4 min: builds 4 variants in a temp cache
    .venv/bin/python benchmarks/bench_backbone.py --threads 1     # torch threads (default: torch's choice)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

VARIANTS = [(None, 49), (None, 16), (8, 49), (8, 16)]


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    parser.add_argument("--repeat", type=int, default=5, help="forward repetitions (median reported)")
    parser.add_argument("--keep", type=Path, default=None, help="build into this cache and keep it")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cache = args.keep or Path(tempfile.mkdtemp(prefix="vla-bench-backbone-"))
    os.environ["VLA_CACHE"] = str(cache)
    from PIL import Image
    from skimage import data
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaForCausalLM

    import vla.backbones.efficientnet  # noqa: F401  registers the tower for the Auto classes
    from vla.backbones import default as db

    image = Image.fromarray(data.chelsea())
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "Pick up the red cube."}]}]
    rows, base_forward = [], None
    try:
        for layers, tokens in VARIANTS:
            build_s, path = timed(lambda: db.build_default_backbone(
                num_layers=layers, image_tokens=tokens, force=True, verbose=False))
            reload_s, (model, processor) = timed(lambda: (
                AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)))
            inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors="pt")
            with torch.no_grad():
                model(**inputs)  # warm-up
                forward_s, _ = timed(lambda: model(**inputs), args.repeat)
                tower_s, _ = timed(lambda: model.model.vision_tower(inputs["pixel_values"]), args.repeat)
            base_forward = base_forward or forward_s
            size_mb = sum(f.stat().st_size for f in path.iterdir()) / 1e6
            rows.append((layers or 30, tokens, inputs["input_ids"].shape[1], build_s, reload_s, forward_s,
                         base_forward / forward_s, tower_s, size_mb))
            del model

        gguf = db.locate_sources()["language"].path
        db._load_gguf.cache_clear()
        gguf_s, _ = timed(lambda: LlamaForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                    dtype=torch.float32))
        full_reload_s = rows[0][4]
    finally:
        if args.keep is None:
            shutil.rmtree(cache, ignore_errors=True)

    print(f"\ntorch threads: {torch.get_num_threads()}; load average: {os.getloadavg()[0]:.1f}")
    print("| layers | image tokens | seq len | build s | reload s | forward s (vs full/49) | tower s | size MB |")
    print("|-------:|-------------:|--------:|--------:|---------:|-----------------------:|--------:|--------:|")
    for layers, tokens, seq, build_s, reload_s, forward_s, ratio, tower_s, size_mb in rows:
        print(f"| {layers} | {tokens} | {seq} | {build_s:.1f} | {reload_s:.2f} | {forward_s:.3f} ({ratio:.2f}x) "
              f"| {tower_s:.3f} | {size_mb:.0f} |")
    print("\nfirst build includes the GGUF dequantisation; later builds reuse it in-process.")
    print(f"LM straight from the GGUF (incumbent, no tokenizer): {gguf_s:.1f} s; reload of the built full "
          f"backbone (model + processor): {full_reload_s:.2f} s -> {gguf_s / full_reload_s:.0f}x faster")


if __name__ == "__main__":
    main()
