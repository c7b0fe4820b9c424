"""``vla serve``: start the BentoML server for a checkpoint (``main(argv) -> exit code``).

It validates the arguments, exports them as the VLA_* env vars that serving/service.py reads in
every worker, and runs ``bentoml serve vla.serving.service:VLAService`` in the foreground.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from vla.errors import CheckpointError, ConfigError, VLAError
from vla.precision import DTYPE_CHOICES
from vla.serving.settings import ENV, UVICORN_WS_MAX_BYTES, ServeSettings, default_model

from . import _help

# The folder that holds the ``vla`` package: BentoML imports vla.serving.service from there.
REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = """\
examples:
  vla serve --port 3000                                  # no --model: the shipped default policy
  vla serve --model runs/my_run --port 3000 --workers 2
  vla serve --model runs/my_run --host 0.0.0.0 --port 3000 --token-file ~/.vla_token   # reachable from the robot
"""


def build_parser() -> argparse.ArgumentParser:
    d = ServeSettings()
    p = _help.parser("vla serve", "Serve a VLA policy over HTTP (/predict, /act), openpi's WebSocket and Prometheus "
                                  "/metrics.", EXAMPLES)
    p.add_argument("--model", default=None, help="checkpoint directory or hub id (default: the shipped default policy)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; use 0.0.0.0 to expose)")
    p.add_argument("--port", type=int, default=3000, help="port to listen on")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: where the checkpoint loads)")
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes; each loads the model once")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="concurrent model calls per worker (1: batches run one after another)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads per worker (default: torch's; keep workers x this <= cores)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=d.dtype,
                   help="weights and activations: auto picks bfloat16 where the hardware runs it fast (AMX or "
                        "AVX512-BF16 CPUs, bf16 GPUs) and float32 elsewhere; the choice and why are in /metadata")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   help="most requests merged into one forward (1 disables batching)")
    p.add_argument("--max-latency-ms", type=int, default=d.max_latency_ms,
                   help="a request not started within this (or --timeout-s) is answered 503 and never run")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token-file", default=None,
                      help=f"file holding the API token: require 'Authorization: Bearer TOKEN' on every route but "
                           f"health probes (or set env {ENV['token']})")
    auth.add_argument("--token", default=None, help="the API token itself (visible in `ps`: prefer --token-file or the env var)")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_mb,
                   help=f"largest request body and WebSocket frame (frames stay under {UVICORN_WS_MAX_BYTES >> 20} MiB, "
                        "uvicorn's own limit)")
    p.add_argument("--max-image-side", type=int, default=d.max_image_side, help="largest accepted image side in pixels")
    p.add_argument("--max-instruction-tokens", type=int, default=d.max_instruction_tokens,
                   help="longest instruction, in tokens after the prompt template (also bounded by the model's positions)")
    p.add_argument("--max-request-megapixels", type=int, default=d.max_request_megapixels,
                   help="most decoded image pixels in one request, all its observations and cameras together (413)")
    p.add_argument("--batch-slice", type=int, default=d.batch_slice,
                   help="most observations of one request in one forward; other requests are interleaved between "
                        "slices (raise it on a GPU for faster /predict_batch)")
    p.add_argument("--timeout-s", type=int, default=d.timeout_s, help="per-request timeout (BentoML answers 504 after it)")
    p.add_argument("--read-timeout-s", type=int, default=d.read_timeout_s,
                   help="a request body must arrive within this; slower uploads answer 408")
    p.add_argument("--timeout-keep-alive", type=int, default=5,
                   help="close a keep-alive connection idle for this many seconds")
    return p


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            token = Path(args.token_file).expanduser().read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read --token-file {args.token_file}: {e.strerror}") from None
        if not token:
            raise ConfigError(f"--token-file {args.token_file} is empty; write the token into it")
        return token
    if args.token:
        print(f"vla serve: warning: --token is visible to every user in `ps`; use --token-file or env {ENV['token']}",
              file=sys.stderr)
    return args.token or os.environ.get(ENV["token"]) or None


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    token = _token(args)
    model = args.model
    if model is None:
        model = default_model()
    elif Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
        from vla.configuration import VLAConfig

        VLAConfig.load(model)  # fail here, not in a BentoML worker that would be restarted in a loop
    elif model.startswith((".", "/", "~")) or model.count("/") > 1:  # a path, not a hub id
        raise CheckpointError(f"checkpoint directory {model} does not exist")
    return ServeSettings(
        model=model, device=args.device, workers=args.workers, threads=args.threads, torch_threads=args.torch_threads,
        max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms, token=token,
        max_body_mb=args.max_body_mb, max_image_side=args.max_image_side, timeout_s=args.timeout_s,
        max_instruction_tokens=args.max_instruction_tokens, read_timeout_s=args.read_timeout_s, dtype=args.dtype,
        batch_slice=args.batch_slice, max_request_megapixels=args.max_request_megapixels,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the server until interrupted; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except VLAError as e:
        print(f"vla serve: {e}", file=sys.stderr)
        return 2
    env = {k: v for k, v in os.environ.items() if k not in ENV.values()}
    env.update(settings.to_env())
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    # One BENTOML_HOME per port: BentoML wipes $BENTOML_HOME/prometheus_multiproc_dir at startup,
    # so two servers sharing it would zero each other's /metrics.
    cache = Path(os.environ.get("VLA_CACHE", Path.home() / ".cache" / "vla"))
    env.setdefault("BENTOML_HOME", str(cache / "bentoml" / f"serve-{args.port}"))
    cmd = [sys.executable, "-m", "bentoml", "serve", "vla.serving.service:VLAService",
           "--host", args.host, "--port", str(args.port), "--working-dir", str(REPO_ROOT),
           "--timeout-keep-alive", str(args.timeout_keep_alive)]
    if settings.max_body_bytes > UVICORN_WS_MAX_BYTES:
        print(f"vla serve: note: WebSocket frames stay limited to {UVICORN_WS_MAX_BYTES >> 20} MiB (uvicorn's limit); "
              f"--max-body-mb {args.max_body_mb:g} applies to HTTP bodies", file=sys.stderr)
    print(f"vla serve: {settings.model} on http://{args.host}:{args.port} "
          f"(workers={settings.workers}, dtype={settings.dtype}, max_batch_size={settings.max_batch_size}, "
          f"auth={'on' if settings.token else 'off'})", file=sys.stderr)
    proc = subprocess.Popen(cmd, env=env)
    # `kill PID` (SIGTERM) of this CLI must stop the server too, not orphan it
    signal.signal(signal.SIGTERM, lambda signum, _frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches the child too; wait for its clean shutdown
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return 130


if __name__ == "__main__":
    sys.exit(main())
