"""Predict latency: our constrained decode vs OpenVLA-style `generate` over the full vocabulary.

    python benchmarks/bench_predict.py --model tiny
    python benchmarks/bench_predict.py --model default --layers 30 --repeats 3

Same model, same inputs, same run. "ours" = KV cache + logits over the action rows only;
"generate" = transformers `generate` with a logits processor masking non-action ids (full
vocabulary projection every step, what OpenVLA's predict_action does); "parallel" = one
forward over H*D query slots (needs a model fine-tuned that way; timing only here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vla.action_tokenizers import make_action_tokenizer  # noqa: E402
from vla.decoding import decode_autoregressive, decode_parallel, decode_with_generate  # noqa: E402
from vla.policy import VLAPolicy  # noqa: E402
from vla.prompt import PARALLEL_QUERY_TOKEN  # noqa: E402
from vla.testing import make_tiny_policy, tiny_embodiments  # noqa: E402
from vla.types import PredictRequest  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "default"), default="tiny")
    parser.add_argument("--layers", type=int, default=None, help="default backbone: decoder layers kept")
    parser.add_argument("--image-tokens", type=int, default=49, choices=(49, 16))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)

    tokenizer = make_action_tokenizer("bins", bins=256)
    if args.model == "tiny":
        policy = make_tiny_policy("llava", decoding="parallel", bins=256)
        size = 32
    else:
        options = {"num_layers": args.layers, "image_tokens": args.image_tokens}
        policy = VLAPolicy.from_backbone("default", tiny_embodiments(), tokenizer, decoding="parallel",
                                         base_options=options)
        size = 224
    emb = policy.embodiments["sawyer"]
    n_tokens = emb.chunk_size * emb.action_dim
    vocab = policy.model.get_output_embeddings().weight.shape[0]
    rng = np.random.default_rng(0)
    print(f"model={args.model} vocab={vocab} action tokens={len(policy.config.action_token_ids)} "
          f"chunk={emb.chunk_size}x{emb.action_dim}={n_tokens} tokens, threads={torch.get_num_threads()}")
    print(f"{'batch':>5} {'ours ms':>9} {'generate ms':>12} {'parallel ms':>12} {'ours chunks/s':>14} "
          f"{'speedup vs generate':>20}")
    query = policy.processor.tokenizer.convert_tokens_to_ids(PARALLEL_QUERY_TOKEN)
    for batch in args.batch:
        reqs = [PredictRequest([rng.integers(0, 256, (size, size, 3), dtype=np.uint8)], "pick up the red cube", "sawyer")
                for _ in range(batch)]
        inputs = policy.prepare(reqs)
        ids, lengths = policy.config.action_token_ids, policy.action_tokenizer.token_lengths
        ours = timed(lambda: decode_autoregressive(policy.model, inputs, ids, lengths, [n_tokens] * batch), args.repeats)
        ref = timed(lambda: decode_with_generate(policy.model, inputs, ids, n_tokens), args.repeats)
        par = timed(lambda: decode_parallel(policy.model, inputs, ids, query, n_tokens), args.repeats)
        print(f"{batch:>5} {ours:>9.1f} {ref:>12.1f} {par:>12.1f} {batch / ours * 1e3:>14.2f} {ref / ours:>19.2f}x")


if __name__ == "__main__":
    main()
