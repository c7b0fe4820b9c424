"""How well an action tokenizer fits a set of action chunks (the command is `vla/commands/tokenizer.py`)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DatasetError
from ..normalize import Normalizer
from .base import ActionTokenizer

_MIN_TIMING_S = 0.1  # repeat the timed pass until this much time was measured (at most 5 passes)


def report(
    tokenizer: ActionTokenizer,
    chunks_physical: np.ndarray,
    normalizer: Normalizer,
    action_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Reconstruction error, token counts and speed of ``tokenizer`` on physical chunks (N, H, D).

    Normalized errors compare the decoded chunk with the normalized input (the
    tokenizer's own error). Physical errors compare the unnormalized decoded chunk
    with the original values: end to end, so values clipped by the normalizer or
    the tokenizer count too (``out_of_range_fraction`` says how many were).
    """
    x = np.asarray(chunks_physical, dtype=np.float64)
    if x.ndim != 3 or 0 in x.shape:
        raise ConfigError(f"report needs non-empty chunks of shape (N, H, D), got {x.shape}")
    n, h, d = x.shape
    if not np.all(np.isfinite(x)):
        raise DatasetError("the action chunks contain NaN or inf")
    names = list(action_names) if action_names is not None else [f"dim{i}" for i in range(d)]
    if len(names) != d:
        raise ConfigError(f"got {len(names)} action names for {d} action dims")

    y = normalizer.normalize(x)
    # Values the normalizer clipped do not survive its round trip; the tokenizer clips |y| > 1.
    x_rt = normalizer.unnormalize(y)
    clipped = ~np.isclose(x_rt, x, rtol=1e-9, atol=1e-12) | (np.abs(y) > 1.0)

    ids, decoded, enc_s, dec_s, passes = _timed_round_trip(tokenizer, y)
    err_n = decoded - y
    err_p = normalizer.unnormalize(decoded) - x
    lengths = np.array([len(i) for i in ids], dtype=np.float64)

    def rms(e: np.ndarray, axis: Any) -> np.ndarray:
        return np.sqrt(np.mean(e**2, axis=axis))

    dims = [
        {
            "name": names[j],
            "rmse_normalized": float(rms(err_n[..., j], None)),
            "max_abs_normalized": float(np.abs(err_n[..., j]).max()),
            "rmse_physical": float(rms(err_p[..., j], None)),
            "max_abs_physical": float(np.abs(err_p[..., j]).max()),
            "out_of_range_fraction": float(clipped[..., j].mean()),
        }
        for j in range(d)
    ]
    return {
        "tokenizer": tokenizer.config(),
        "num_chunks": n,
        "chunk_size": h,
        "action_dim": d,
        "normalization": normalizer.mode,
        "dims": dims,
        "overall": {
            "rmse_normalized": float(rms(err_n, None)),
            "max_abs_normalized": float(np.abs(err_n).max()),
            "out_of_range_fraction": float(clipped.mean()),
        },
        "tokens_per_chunk": {
            "values_per_chunk": h * d,
            "mean": float(lengths.mean()),
            "p50": float(np.percentile(lengths, 50)),
            "p99": float(np.percentile(lengths, 99)),
            "max": int(lengths.max()),
            "compression": float(h * d / lengths.mean()) if lengths.mean() > 0 else float("inf"),
        },
        "speed": {
            "encode_chunks_per_s": n * passes / enc_s,
            "decode_chunks_per_s": n * passes / dec_s,
            "chunks_per_s": n * passes / (enc_s + dec_s),
        },
    }


def _timed_round_trip(tok: ActionTokenizer, y: np.ndarray) -> tuple[list[list[int]], np.ndarray, float, float, int]:
    n, h, d = y.shape
    enc_s = dec_s = 0.0
    passes = 0
    while passes < 5 and (passes == 0 or enc_s + dec_s < _MIN_TIMING_S):
        t0 = time.perf_counter()
        ids = tok.encode_batch(y)
        t1 = time.perf_counter()
        decoded = tok.decode_batch(ids, h, d)
        t2 = time.perf_counter()
        enc_s, dec_s, passes = enc_s + t1 - t0, dec_s + t2 - t1, passes + 1
    return ids, decoded, max(enc_s, 1e-9), max(dec_s, 1e-9), passes


def format_report(r: dict[str, Any]) -> str:
    """A readable table of a ``report`` dict."""
    cfg = {k: v for k, v in r["tokenizer"].items() if k not in ("format_version", "kind", "bpe_file")}
    opts = ", ".join(f"{k}={v}" for k, v in cfg.items())
    t, s, o = r["tokens_per_chunk"], r["speed"], r["overall"]
    lines = [
        f"action tokenizer: {r['tokenizer']['kind']} ({opts})",
        f"chunks: {r['num_chunks']} x ({r['chunk_size']} steps x {r['action_dim']} dims), "
        f"normalization: {r['normalization']}",
    ]
    if "fit" in r:
        f = r["fit"]
        where = "the same chunks (in-sample)" if f["in_sample"] else f"{f['chunks']} other chunks (held out)"
        lines.append(f"FAST fitted on {where}")
    lines += [
        f"tokens/chunk: mean {t['mean']:.1f}  p50 {t['p50']:.0f}  p99 {t['p99']:.0f}  max {t['max']}  "
        f"({t['values_per_chunk']} values/chunk, {t['compression']:.2f}x compression)",
        f"speed: {s['chunks_per_s']:,.0f} chunks/s encode+decode "
        f"(encode {s['encode_chunks_per_s']:,.0f}/s, decode {s['decode_chunks_per_s']:,.0f}/s)",
        "",
    ]
    width = max(8, *(len(dim["name"]) for dim in r["dims"]))
    header = f"{'dim':<{width}}  {'rmse(norm)':>10}  {'max(norm)':>10}  {'rmse(phys)':>11}  {'max(phys)':>11}  {'clipped':>8}"
    lines += [header, "-" * len(header)]
    for dim in r["dims"]:
        lines.append(
            f"{dim['name']:<{width}}  {dim['rmse_normalized']:>10.5f}  {dim['max_abs_normalized']:>10.5f}  "
            f"{dim['rmse_physical']:>11.4g}  {dim['max_abs_physical']:>11.4g}  {dim['out_of_range_fraction']:>8.2%}"
        )
    lines.append(
        f"{'overall':<{width}}  {o['rmse_normalized']:>10.5f}  {o['max_abs_normalized']:>10.5f}  "
        f"{'':>11}  {'':>11}  {o['out_of_range_fraction']:>8.2%}"
    )
    return "\n".join(lines)


# --- `vla tokenizer report FILE` ----------------------------------------------------------
