"""Action tokenizers: speed, reconstruction error and tokens/chunk on smooth synthetic chunks.

Compares, in one run, our binning (N=256, 1024) and FAST (DCT + BPE, a few
scale/vocab settings; ONE tokenizer fitted on all chunk shapes, as for a
multi-embodiment checkpoint) with the naive incumbent: OpenVLA-style
``np.digitize(x, np.linspace(-1, 1, 256))`` binning, which has 255 usable bins.

    .venv/bin/python benchmarks/bench_tokenizers.py            # ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_tokenizers.py --n-test 200 --n-train 500   # quick
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np

from vla.action_tokenizers import ActionTokenizer, make_action_tokenizer
from vla.data.synthetic import smooth_chunks

SHAPES = [(16, 4), (16, 7), (16, 14), (32, 4), (32, 7), (32, 14)]


class OpenVLABinning:
    """The incumbent, as in OpenVLA's ActionTokenizer (ids returned as 0-based bin indices)."""

    def __init__(self, n_bins: int = 256):
        self.bins = np.linspace(-1, 1, n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0  # only n_bins - 1 centers

    def encode(self, chunk: np.ndarray) -> list[int]:
        return np.digitize(np.clip(chunk, -1.0, 1.0), self.bins).ravel().tolist()  # values 1..256

    def decode(self, ids: list[int], h: int, d: int) -> np.ndarray:
        idx = np.clip(np.asarray(ids) - 1, 0, len(self.bin_centers) - 1)
        return self.bin_centers[idx].reshape(h, d)

    def encode_batch(self, chunks: np.ndarray) -> list[list[int]]:
        return [self.encode(c) for c in chunks]

    def decode_batch(self, ids: list[list[int]], h: int, d: int) -> np.ndarray:
        return np.stack([self.decode(i, h, d) for i in ids])


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(tok, x: np.ndarray, repeats: int) -> dict:
    n, h, d = x.shape
    ids = tok.encode_batch(x)
    rec = tok.decode_batch(ids, h, d)
    lengths = np.array([len(i) for i in ids])
    batch_s = best_time(lambda: tok.decode_batch(tok.encode_batch(x), h, d), repeats)
    few = x[: min(n, 200)]  # per-chunk API, as a policy calls it for one sample
    single_s = best_time(lambda: [tok.decode(tok.encode(c), h, d) for c in few], repeats) / len(few)
    return {
        "tokens": lengths.mean(),
        "p99": np.percentile(lengths, 99),
        "rmse": float(np.sqrt(np.mean((rec - x) ** 2))),
        "max": float(np.abs(rec - x).max()),
        "batch_cps": n / batch_s,
        "single_cps": 1.0 / single_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=2000, help="training chunks per shape for FAST")
    ap.add_argument("--n-test", type=int, default=1000, help="held-out chunks per shape")
    ap.add_argument("--repeats", type=int, default=5, help="best of this many timed passes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    train = [c for h, d in SHAPES for c in smooth_chunks(args.n_train, h, d, rng)]
    test = {(h, d): smooth_chunks(args.n_test, h, d, rng) for h, d in SHAPES}

    # The incumbent's quirk: 256 token ids, 255 reconstruction levels, bins of 2/255.
    grid = np.linspace(-1, 1, 100_001)[:, None]
    naive = OpenVLABinning(256)
    ours = make_action_tokenizer("bins", bins=256)
    for name, tok in (("openvla linspace+digitize", naive), ("ours bins=256", ours)):
        ids = tok.encode(grid)
        rec = tok.decode(ids, len(grid), 1)
        print(
            f"{name:<26} on a dense grid of [-1, 1]: {len(set(ids))} token ids used, "
            f"{len(np.unique(rec))} distinct decoded values, max error {np.abs(rec - grid).max():.6f}"
        )
    print()

    tokenizers: list[tuple[str, object]] = [("naive openvla 256", naive), ("bins 256", ours)]
    tokenizers.append(("bins 1024", make_action_tokenizer("bins", bins=1024)))
    # max_coefficient defaults to ceil(scale * sqrt(32)): 29 for scale 5 up to 283 for scale 50.
    for scale, vocab in ((10, 1024), (10, 2048), (5, 1024), (20, 1024), (50, 2048)):
        t0 = time.perf_counter()
        tok: ActionTokenizer = make_action_tokenizer("fast", scale=scale, vocab_size=vocab).fit(train)
        print(f"fit fast scale={scale} vocab={vocab} (max_coefficient {tok.max_coefficient}) on {len(train)} chunks: "
              f"{time.perf_counter() - t0:.2f} s")
        tokenizers.append((f"fast s={scale} v={vocab}", tok))
    print()

    header = (
        f"{'tokenizer':<20} {'H x D':>7} {'tok/chunk':>9} {'p99':>5} {'compr':>6} {'rmse':>8} {'max err':>8} "
        f"{'batch ch/s':>10} {'vs naive':>8} {'1-chunk ch/s':>12} {'vs naive':>8}"
    )
    print(header)
    print("-" * len(header))
    for (h, d), x in test.items():
        base = None
        for name, tok in tokenizers:
            m = measure(tok, x, args.repeats)
            base = base or m
            print(
                f"{name:<20} {f'{h}x{d}':>7} {m['tokens']:>9.1f} {m['p99']:>5.0f} {h * d / m['tokens']:>6.2f} "
                f"{m['rmse']:>8.5f} {m['max']:>8.5f} {m['batch_cps']:>10,.0f} {m['batch_cps'] / base['batch_cps']:>7.2f}x "
                f"{m['single_cps']:>12,.0f} {m['single_cps'] / base['single_cps']:>7.2f}x"
            )
        print()


if __name__ == "__main__":
    main()
