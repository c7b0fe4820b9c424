"""Predict latency: our constrained decode vs OpenVLA-style `generate`, and the shipped policy's levers.

    python benchmarks/bench_predict.py --model tiny
    python benchmarks/bench_predict.py --model default --layers 30 --repeats 3
    python benchmarks/bench_predict.py --model shipped --profile     # levers: dtype, folded tower, compile, int8

``--model shipped``: the shipped default policy on its own example frames, one embodiment at a time.
The incumbent is today's fp32 path (adapter merged, BatchNorm unfolded); each lever is timed against it
in alternation (A, B, B, A, ...) so other load hits both alike, and its actions are compared with the
incumbent's (token agreement, mean |action difference| in normalized units).

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


def alternating(a, b, repeats: int) -> tuple[float, float]:
    """Median ms of a and b, timed in the order a b b a a b b a ... after one warm-up call each."""
    a(), b()
    times: dict = {a: [], b: []}
    for i in range(repeats):
        for fn in ((a, b) if i % 2 == 0 else (b, a)):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return statistics.median(times[a]) * 1e3, statistics.median(times[b]) * 1e3


def hardware_line(dtype: torch.dtype) -> str:
    from vla.precision import cpu_capability, cpu_name, matmul_gflops

    peak = matmul_gflops(dtype, seconds=1.0)
    return (f"CPU: {cpu_name()} | capability: {cpu_capability() or 'unknown'} | torch threads "
            f"{torch.get_num_threads()} | matmul peak {str(dtype).removeprefix('torch.')} {peak:.0f} GFLOP/s")


def shipped_levers(args) -> None:
    """The shipped default policy: today's fp32 path against each inference lever, in one run."""
    import copy
    import json
    import warnings

    from PIL import Image

    from vla.defaults import default_policy_path
    from vla.policy import optimize_model_for_inference
    from vla.precision import resolve_precision

    warnings.filterwarnings("ignore")
    path = default_policy_path()
    auto = resolve_precision("auto", args.device)
    if args.device and args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(args.device)}")
    else:
        print(hardware_line(torch.float32))
        if auto.dtype != torch.float32:
            print(hardware_line(auto.dtype))
    print(f"auto dtype: {auto.name} ({auto.reason})")
    incumbent = VLAPolicy.from_pretrained(path, dtype="float32", optimize_for_inference=False, device=args.device)
    examples = json.loads((path / "examples" / "examples.json").read_text())

    def variant(name: str):
        if name == "ours (auto)":
            return VLAPolicy.from_pretrained(path, dtype="auto", device=args.device)
        p = copy.copy(incumbent)
        p.model = copy.deepcopy(incumbent.model)
        if name == "folded tower":
            optimize_model_for_inference(p.model)
        elif name == "bf16 weights":
            p.model.to(torch.bfloat16)
        elif name == "folded + bf16":
            optimize_model_for_inference(p.model).to(torch.bfloat16)
        elif name == "int8 dynamic (torch.ao)":
            from torch.ao.quantization import quantize_dynamic

            core = p.model.model
            core.language_model = quantize_dynamic(core.language_model, {torch.nn.Linear}, dtype=torch.qint8)
        elif name == "torch.compile":
            optimize_model_for_inference(p.model)
            p.model.model.forward = torch.compile(p.model.model.forward, dynamic=True)
        return p

    names = ["folded tower", "bf16 weights", "folded + bf16", "ours (auto)"] + (
        ["int8 dynamic (torch.ao)", "torch.compile"] if args.slow_levers else [])
    print(f"\n| embodiment | lever | incumbent ms | lever ms | speed-up | token agreement | mean abs diff |")
    print("|---|---|---|---|---|---|---|")
    for emb_name, ex in examples.items():
        if args.embodiments and emb_name not in args.embodiments:
            continue
        emb = incumbent.embodiments[emb_name]
        images = {cam: Image.open(path / "examples" / f) for cam, f in zip(emb.cameras, ex["images"])}
        request = [PredictRequest(images, ex["instruction"], emb_name)]
        base = incumbent.predict_batch(request)[0]
        codec = incumbent.codec(emb_name)
        tokenize = lambda c: codec.encode(c.actions)  # noqa: E731
        for name in names:
            lever = variant(name)
            ms_a, ms_b = alternating(lambda: incumbent.predict_batch(request), lambda: lever.predict_batch(request),
                                     args.repeats)
            out = lever.predict_batch(request)[0]
            agree = float(np.mean(np.asarray(tokenize(out)) == np.asarray(tokenize(base))))
            diff = float(np.abs(codec.normalize(out.actions) - codec.normalize(base.actions)).mean())
            print(f"| {emb_name} | {name} | {ms_a:.1f} | {ms_b:.1f} | {ms_a / ms_b:.2f}x | {agree:.1%} | {diff:.4f} |",
                  flush=True)
            if args.profile and name == "ours (auto)":
                profile(f"{emb_name}: incumbent", lambda: incumbent.predict_batch(request))
                profile(f"{emb_name}: ours", lambda: lever.predict_batch(request))
            del lever


def profile(title: str, fn, calls: int = 5, rows: int = 12) -> None:
    """torch.profiler's top operators (self CPU time) over ``calls`` calls."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / calls / 1e3
    print(f"\nprofile, {title}: {total:.1f} ms of operator time per call")
    print("| operator | share | ms per call | calls per call |")
    print("|---|---|---|---|")
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:rows]:
        ms = e.self_cpu_time_total / calls / 1e3
        print(f"| {e.key} | {ms / total:.1%} | {ms:.2f} | {e.count / calls:g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "default", "shipped"), default="tiny")
    parser.add_argument("--embodiments", nargs="*", default=None, help="shipped: only these (default: all three)")
    parser.add_argument("--profile", action="store_true", help="shipped: torch.profiler top operators, before/after")
    parser.add_argument("--slow-levers", action="store_true",
                        help="shipped: also int8 dynamic quantization and torch.compile (compiles for minutes)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default=None, help="shipped: torch device, e.g. cuda (default: the CPU)")
    parser.add_argument("--layers", type=int, default=None, help="default backbone: decoder layers kept")
    parser.add_argument("--image-tokens", type=int, default=49, choices=(49, 16))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "shipped":
        return shipped_levers(args)
    print(hardware_line(torch.float32))

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
