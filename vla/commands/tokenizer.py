"""``vla tokenizer report``: measure an action tokenizer on a file of action chunks (the library part is
``vla.action_tokenizers.report``). ``vla tokenizer`` names its subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vla.action_tokenizers import ActionTokenizer, load_action_tokenizer, make_action_tokenizer
from vla.action_tokenizers.fast import FastActionTokenizer
from vla.action_tokenizers.report import format_report, report
from vla.errors import ConfigError, DatasetError, VLAError
from vla.normalize import NORMALIZATION_MODES, Normalizer, Stats

from . import _help

_EPILOG = """\
The file holds action chunks (N, H, D), or one trajectory (T, D) that --chunk-size
cuts into sliding windows. Formats: .npy, .npz, .safetensors (no pickle).
Values are normalized with statistics computed from the file (or --stats).

examples:
  vla tokenizer report actions.npy                       # 256 uniform bins
  vla tokenizer report traj.npy --chunk-size 16          # (T, D) -> windows of 16 steps
  vla tokenizer report actions.npz --key actions --kind fast --scale 10 --vocab-size 1024
  vla tokenizer report actions.npy --kind fast --holdout 0.2 --save runs/fast_tok
  vla tokenizer report actions.safetensors --tokenizer runs/fast_tok --json
"""


def _parser() -> argparse.ArgumentParser:
    p = _help.parser("vla tokenizer report", "Measure an action tokenizer on a file of action chunks: reconstruction "
                     "error per dimension (normalized and physical units), tokens per chunk and encode/decode speed.",
                     _EPILOG)
    p.add_argument("file", help="action chunks: .npy, .npz or .safetensors; shape (N, H, D) or (T, D)")
    p.add_argument("--key", help="array name inside a .npz/.safetensors file (default: the only array, or 'actions')")
    p.add_argument("--chunk-size", type=int, help="window length H for a (T, D) trajectory")
    p.add_argument("--stride", type=int, default=1, help="step between windows of a (T, D) trajectory (default 1)")
    p.add_argument("--limit", type=int, help="use at most this many chunks (evenly spaced)")
    g = p.add_argument_group("normalization")
    g.add_argument("--normalization", choices=NORMALIZATION_MODES, default="quantile",
                   help="how physical values map to [-1, 1] (default quantile: q01/q99)")
    g.add_argument("--stats", help="JSON file with statistics in Stats.to_dict format (default: computed from the file)")
    g.add_argument("--action-names", help="comma-separated names for the action dims")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer", metavar="DIR", help="load a saved action tokenizer instead of building one")
    g.add_argument("--kind", choices=("bins", "fast"), help="tokenizer to build (default bins)")
    g.add_argument("--bins", type=int, help="number of uniform bins (bins; default 256)")
    g.add_argument("--scale", type=float, help="DCT coefficient scale (fast; default 10)")
    g.add_argument("--vocab-size", type=int, help="BPE vocabulary size (fast; default 1024)")
    g.add_argument("--max-coefficient", type=int, help="clip range of rounded DCT coefficients (fast; default: ceil(scale*sqrt(H)), never clips)")
    g.add_argument("--holdout", type=float, default=0.0,
                   help="fit FAST on the first 1-FRAC of the chunks and report on the rest (default 0: in-sample)")
    g.add_argument("--save", metavar="DIR", help="save the (fitted) tokenizer to DIR")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def main(argv: list[str]) -> int:
    """Entry point of ``vla tokenizer``: forwards ``report`` and lists the subcommands."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vla tokenizer report FILE [options]\n\n"
              "  report   reconstruction error and tokens per chunk of an action tokenizer on a file of chunks\n"
              "           (see `vla tokenizer report --help`)")
        return 0 if argv else 2
    if argv[0] != "report":
        print(f"vla tokenizer: unknown subcommand {argv[0]!r}; available: report", file=sys.stderr)
        return 2
    return report_main(argv[1:])


def report_main(args: list[str] | None = None) -> int:
    """Entry point of ``vla tokenizer report``; returns the exit code (2 on bad input)."""
    parser = _parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    try:
        out = _run(ns)
    except VLAError as e:
        print(f"vla tokenizer report: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _run(ns: argparse.Namespace) -> str:
    chunks = _load_chunks(Path(ns.file), ns.key, ns.chunk_size, ns.stride)
    if ns.limit is not None:
        if ns.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {ns.limit}")
        if len(chunks) > ns.limit:
            chunks = chunks[np.linspace(0, len(chunks) - 1, ns.limit).round().astype(int)]
    n, h, d = chunks.shape

    if ns.stats:
        stats = _load_stats(Path(ns.stats))
        if stats.dim != d:
            raise ConfigError(f"--stats has {stats.dim} dims but the actions have {d}")
    else:
        stats = Stats.from_array(chunks.reshape(-1, d))
    normalizer = Normalizer(ns.normalization, stats)
    names = [s.strip() for s in ns.action_names.split(",")] if ns.action_names else None

    tok = _make_tokenizer(ns)
    if not 0.0 <= ns.holdout < 1.0:
        raise ConfigError(f"--holdout must be in [0, 1), got {ns.holdout}")
    eval_chunks, fit_info = chunks, None
    if isinstance(tok, FastActionTokenizer) and not tok.is_fitted:
        n_fit = n - int(round(n * ns.holdout)) if ns.holdout > 0 else n
        if ns.holdout > 0 and not 1 <= n_fit < n:
            raise ConfigError(f"--holdout {ns.holdout} leaves no chunks to fit on or to report on ({n} chunks)")
        tok.fit(normalizer.normalize(chunks[:n_fit]))
        eval_chunks = chunks[n_fit:] if ns.holdout > 0 else chunks
        fit_info = {"chunks": n_fit, "in_sample": ns.holdout == 0}
    if ns.save:
        tok.save(ns.save)

    r = report(tok, eval_chunks, normalizer, names)
    if fit_info:
        r["fit"] = fit_info
    return json.dumps(r, indent=2) if ns.json else format_report(r)


def _make_tokenizer(ns: argparse.Namespace) -> ActionTokenizer:
    fast_opts = {"scale": ns.scale, "vocab_size": ns.vocab_size, "max_coefficient": ns.max_coefficient}
    given = {k: v for k, v in {"kind": ns.kind, "bins": ns.bins, **fast_opts}.items() if v is not None}
    if ns.tokenizer:
        if given:
            raise ConfigError(f"--tokenizer loads a saved tokenizer; drop {sorted('--' + k.replace('_', '-') for k in given)}")
        return load_action_tokenizer(ns.tokenizer)
    kind = ns.kind or "bins"
    if kind == "bins":
        stray = [k for k, v in fast_opts.items() if v is not None]
        if stray:
            raise ConfigError(f"{sorted('--' + k.replace('_', '-') for k in stray)} only apply to --kind fast")
        return make_action_tokenizer("bins", **({"bins": ns.bins} if ns.bins is not None else {}))
    if ns.bins is not None:
        raise ConfigError("--bins only applies to --kind bins")
    return make_action_tokenizer("fast", **{k: v for k, v in fast_opts.items() if v is not None})


def _load_chunks(path: Path, key: str | None, chunk_size: int | None, stride: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"no such file: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".safetensors"):
        raise DatasetError(f"{str(path)!r}: unsupported file type {suffix!r}; use .npy, .npz or .safetensors")
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            arrays: Any = load_file(str(path))
        else:
            arrays = np.load(path, allow_pickle=False)
        if isinstance(arrays, np.ndarray):
            arr = arrays
        else:
            keys = list(arrays.keys())
            if key is None:
                key = keys[0] if len(keys) == 1 else next((k for k in ("actions", "action") if k in keys), None)
                if key is None:
                    raise DatasetError(f"{str(path)!r} holds arrays {keys}; pick one with --key")
            elif key not in keys:
                raise DatasetError(f"{str(path)!r} has no array {key!r}; it holds {keys}")
            arr = arrays[key]
        x = np.asarray(arr, dtype=np.float64)
    except DatasetError:
        raise
    except Exception as e:  # numpy/zip/safetensors raise many types for a broken or pickled file
        raise DatasetError(f"cannot read action chunks from {str(path)!r}: {e}") from e

    if x.ndim == 2:
        if chunk_size is None:
            raise DatasetError(f"{str(path)!r} holds a (T, D) array {x.shape}: give --chunk-size to cut it into chunks")
        if chunk_size < 1 or stride < 1:
            raise ConfigError(f"--chunk-size and --stride must be >= 1, got {chunk_size} and {stride}")
        if len(x) < chunk_size:
            raise DatasetError(f"{str(path)!r} has {len(x)} steps, fewer than --chunk-size {chunk_size}")
        x = np.lib.stride_tricks.sliding_window_view(x, chunk_size, axis=0)[::stride].transpose(0, 2, 1)
    elif x.ndim == 3:
        if chunk_size is not None and chunk_size != x.shape[1]:
            raise DatasetError(f"{str(path)!r} already holds chunks of {x.shape[1]} steps; drop --chunk-size {chunk_size}")
    else:
        raise DatasetError(f"{str(path)!r}: expected an array of shape (N, H, D) or (T, D), got {x.shape}")
    if 0 in x.shape:
        raise DatasetError(f"{str(path)!r} holds an empty array {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DatasetError(f"{str(path)!r} contains NaN or inf actions")
    return np.ascontiguousarray(x)


def _load_stats(path: Path) -> Stats:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read statistics JSON {str(path)!r}: {e}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{str(path)!r} must hold a JSON object with mean, std, min, max, q01, q99")
    return Stats.from_dict(d)
