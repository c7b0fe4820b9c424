"""The shipped policy's predict latency with the image placeholder looked up per prompt vs read from the whole vocabulary.

    python benchmarks/bench_prompt.py --repeats 20

Every observation's prompt names the image placeholder (``vla.prompt.image_placeholder``). The naive
path (the code before this benchmark) built ``tokenizer.get_vocab()``, a dict of the whole vocabulary
(49k tokens for the shipped SmolVLM2 backbone), for every prompt; ours looks the two Qwen-VL markers up
by id. Same policy, same example frames (``vla/default_policy/examples``), one torch thread, timed in
alternation (A, B, B, A, ...) so other load hits both alike. Prints the CPU, the median per path and
the ratio, and checks that both paths predict the same actions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import vla.policy  # noqa: E402
from vla import VLAPolicy  # noqa: E402
from vla.defaults import default_policy_path  # noqa: E402
from vla.precision import cpu_name  # noqa: E402
from vla.prompt import image_placeholder  # noqa: E402


def naive_image_placeholder(processor) -> str:
    """The previous lookup: the whole vocabulary as a dict, every call."""
    token = processor.image_token
    vocab = processor.tokenizer.get_vocab()
    if token == "<|image_pad|>" and "<|vision_start|>" in vocab and "<|vision_end|>" in vocab:
        return f"<|vision_start|>{token}<|vision_end|>"
    return token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20, help="predictions per path and embodiment")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = default_policy_path()
    policy = VLAPolicy.from_pretrained(path)
    examples = json.loads((path / "examples" / "examples.json").read_text())
    print(f"CPU: {cpu_name()}; torch threads {args.threads}; vocabulary {len(policy.processor.tokenizer)} tokens")
    t0 = time.perf_counter()
    for _ in range(100):
        naive_image_placeholder(policy.processor)
    naive_ms = (time.perf_counter() - t0) * 10
    t0 = time.perf_counter()
    for _ in range(100):
        image_placeholder(policy.processor)
    ours_ms = (time.perf_counter() - t0) * 10
    print(f"placeholder alone: naive {naive_ms:.3f} ms, ours {ours_ms:.4f} ms")
    paths = {"naive": naive_image_placeholder, "ours": image_placeholder}
    print("| embodiment | naive predict ms (p50) | ours predict ms (p50) | ratio | same actions |")
    print("|---|---|---|---|---|")
    for name, ex in examples.items():
        images = [Image.open(path / "examples" / f) for f in ex["images"]]
        times: dict[str, list[float]] = {"naive": [], "ours": []}
        actions = {}
        for i in range(2 * args.repeats):
            which = ("naive", "ours", "ours", "naive")[i % 4]
            vla.policy.image_placeholder = paths[which]
            t0 = time.perf_counter()
            actions[which] = policy.predict(images, ex["instruction"], name).actions
            times[which].append((time.perf_counter() - t0) * 1e3)
        vla.policy.image_placeholder = image_placeholder
        naive, ours = statistics.median(times["naive"]), statistics.median(times["ours"])
        same = bool(np.array_equal(actions["naive"], actions["ours"]))
        print(f"| {name} | {naive:.1f} | {ours:.1f} | {naive / ours:.2f}x | {same} |")


if __name__ == "__main__":
    main()
