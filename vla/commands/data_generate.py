"""``vla data generate``: scripted-expert demonstrations from the simulators as a LeRobot dataset."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from vla.errors import VLAError
from vla.sim import ENVS, expand_tasks
from vla.sim.aloha_env import AlohaTransferCubeEnv
from vla.sim.metaworld_env import MetaWorldEnv
from vla.sim.randomization import PARAMS
from vla.sim.so101_env import SO101PickPlaceEnv

from . import _help

# These modules import their simulators lazily, so --help stays fast.
_CLASSES = {"metaworld": MetaWorldEnv, "aloha": AlohaTransferCubeEnv, "so101": SO101PickPlaceEnv}


def _tasks_help(env: str) -> str:
    tasks = " ".join(_CLASSES[env].tasks)
    text = tasks + (" ('mt10' = the first 10; 'all' = every task)" if env == "metaworld" else "")
    return textwrap.fill(text, width=96, subsequent_indent=" " * 13, break_on_hyphens=False)


EXAMPLES = """\
examples:
  vla data generate --env metaworld --tasks mt10 --episodes 50 --out data/mt10
  vla data generate --env aloha --episodes 50 --image-size 224 --cameras top angle --out data/aloha
  vla data generate --env so101 --episodes 100 --seed 1000 --out data/so101 --codec av1
  vla data generate --env so101 --episodes 40 --no-lossless --out data/so101_small  # crf 20 yuv420p, smaller
  vla data generate --env so101 --episodes 160 --seed 40 --action-noise 0.15 --out data/so101_dart  # DART
  vla data generate --env aloha --episodes 50 --randomize --out data/aloha_dr   # domain randomization
  vla data generate --env so101 --episodes 50 --randomize-config dr.yaml --out data/so101_dr

tasks:
{tasks}
cameras:
{cameras}

Each task gets --episodes expert attempts with episode seeds SEED, SEED+1, ...; attempts where
the expert fails are counted and dropped, never written. The same command gives the same data.
--randomize draws each episode's scene from its seed (same seed, same scene): light direction and
intensity, table/object/robot colours, camera pose, visual-only distractors, friction, object
mass, joint damping, actuator gain, action noise and control latency. The ranges are the robot's
defaults; --randomize-config FILE (YAML or JSON) overrides them, e.g.
  light: {{direction_deg: 20, intensity: [0.8, 1.2]}}
  latency: off
{factors}
Each episode's parameters are in meta/info.json provenance.randomization (`vla data info` shows them).

The dataset keys are observation.images.<camera>, observation.state and action; statistics
(with q01/q99) are in meta/stats.json, the generator settings in meta/info.json "provenance".
""".format(
    tasks="\n".join(f"  {k:10s} {_tasks_help(k)}" for k in ENVS),
    factors=textwrap.fill("Factors and parameters: " + "; ".join(f"{f}: {', '.join(p)}" for f, p in PARAMS.items()),
                          width=96),
    cameras="\n".join(f"  {k:10s} {' '.join(_CLASSES[k].all_cameras)} (default {' '.join(_CLASSES[k].default_cameras)})" for k in ENVS),
)


def build_parser() -> argparse.ArgumentParser:
    p = _help.parser("vla data generate", "Roll out scripted experts in simulation (MuJoCo, headless) and write the "
                                          "successful episodes as a LeRobot dataset.", EXAMPLES)
    p.add_argument("--env", required=True, choices=ENVS, help="simulator / robot")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="tasks to generate (default: the env's first task)")
    p.add_argument("--episodes", type=int, required=True, help="expert attempts per task")
    p.add_argument("--seed", type=int, default=0, help="first episode seed")
    p.add_argument("--image-size", type=int, default=128, metavar="PX", help="square image size in pixels")
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset directory (must not exist)")
    p.add_argument("--cameras", nargs="+", default=None, metavar="CAM", help="cameras to record (default: the env's default)")
    p.add_argument("--codec", choices=("h264", "av1"), default="h264", help="video codec")
    p.add_argument("--lossless", action=argparse.BooleanOptionalAction, default=None,
                   help="H.264 at crf 0 with full-resolution colour (yuv444p), the default for h264: frames decode "
                        "as rendered (within 2 levels), about 2.5x the bytes of --no-lossless (crf 20, yuv420p), "
                        "which blurs the colour of small objects so that a policy trained on it sees the raw frames "
                        "a robot or simulator sends differently (see `vla doctor`)")
    p.add_argument("--format", dest="version", choices=("v3.0", "v2.1"), default="v3.0", help="LeRobot dataset version")
    p.add_argument("--max-steps", type=int, default=None, help="episode step limit (default: the env's own)")
    p.add_argument("--action-noise", type=float, default=0.0, metavar="STD",
                   help="DART noise injection: execute the expert's action plus Gaussian noise of this std (in "
                        "action units: Meta-World 1 cm, SO-101 2.5 cm, ALOHA 1 rad; grippers untouched) and record "
                        "the clean action, so the data shows how to recover from small errors. 0 (default): off")
    p.add_argument("--randomize", action="store_true",
                   help="domain randomization with the robot's default ranges (visual and dynamics factors, "
                        "drawn from each episode's seed; see below)")
    p.add_argument("--randomize-config", metavar="FILE", default=None,
                   help="YAML/JSON overriding the default ranges (factor: {param: value} or factor: off); "
                        "implies --randomize")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vla data generate``; returns the exit code."""
    args = build_parser().parse_args(argv)
    from vla.sim.generate import generate_dataset

    try:
        randomize = None
        if args.randomize or args.randomize_config:
            from vla.sim.randomization import load_config

            randomize = load_config(args.env, args.randomize_config)
        report = generate_dataset(
            args.env, expand_tasks(args.env, args.tasks), args.episodes, args.seed, args.image_size, args.out,
            cameras=args.cameras, codec=args.codec, lossless=args.lossless, max_steps=args.max_steps, action_noise=args.action_noise,
            randomize=randomize, version=args.version, overwrite=args.overwrite, progress=not args.no_progress,
        )
    except VLAError as e:
        print(f"vla data generate: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
