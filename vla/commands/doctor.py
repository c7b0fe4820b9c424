"""``vla doctor``: is it the pipeline or the training? One command, one verdict with the fix."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from vla.errors import VLAError

from . import _help

EPILOG = """\
checks (each on every --data):
  round trip  the data's actions through the policy's normalization and action tokenizer: share of
              frames clipped per dimension, mean/max error in physical units; simulated data is also
              replayed in closed loop, exact and round-tripped (--replay-episodes seeds), with the
              drift where the data holds the arm still
  frames      stored frames against raw renders of the same states (the codec gap): pixel
              difference, token agreement and L1 of the policy's chunks (simulated data)
  tracking    the scripted expert drives from each seed; the policy's chunks against the expert's
              next actions (under-training shows here, not a fault; simulated data)
  parity      the same frames through `vla serve` and in-process (starts a local server unless
              --server URL), and in fp32 against bf16 in-process (what --dtype auto serves on
              hardware with bf16 units): token agreement and chunk L1 (--no-parity skips both)
  overfit     opt-in (--overfit): fine-tune a throwaway copy on one episode for --overfit-steps (it
              must reach token accuracy 0.99) and replay it (closed loop in simulation, open loop
              on recorded data)

examples:
  vla doctor --data data/so101                      # the shipped default policy on its SO-101 data
  vla doctor --model runs/my_run --data data/so101 data/aloha --overfit
  vla doctor --no-model --data data/my_robot        # the data alone, against the fine-tuning defaults
  vla doctor --model runs/my_run --data data/so101 --server http://127.0.0.1:3000 --json > doctor.json

Exit code 0: pipeline consistent (a failing policy needs more training or data); 1: a pipeline fault,
printed with its fix; 2: bad arguments or input.
"""


def build_parser() -> argparse.ArgumentParser:
    p = _help.parser("vla doctor", "Tell a pipeline fault from under-training: run consistency checks on a policy "
                                   "and its data, and print a verdict with the fix.", EPILOG)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="run directory, checkpoint or hub id (default: the shipped "
                                                   "default policy)")
    src.add_argument("--no-model", action="store_true", help="check the data alone against the fine-tuning "
                                                             "defaults (auto normalization, 256 bins)")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="LeRobot dataset(s) the policy was or "
                   "will be trained on")
    p.add_argument("--embodiment", default=None, help="the policy's embodiment for the data (default: the one "
                                                      "with the same action names)")
    p.add_argument("--episodes", type=int, default=None, help="round trip on the first N episodes (default all)")
    p.add_argument("--replay-episodes", type=int, default=10, help="simulated episodes replayed in closed loop")
    p.add_argument("--frame-episodes", type=int, default=5, help="episodes whose first frame is rendered again, and "
                   "that the expert drives for tracking")
    p.add_argument("--max-error", type=float, default=0.01, help="round-trip error flagged above this share of a "
                                                                 "dimension's range")
    par = p.add_mutually_exclusive_group()
    par.add_argument("--server", default=None, metavar="URL", help="check parity against this running server")
    par.add_argument("--no-parity", action="store_true", help="skip the server parity check")
    p.add_argument("--overfit", action="store_true", help="also memorize one episode and replay it (minutes)")
    p.add_argument("--overfit-episode", type=int, default=0, help="the episode to memorize")
    p.add_argument("--overfit-steps", type=int, default=300, help="fine-tuning steps of the memorization run")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON report here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vla.defaults import resolve_policy
    from vla.doctor import diagnose, format_report

    model = None if args.no_model else str(resolve_policy(args.model))
    try:
        report = diagnose(model, args.data, embodiment=args.embodiment, episodes=args.episodes,
                          replay_episodes=args.replay_episodes, frame_episodes=args.frame_episodes,
                          parity=not args.no_parity, server=args.server, overfit=_overfit() if args.overfit else None,
                          overfit_episode=args.overfit_episode, overfit_steps=args.overfit_steps,
                          max_error=args.max_error, progress=not args.no_progress)
    except VLAError as e:
        print(f"vla doctor: {e}", file=sys.stderr)
        return 2
    report["command"] = shlex.join(["vla", "doctor", *(sys.argv[1:] if argv is None else argv)])
    text = json.dumps(report, indent=2)
    if model and args.model is None:  # name the shipped policy, not where this install keeps it
        text = text.replace(json.dumps(model)[1:-1], "vla/default_policy")
        report = json.loads(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text if args.json else format_report(report))
    return 0 if report["consistent"] else 1


def _overfit():
    """Memorize-and-replay trains: it is the fine-tuning app's, handed to the doctor from here."""
    from vla.finetune.overfit import memorize_and_replay

    return memorize_and_replay


if __name__ == "__main__":
    sys.exit(main())
