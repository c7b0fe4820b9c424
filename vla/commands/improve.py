"""``vla improve``: the policy learns from its own rollouts (DAgger, or self-imitation without an expert)."""

from __future__ import annotations

import argparse
import json
import sys

from vla.errors import VLAError

from . import _help

PROG = "vla improve"
DESCRIPTION = """\
Improve a policy from its own rollouts in simulation. Each round:

  1. roll out   the current policy on training-side seeds (--rollout-seed-start; never the evaluation
                seeds: an overlap is refused). Per chunk the expert drives with probability beta
                (beta, beta*decay, beta*decay^2, ... over the rounds), the policy otherwise;
  2. label      the visited states with the expert's actions (--mode dagger): where a policy chunk
                began, the expert's own next actions from that state, replayed in the simulator
                (--labels continuation), or its action at every visited state (--labels path);
                or keep the executed actions of successful episodes only (--mode self-imitation);
  3. write      the round as a LeRobot v3.0 dataset with next.reward/next.success/next.done, each
                frame's label source, and provenance (policy checkpoint + SHA-256, expert, beta, seeds);
  4. fine-tune  from the current checkpoint (warm start, the starting run's recipe) on its
                demonstrations plus every round so far (--round-weight of each robot's weight);
  5. evaluate   on held-out seeds with `vla eval`'s code.

The run ends with OUT/report.md, report.json and improvement.png (success per task per round with
95% Wilson intervals), also added to the last round's model card. A crash loses nothing:
`vla improve --resume OUT` continues where it stopped, to the same datasets."""

EPILOG = """\
examples:
  vla improve --out runs/improve --sim so101                       # the shipped default policy on SO-101
  vla improve --from runs/mybot --out runs/mybot_dagger --sim metaworld:reach-v3,push-v3 --sim so101 \\
      --rounds 3 --episodes 20 --steps 800 --workers 2
  vla improve --out runs/si --sim so101 --mode self-imitation --expert none   # no expert anywhere
  vla improve --out runs/t --sim so101 --expert http://127.0.0.1:3001          # a served teacher policy
  vla improve --resume runs/improve --rounds 4                     # continue; add rounds to a finished loop

experts (--expert): 'scripted' is the simulator's expert, relabelling any state (Meta-World's stateless
policies, SO-101's controller with its phase inferred from the state, ALOHA's planner re-planning from the
current arm and cube poses; where no plan exists the episode ends there); 'module:function' is your
function (env, obs) -> action; 'http://HOST:PORT' is a policy served by `vla serve` (its first action).
"""


def _sim(arg: str) -> tuple[str, list[str]]:
    env, _, tasks = arg.partition(":")
    return env, [t for t in tasks.split(",") if t]


def build_parser() -> argparse.ArgumentParser:
    from vla.finetune.improve.loop import ImproveConfig

    d = ImproveConfig(start="", out="", sims={})
    p = _help.parser(PROG, DESCRIPTION, EPILOG, allow_abbrev=False)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="directory of the new loop (must not exist or be empty)")
    where.add_argument("--resume", metavar="OUT", help="continue the loop in OUT (after a crash, or with more --rounds)")
    p.add_argument("--from", dest="start", help="the checkpoint to improve: a `vla finetune` run directory "
                   "(default: the shipped default policy)")
    p.add_argument("--sim", action="append", type=_sim, metavar="ENV[:TASK,TASK]",
                   help="simulator and tasks to improve on (repeatable; default tasks: the env's first)")
    p.add_argument("--rounds", type=int, default=d.rounds, help=f"rounds to run (default {d.rounds})")
    p.add_argument("--episodes", type=int, default=d.episodes, help=f"rollouts per task per round (default {d.episodes})")
    p.add_argument("--mode", choices=("dagger", "self-imitation"), default=d.mode,
                   help="dagger: the expert labels every visited state; self-imitation: keep the policy's own "
                        "successful episodes (default dagger)")
    p.add_argument("--labels", choices=("continuation", "path"), default=d.labels,
                   help="dagger's chunk labels: the expert's continuation from where each policy chunk began "
                        "(one plan per chunk, as the policy executes it; measured better on SO-101) or its "
                        "per-frame label along the visited path (cheaper: no replay) (default continuation)")
    p.add_argument("--expert", default=d.expert, help="scripted | none | module:function | http://HOST:PORT "
                   "(default scripted)")
    p.add_argument("--beta", type=float, default=d.beta,
                   help=f"probability that the expert drives a chunk in round 1 (default {d.beta})")
    p.add_argument("--beta-decay", type=float, default=d.beta_decay,
                   help=f"beta is multiplied by this each round (default {d.beta_decay})")
    p.add_argument("--rollout-seed-start", type=int, default=d.rollout_seed_start,
                   help=f"first rollout seed; round r uses the next --episodes seeds (default {d.rollout_seed_start})")
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes,
                   help=f"held-out evaluation episodes per task and round (default {d.eval_episodes})")
    p.add_argument("--eval-seed-start", type=int, default=d.eval_seed_start,
                   help=f"first held-out seed (default {d.eval_seed_start})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"fine-tuning steps per round (default {d.steps})")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the starting run's)")
    p.add_argument("--round-weight", type=float, default=d.round_weight,
                   help=f"share of each robot's sampling weight given to its rounds (default {d.round_weight})")
    p.add_argument("--demos", action="append", default=[], metavar="NAME=DIR",
                   help="where the starting run's dataset NAME is now (default: the path it recorded)")
    p.add_argument("--max-steps", type=int, default=None, help="episode step limit (default: the simulator's)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the expert-or-policy coin flips and training")
    p.add_argument("--workers", type=int, default=d.workers, help="rollout and evaluation processes (default 1)")
    p.add_argument("--no-baseline", action="store_true", help="skip evaluating the starting policy (round 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _given(argv: list[str] | None, cfg) -> dict:
    """The config values set explicitly on this command line (a resumed loop checks them against its plan)."""
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    given = vars(quiet.parse_args(argv))
    rename = {"resume": None, "out": None, "json": None, "sim": "sims", "no_baseline": "baseline",
              "no_progress": "progress"}
    keys = {rename.get(k, k) for k in given} - {None}
    return {k: getattr(cfg, k) for k in keys}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vla.defaults import default_policy_path

    from vla.finetune.improve.loop import ImproveConfig, improve
    from vla.finetune.improve.report import format_markdown

    demos = {}
    for item in args.demos:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            print(f"{PROG}: error: --demos {item!r}: use NAME=DIR", file=sys.stderr)
            return 2
        demos[name] = path
    cfg = ImproveConfig(
        start=args.start or str(default_policy_path()), out=args.out or args.resume,
        sims={env: tasks for env, tasks in (args.sim or [])}, rounds=args.rounds, episodes=args.episodes,
        mode=args.mode, labels=args.labels, expert=args.expert, beta=args.beta, beta_decay=args.beta_decay,
        rollout_seed_start=args.rollout_seed_start, eval_episodes=args.eval_episodes,
        eval_seed_start=args.eval_seed_start, steps=args.steps, lr=args.lr, round_weight=args.round_weight,
        demos=demos, max_steps=args.max_steps, seed=args.seed, workers=args.workers, baseline=not args.no_baseline,
        progress=not args.no_progress,
    )
    changed = _given(argv, cfg) if args.resume else None
    try:
        report = improve(cfg, resume=bool(args.resume), changed=changed)
    except VLAError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_markdown(report))
        print(f"report: {report['files']['markdown']}  plot: {report['files']['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
