"""``vla eval``: closed-loop success rates in simulation, open-loop action errors, train/serve parity."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from vla.precision import DTYPE_CHOICES
from vla.sim import ENVS, expand_tasks

from . import _help

EPILOG = """\
modes:
  closed loop (default)  the policy drives the simulator: reset(seed), ask for an H-action chunk,
                         execute k actions, ask again ... until success or the step limit.
  --open-loop            predict chunks on recorded held-out episodes and compare with the
                         recorded actions (per-dimension L1, PNG plots). Needs --data.
  --parity               send the same recorded frames through the live server and through the
                         checkpoint in this process; report the max |difference| (~0 expected).
  --summarize R [R ...]  combine closed-loop results (results.json or their --out dirs, e.g. one
                         per simulator) into one suite table: mean success over tasks (Markdown,
                         JSON, PNG).

examples:
  # a checkpoint in-process, 50 episodes of two Meta-World tasks on 2 worker processes
  vla eval --env metaworld --tasks reach-v3 push-v3 --episodes 50 --model runs/mw/final --workers 2

  # through the server, exactly the path a robot uses (VLAClient + chunk executor)
  vla serve --model runs/so101/final --port 3000 &
  vla eval --env so101 --episodes 50 --server http://127.0.0.1:3000 --model runs/so101/final \\
           --actions-per-chunk 4 --record videos/so101 --out eval/so101

  # the scripted expert through the same loop: checks the harness, gives the ceiling
  vla eval --env aloha --episodes 10 --expert

  # open loop on held-out data, and train/serve parity
  vla eval --open-loop --data data/so101 --model runs/so101/final --out eval/so101_open_loop
  vla eval --parity --data data/so101 --server http://127.0.0.1:3000 --model runs/so101/final

  # robustness: the same seeds nominal and under each perturbation (all factors, or some, LEVEL x default)
  vla eval --env so101 --episodes 20 --model vla/default_policy --perturb all --out eval/so101_robustness
  vla eval --env metaworld --tasks drawer-close-v3 --episodes 20 --server http://127.0.0.1:3000 \
           --perturb light camera=2 latency

  # one table for a suite run simulator by simulator
  vla eval --summarize eval/metaworld eval/aloha eval/so101 --out eval/suite

seeds:
  Episode i of every task starts from seed SEED_START + i. Seeds that generated the training data
  (`vla data generate` records them in the dataset; `vla finetune` copies that into the
  checkpoint's vla_config.json) are refused: success there measures memorisation. The training
  seeds are read from --model's provenance (also with --server) and from every --train-data DIR;
  --allow-seed-overlap evaluates anyway and says so in the report.

perturbations (--perturb FACTOR[=LEVEL] ... or all):
  visual   light (direction, intensity), color (table/object/robot), camera (position, angle),
           distractors (visual-only objects on the table)
  dynamics friction, mass (task objects), damping (robot joints), gain (actuator kp), action_noise,
           latency (control steps)
  Each factor's parameters are drawn from the episode seed within the robot's default range
  (docs/evaluation.md); LEVEL scales the range's distance from nominal (default 1, 0.5 =
  half as far, 2 = twice). Nominal runs first on the same seeds. robustness.md/.json/.png give
  success per factor with Wilson intervals and the gap to nominal with its 95% interval; a gap
  whose interval includes 0 is reported as "within noise". Each condition's full report is in
  its own subfolder.

outputs (in --out, default eval/<env>-<date>):
  results.json   per task: success rate, Wilson 95% CI, mean episode length; latency p50/p95;
                 achieved control rate vs the embodiment's; both seed ranges; every episode
  success.png    success rate per task with CI error bars
  --record DIR   MP4/GIF videos of the first --record-episodes episodes of each task

determinism: results depend only on (task, seed, policy), whatever --workers is, with the default
synchronous executor. --prefetch/--realtime run inference in the background as a robot does, so
outcomes then depend on timing.
"""


def build_parser() -> argparse.ArgumentParser:
    from vla.evaluation.closed_loop import DEFAULT_SEED_START

    p = _help.parser(
        "vla eval", "Evaluate a VLA policy: closed loop in seeded simulation (success rate with 95% Wilson confidence "
                    "intervals, milestones reached on the way (ALOHA: touched, lifted, handover attempted; SO-101: "
                    "reached, lifted), latency, control rate), open loop on held-out data, or server parity.", EPILOG)
    pol = p.add_argument_group("policy (one of --server, --model, --expert)")
    pol.add_argument("--server", metavar="URL", help="a running `vla serve`, e.g. http://127.0.0.1:3000")
    pol.add_argument("--model", metavar="DIR", help="checkpoint directory, run in this process; with --server it is "
                                                    "read only for the training provenance (and parity)")
    pol.add_argument("--expert", action="store_true", help="the simulator's scripted expert (harness check / ceiling)")
    pol.add_argument("--token", default=os.environ.get("VLA_API_TOKEN"), help="server bearer token (default: $VLA_API_TOKEN)")
    pol.add_argument("--encoding", choices=("png", "raw", "jpeg"), default="png",
                     help="image transport to the server; png and raw are lossless, jpeg is what a bandwidth-bound "
                          "robot might send")
    pol.add_argument("--device", default=None, help="torch device for --model, e.g. cuda:0")
    pol.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                     help="for --model: auto picks bfloat16 where the hardware runs it fast, else float32 "
                          "(a server chooses its own: `vla serve --dtype`)")
    pol.add_argument("--embodiment", default=None,
                     help="the policy's embodiment to use (default: the simulator robot's name: sawyer, aloha, so101)")

    cl = p.add_argument_group("closed loop")
    cl.add_argument("--env", choices=ENVS, help="simulator")
    cl.add_argument("--tasks", nargs="+", metavar="TASK", default=None,
                    help="tasks (default: the env's first; metaworld also takes 'mt10' and 'all')")
    cl.add_argument("--episodes", type=int, default=None,
                    help="closed loop: episodes per task (default 10); open loop: at most N held-out episodes "
                         "(default all); parity: episodes replayed (default 2)")
    cl.add_argument("--seed-start", type=int, default=DEFAULT_SEED_START, help="seed of each task's first episode")
    cl.add_argument("--max-steps", type=int, default=None, help="episode step limit (default: the env's own)")
    cl.add_argument("--actions-per-chunk", "-k", type=int, default=None, metavar="K",
                    help="actions executed open loop from each chunk before asking again (default: the chunk size H; "
                         "H/2 with --prefetch/--realtime, so the next chunk can arrive while the rest execute)")
    cl.add_argument("--prefetch", action="store_true",
                    help="request the next chunk in the background while executing (the robot's executor mode)")
    cl.add_argument("--realtime", action="store_true",
                    help="pace the loop at the embodiment's control rate with background inference: measures "
                         "whether the policy keeps up (implies --prefetch)")
    cl.add_argument("--ensemble", type=float, default=None, metavar="M",
                    help="ACT temporal ensembling of overlapping chunks with weights exp(-M*i) (use with -k 1)")
    cl.add_argument("--image-size", type=int, default=None, metavar="PX",
                    help="rendered image size (default: the size recorded in the checkpoint)")
    cl.add_argument("--perturb", nargs="+", metavar="FACTOR[=LEVEL]", default=None,
                    help="robustness suite: nominal, then each factor on the same seeds ('all' = every factor; "
                         "see 'perturbations' below)")
    cl.add_argument("--workers", type=int, default=1, help="parallel episode processes (each builds its own env)")
    cl.add_argument("--threads", type=int, default=None,
                    help="torch threads per process for --model (default: CPUs / workers when workers > 1)")
    sd = p.add_argument_group("seed separation")
    sd.add_argument("--train-data", nargs="+", default=[], metavar="DIR",
                    help="training datasets whose generation seeds must not be evaluated on")
    sd.add_argument("--allow-seed-overlap", action="store_true",
                    help="evaluate even on training seeds (loudly reported)")
    rec = p.add_argument_group("recording")
    rec.add_argument("--record", metavar="DIR", default=None, help="write episode videos here")
    rec.add_argument("--record-episodes", type=int, default=2, help="videos per task (its first episodes)")
    rec.add_argument("--record-format", choices=("mp4", "gif"), default="mp4", help="video format")

    ol = p.add_argument_group("open loop / parity")
    ol.add_argument("--open-loop", action="store_true", help="open-loop evaluation on --data")
    ol.add_argument("--parity", action="store_true", help="server vs in-process parity on --data (needs --server and --model)")
    ol.add_argument("--data", metavar="DIR", help="LeRobot dataset with the episodes to replay")
    ol.add_argument("--episode-index", type=int, nargs="+", default=None, metavar="I",
                    help="explicit episodes (default: the held-out episodes from the model's training provenance)")
    ol.add_argument("--stride", type=int, default=None, help="predict every S frames (default: the chunk size)")
    ol.add_argument("--batch-size", type=int, default=8, help="frames per prediction batch")

    sm = p.add_argument_group("suite")
    sm.add_argument("--summarize", nargs="+", metavar="RESULTS", default=None,
                    help="combine closed-loop results.json files (or their directories) into one suite table")

    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", default=None, help="output directory (default: eval/<env or mode>-<date>)")
    out.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _default_out(what: str) -> str:
    return os.path.join("eval", f"{what}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def _source(args, parser, kind: str | None = None):
    from vla.evaluation.policies import PolicySource

    if kind is None:
        given = [n for n, v in (("--server", args.server), ("--model", args.model), ("--expert", args.expert)) if v]
        if args.expert and len(given) > 1:
            parser.error("--expert runs the scripted expert; do not combine it with --server/--model")
        if not given:
            parser.error("name the policy: --server URL (the robot's path), --model DIR (in-process) or --expert")
        kind = "server" if args.server else "model" if args.model else "expert"
    threads = args.threads
    if threads is None and args.workers > 1:
        threads = max(1, (os.cpu_count() or 1) // args.workers)
    return PolicySource(kind, model=args.model, url=args.server if kind == "server" else None, token=args.token,
                        encoding=args.encoding, device=args.device, threads=threads, dtype=args.dtype)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `vla eval`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from vla.errors import VLAError
    from vla.evaluation.report import json_safe

    if args.perturb and (args.summarize or args.open_loop or args.parity):
        parser.error("--perturb runs closed-loop episodes in the simulator: drop --summarize/--open-loop/--parity")
    try:
        if args.summarize:
            from vla.evaluation.suite import format_suite_markdown, load_results, summarize_suite, write_suite

            report = summarize_suite(load_results(args.summarize))
            report["files"] = write_suite(report, args.out or _default_out("suite"))
            text = format_suite_markdown(report)
        elif args.open_loop or args.parity:
            if args.open_loop and args.parity:
                parser.error("choose one of --open-loop and --parity")
            if not args.data:
                parser.error("--open-loop/--parity need --data DIR (a LeRobot dataset)")
            from vla.evaluation.open_loop import format_open_loop, format_parity, open_loop_eval, parity_check

            out = args.out or _default_out("parity" if args.parity else "open_loop")
            if args.parity:
                if not (args.server and args.model):
                    parser.error("--parity needs both --server URL and --model DIR")
                report = parity_check(args.data, _source(args, parser, "server"), _source(args, parser, "model"),
                                      embodiment=args.embodiment, episodes=args.episodes or 2,
                                      episode_index=args.episode_index, stride=args.stride,
                                      batch_size=args.batch_size, out_dir=out)
                text = format_parity(report)
            else:
                report = open_loop_eval(args.data, _source(args, parser), embodiment=args.embodiment,
                                        episodes=args.episodes, episode_index=args.episode_index, stride=args.stride,
                                        batch_size=args.batch_size, out_dir=out)
                text = format_open_loop(report)
        else:
            if not args.env:
                parser.error("closed-loop evaluation needs --env {" + ",".join(ENVS) + "} "
                             "(or use --open-loop/--parity/--summarize)")
            from vla.evaluation.closed_loop import evaluate
            from vla.evaluation.report import format_table
            from vla.evaluation.robustness import format_robustness, run_robustness

            out = args.out or _default_out(args.env)
            kwargs = dict(
                actions_per_chunk=args.actions_per_chunk, workers=args.workers,
                max_steps=args.max_steps, embodiment=args.embodiment, image_size=args.image_size,
                train_data=args.train_data, allow_seed_overlap=args.allow_seed_overlap, record_dir=args.record,
                record_episodes=args.record_episodes, record_format=args.record_format, prefetch=args.prefetch,
                realtime=args.realtime, ensemble_m=args.ensemble, out_dir=out, progress=not args.no_progress,
            )
            common = (args.env, expand_tasks(args.env, args.tasks), args.episodes or 10, args.seed_start,
                      _source(args, parser))
            if args.perturb:
                report = run_robustness(*common, perturbations=args.perturb, **kwargs)
                text = format_robustness(report)
            else:
                report = evaluate(*common, **kwargs)
                text = format_table(report)
    except VLAError as e:
        print(f"vla eval: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(json_safe(report), indent=2) if args.json else text)
    if not args.json and report.get("files"):
        print("written: " + ", ".join(v for k, v in report["files"].items() if isinstance(v, str)), file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
