"""``vla data``: inspect, convert and generate robot datasets (``generate`` is vla/commands/data_generate.py)."""

from __future__ import annotations

import argparse
import json
import sys

from vla.errors import VLAError

from . import _help

DESCRIPTION = """\
Inspect, convert and generate robot datasets.

Formats: LeRobot v2.1 and v3.0 (read and write; H.264 or AV1 video), RLDS / Open
X-Embodiment TFRecords (read, no TensorFlow needed), MCAP / ROS 2 bags (read, no ROS needed).
"""

EXAMPLES = """\
examples:
  vla data info data/aloha                       # format, episodes, cameras, names, statistics, licence
  vla data info data/aloha --json                # the same as JSON
  vla data info data/g1 --compute-stats          # compute q01/q99 when the metadata lacks them
  vla data convert data/g1_v21 --to lerobot-v3.0 --out data/g1_v30
  vla data convert data/ds_v30 --to lerobot-v2.1 --out data/ds_v21 --codec av1
  vla data convert ~/tensorflow_datasets/fractal20220817_data/0.1.0 --from rlds --mapping fractal20220817_data \\
      --to lerobot-v3.0 --out data/rt1
  vla data convert my_rlds/ --mapping '{"images": {"observation/image": "observation.images.main"},
      "actions": ["action"], "instruction": "language_instruction", "fps": 10}' --out data/mine
  vla data inspect-mcap bags/run_001.mcap        # topics, types, rates; prints a starter mapping
  vla data convert bags/*.mcap --from mcap --mapping robot.yaml --license cc-by-4.0 --out data/mine
  vla data generate --env metaworld --tasks mt10 --episodes 50 --out data/mt10   # simulators (see --help)
"""

INSPECT_MCAP_EXAMPLES = """\
examples:
  vla data inspect-mcap run_001.mcap                 # table of topics + a starter mapping (YAML)
  vla data inspect-mcap bags/run_001/                 # a ROS 2 bag folder (metadata.yaml + .mcap files)
  vla data inspect-mcap run_001.mcap --mapping-out robot.yaml   # write the starter mapping to a file
  vla data inspect-mcap run_001.mcap --json
"""

INFO_EXAMPLES = """\
examples:
  vla data info data/aloha
  vla data info data/aloha --json | jq .statistics
  vla data info data/g1 --compute-stats      # streaming q01/q99 over the episodes present
  vla data info rlds_dir --mapping taco_play # RLDS: which keys feed cameras/action/state/instruction
"""

CONVERT_EXAMPLES = """\
examples:
  vla data convert data/g1_v21 --to lerobot-v3.0 --out data/g1_v30
  vla data convert data/ds_v30 --to lerobot-v2.1 --out data/ds_v21
  vla data convert rlds_dir --from rlds --mapping bridge --out data/bridge
  vla data convert data/partial --out data/clean --skip-bad   # skip (and list) episodes with missing files

MCAP / ROS 2 bags (each .mcap file or bag folder is an episode, unless the mapping names an episode topic):
  vla data inspect-mcap bags/run_001.mcap --mapping-out robot.yaml   # then check and edit robot.yaml
  vla data convert bags/run_*.mcap --from mcap --mapping robot.yaml --license cc-by-4.0 \\
      --to lerobot-v3.0 --out data/mine
  vla data convert bags/ --mapping robot.yaml --out data/mine --skip-bad  # keep the good episodes of damaged bags
  A mapping (YAML) names the cameras, state, action, control rate and instruction:
    fps: 10
    instruction: pick up the cube
    cameras: {{front: {{topic: /cam_front/image_raw}}, wrist: {{topic: /cam_wrist/image_raw/compressed}}}}
    state: [{{topic: /joint_states, joints: [j0, j1, j2]}}]
    action: [{{topic: /arm_command}}]      # or: action: next_state
  Every stream is resampled onto the fps clock (latest message at or before each tick); a stream older
  than max_staleness (default 0.2 s) at a tick is a gap, which cuts the episode (on_gap: cut) or drops
  it (on_gap: drop). All keys: docs/mcap_mapping.md.

built-in RLDS mappings: {mappings}
A JSON mapping names the RLDS keys ("steps/" may be left out):
  {{"images": {{"observation/image": "observation.images.image"}}, "actions": ["action/world_vector", ...],
   "state": ["observation/state"], "instruction": "language_instruction", "fps": 10, "robot_type": "widowx",
   "action_names": [...], "state_names": [...], "default_instruction": "..."}}
"""


def _episodes(spec: str | None) -> list[int] | None:
    """'0,3,5-9' -> [0, 3, 5, 6, 7, 8, 9]."""
    if not spec:
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--episodes {spec!r}: use comma-separated indices and ranges, e.g. 0,3,5-9") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    from vla.data.rlds import BUILTIN_MAPPINGS

    p = _help.parser("vla data", DESCRIPTION, EXAMPLES)
    sub = p.add_subparsers(dest="command", metavar="{info,convert,inspect-mcap,generate}")
    sub.required = True

    info = _help.subcommand(
        sub, "info", "summarize a LeRobot or RLDS dataset", epilog=INFO_EXAMPLES,
        description="Summarize a dataset: format/version, robot type, episodes, frames, fps, cameras (resolution, "
                    "codec), action/state names, tasks, statistics, licence and provenance.")
    info.add_argument("path", metavar="DIR", help="dataset root (LeRobot: has meta/info.json; RLDS: *.tfrecord* files)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument("--mapping", help="RLDS only: built-in mapping name or JSON (see `vla data convert --help`)")
    info.add_argument("--compute-stats", action="store_true",
                      help="compute statistics (incl. q01/q99) by streaming over the episode files present")

    conv = _help.subcommand(
        sub, "convert", "convert RLDS or MCAP (ROS 2 bags) -> LeRobot, or LeRobot v2.1 <-> v3.0",
        epilog=CONVERT_EXAMPLES.format(mappings=", ".join(sorted(BUILTIN_MAPPINGS))),
        description="Convert a dataset into a new LeRobot dataset directory. Video is re-encoded with a small GOP "
                    "(fast random access). The output is built in a temporary directory and moved into place at "
                    "the end.")
    conv.add_argument("src", metavar="SRC", nargs="+",
                      help="source dataset directory (or one .tfrecord file); MCAP: .mcap files and/or ROS 2 bag folders")
    conv.add_argument("--to", choices=["lerobot-v3.0", "lerobot-v2.1"], default="lerobot-v3.0", help="output format")
    conv.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist unless --overwrite)")
    conv.add_argument("--from", dest="source_format", choices=["lerobot", "rlds", "mcap"],
                      help="source format (default: detect)")
    conv.add_argument("--mapping", help="RLDS: built-in mapping name or JSON string/file (default: from "
                                        "dataset_info.json). MCAP (required): a YAML/JSON mapping file")
    conv.add_argument("--license", help="MCAP: the recordings' licence (e.g. cc-by-4.0), recorded in the dataset and "
                                        "shown on model cards; without it the licence is 'unknown'")
    conv.add_argument("--codec", choices=["h264", "av1"], help="output video codec (default: the source's; RLDS: h264)")
    conv.add_argument("--episodes", type=_episodes, help="LeRobot source: episodes to convert, e.g. 0,3,5-9")
    conv.add_argument("--skip-bad", action="store_true",
                      help="skip episodes with missing/corrupt files or bad values; they are listed in the report")
    conv.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")

    insp = _help.subcommand(
        sub, "inspect-mcap", "list an MCAP recording's topics and print a starter mapping", epilog=INSPECT_MCAP_EXAMPLES,
        description="List the topics of an MCAP file or ROS 2 bag folder: message type, count, rate, duration, "
                    "largest gap and what the first message holds (image encoding and size, joint names). Then print "
                    "a starter mapping for `vla data convert --from mcap --mapping`.")
    insp.add_argument("path", metavar="FILE", help=".mcap file or ROS 2 bag folder")
    insp.add_argument("--json", action="store_true", help="print JSON instead of text")
    insp.add_argument("--mapping-out", metavar="YAML", help="also write the starter mapping to this file")

    sub.add_parser("generate", help="scripted-expert demonstrations from simulators (see `vla data generate --help`)",
                   add_help=False)
    return p


def _generate(argv: list[str]) -> int:
    # Lazy: the simulator stack (MuJoCo etc.) is optional and owned by vla.sim.
    try:
        from .data_generate import main as generate_main
    except ModuleNotFoundError as e:
        print(f"vla data generate: the simulators are not available in this install ({e}); install the 'sim' extra "
              "(pip install 'vla[sim]')", file=sys.stderr)
        return 2
    return int(generate_main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":  # forwarded untouched, --help included
        return _generate(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            from vla.data.info import describe, format_summary

            d = describe(args.path, mapping=args.mapping, compute_stats=args.compute_stats)
            print(json.dumps(d, indent=2) if args.json else format_summary(d))
            return 0
        if args.command == "convert":
            from vla.data.formats import convert

            report = convert(args.src, args.out, to=args.to, source_format=args.source_format, mapping=args.mapping,
                             codec=args.codec, episodes=args.episodes, skip_bad=args.skip_bad,
                             overwrite=args.overwrite, progress=not args.no_progress, license=args.license)
            print(report)
            return 0
        if args.command == "inspect-mcap":
            from pathlib import Path

            from vla.data.mcap.inspect import format_inspection, inspect_mcap

            d = inspect_mcap(args.path)
            if args.mapping_out:
                Path(args.mapping_out).write_text(d["starter_mapping"], encoding="utf-8")
            print(json.dumps(d, indent=2) if args.json else format_inspection(d))
            return 0
    except VLAError as e:
        print(f"vla data {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
