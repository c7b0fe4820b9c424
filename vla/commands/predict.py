"""``vla predict``: one action chunk from images and an instruction, printed in physical units."""

from __future__ import annotations

import argparse
import json
import sys

from vla.precision import DTYPE_CHOICES

from . import _help


def _float_list(text: str) -> list[float]:
    """argparse type for "0.1,0.2,...": a clear usage error (before the model loads) instead of a traceback."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.1,0.2,0.3; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _help.parser("vla predict", "Load a policy and print the next action chunk (physical units) for one "
                                    "observation.",
                     'example: vla predict --model runs/demo --image top.png --image wrist.png '
                     '--instruction "transfer the cube" --embodiment aloha')
    p.add_argument("--model", default=None, help="checkpoint directory or hub id (default: the shipped default policy)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="auto picks bfloat16 where the hardware runs it fast (AMX/AVX512-BF16 CPUs, bf16 GPUs), "
                        "else float32")
    p.add_argument("--image", action="append", required=True,
                   help="PNG/JPEG file, once per camera in the embodiment's camera order")
    p.add_argument("--instruction", required=True, help="the language instruction")
    p.add_argument("--embodiment", required=True, help="robot name known to the checkpoint")
    p.add_argument("--state", type=_float_list, default=None,
                   help="comma-separated proprioceptive state, if the policy uses it")
    p.add_argument("--json", action="store_true", help="print the chunk as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vla predict``; returns the exit code (2 on bad input)."""
    args = build_parser().parse_args(argv)
    from vla.defaults import resolve_policy
    from vla.errors import VLAError
    from vla.policy import VLAPolicy

    try:
        policy = VLAPolicy.from_pretrained(resolve_policy(args.model), dtype=args.dtype)
        print(f"dtype {policy.precision.name} ({policy.precision.reason})", file=sys.stderr)
        images = [open(p, "rb").read() for p in args.image]
        chunk = policy.predict(images, args.instruction, args.embodiment, args.state)
    except (VLAError, OSError) as e:
        print(f"vla predict: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(chunk.to_dict()))
        return 0
    print(f"embodiment {chunk.embodiment} @ {chunk.control_hz:g} Hz, {chunk.horizon} actions, "
          f"uncertainty {chunk.uncertainty:.3f} nats, model {chunk.timings['model_ms']:.0f} ms")
    print("step " + " ".join(f"{n:>10.10}" for n in chunk.action_names))
    for i, row in enumerate(chunk.actions):
        print(f"{i:>4} " + " ".join(f"{v:>10.4f}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
