"""``vla finetune``: LoRA fine-tuning of a VLM into a VLA policy on a mixture of robot datasets.

Also runnable as ``python -m vla.cli finetune ...`` and under ``accelerate launch -m vla.cli finetune ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from vla.errors import VLAError, check_keys  # noqa: E402
from vla.finetune.config import (RESUMABLE_OVERRIDES, SECTIONS, FinetuneConfig, all_keys,  # noqa: E402
                                 describe_keys, load_file, parse_data_arg, set_key)

from . import _help  # noqa: E402

PROG = "vla finetune"
EPILOG = """\
examples:
  # three simulated robots on the default backbone (8 of 30 LM layers, 16 image tokens per camera)
  vla finetune --base default --model.base_options '{num_layers: 8, image_tokens: 16}' \\
      --data metaworld=data/mw --data aloha=data/aloha:0.5 --data so101=data/so101 \\
      --out runs/demo --train.steps 300 --train.batch_size 8
  vla finetune --config finetune/configs/three_robots.yaml --out runs/demo --dry-run   # plan + time estimate
  vla finetune --resume runs/demo                       # continue exactly where it stopped (or was killed)
  vla finetune --resume runs/demo --train.steps 600     # extend a finished run
  accelerate launch -m vla.cli finetune --config cfg.yaml --out runs/ddp  # DDP/FSDP as configured by accelerate

Every key below can be set in a YAML/TOML file (sections as mappings) and overridden on the command line
as --section.key VALUE (lists: a,b,c or [a, b]; mappings: '{k: v}'); dataset options as
--datasets.NAME.KEY VALUE. Precedence: defaults < --config file < --base/--data/--out < --key overrides.

Run directory: config.yaml, metrics.jsonl, checkpoints/step-N/ (adapter + optimizer/scheduler/RNG + data
position; atomic, SHA-256 of every file checked on resume: a damaged one is kept as step-N.damaged and the
run resumes from the newest intact one), and at the end the adapter itself (VLAPolicy.from_pretrained(RUN_DIR)),
training_curves.png, action_traces.png, examples/ (frames for `vla predict`) and README.md (model card).
SIGINT/SIGTERM save a checkpoint before exiting (exit codes 130/143); --resume continues it.
"""


def _fmt_default(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return repr(v) if isinstance(v, str) else str(v)


def build_parser() -> argparse.ArgumentParser:
    p = _help.parser(PROG, "LoRA fine-tuning of a vision-language model into a VLA policy on a weighted mixture of "
                           "LeRobot datasets (one or more robots). Loss on action tokens only.", EPILOG,
                     allow_abbrev=False)
    p.add_argument("--data", action="append", metavar="NAME=DIR[:WEIGHT]", default=None,
                   help="a dataset of the mixture (repeatable); NAME is also its embodiment name unless "
                        "--datasets.NAME.embodiment says otherwise (default: the config file's datasets)")
    p.add_argument("--config", metavar="FILE", help="YAML (.yaml/.yml) or TOML (.toml) config file (default: none)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its newest intact checkpoint (its config.yaml is reused; only "
                        "train.steps, checkpoint.*, eval.*, log.* and data.num_workers may be overridden)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate config, data and base, print the plan (trainable parameters, tokens per "
                        "sample, steps), a time estimate from a few timed steps and the peak memory they "
                        "predict; writes nothing")
    p.add_argument("--dry-run-steps", type=int, default=3, metavar="N",
                   help="micro-batches timed by --dry-run after one warm-up (default: 3)")
    p.add_argument("--json", action="store_true", help="print the plan / result as JSON (default: text)")
    top = p.add_argument_group("run")
    for key, help_text, default, choices in describe_keys():
        if "." not in key:
            top.add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS, metavar="VALUE",
                             help=f"{help_text} (default: {_fmt_default(default)})".replace("%", "%%"))
    for section in SECTIONS:
        group = p.add_argument_group(f"{section}.*")
        for key, help_text, default, choices in describe_keys():
            if key.startswith(section + "."):
                extra = f"; one of {', '.join(map(str, choices))}" if choices else ""
                group.add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS, metavar="VALUE",
                                   help=f"{help_text} (default: {_fmt_default(default)}{extra})".replace("%", "%%"))
    return p


def _leftover_overrides(rest: list[str]) -> list[tuple[str, str]]:
    """``--datasets.NAME.KEY VALUE`` pairs; anything else is an unknown option (with a did-you-mean)."""
    pairs = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--"):
            raise VLAErrorExit(f"unexpected argument {tok!r}")
        key, _, inline = tok[2:].partition("=")
        if not key.startswith("datasets."):
            check_keys({key: None}, [*all_keys(), "data", "config", "resume", "dry-run", "json"],
                       "the options of vla finetune")
        if inline:
            pairs.append((key, inline))
            i += 1
        elif i + 1 < len(rest):
            pairs.append((key, rest[i + 1]))
            i += 2
        else:
            raise VLAErrorExit(f"option --{key} needs a value")
    return pairs


class VLAErrorExit(VLAError):
    pass


def make_config(args: argparse.Namespace, rest: list[str]) -> tuple[FinetuneConfig, bool]:
    """The effective config and whether this is a resume."""
    overrides = [(k, v) for k, v in vars(args).items() if k in all_keys()]
    dataset_overrides = _leftover_overrides(rest)
    if args.resume:
        run_dir = Path(args.resume)
        from vla.finetune.runner import CONFIG_FILE

        if not (run_dir / CONFIG_FILE).is_file():
            raise VLAErrorExit(f"{run_dir} is not a fine-tuning run directory ({CONFIG_FILE} is missing)")
        if args.config or args.data:
            raise VLAErrorExit("--resume reuses the run's config.yaml: --config and --data cannot be given with it")
        cfg = FinetuneConfig.from_dict(load_file(run_dir / CONFIG_FILE), str(run_dir / CONFIG_FILE))
        for key, value in overrides + dataset_overrides:
            if key == "out" and Path(value).resolve() == run_dir.resolve():
                continue
            if not any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_OVERRIDES):
                raise VLAErrorExit(f"--{key} cannot change when resuming (the run would not continue exactly); "
                                   f"allowed: {', '.join(RESUMABLE_OVERRIDES)}")
            set_key(cfg, key, value)
        cfg.out = str(run_dir)
        return cfg, True
    cfg = FinetuneConfig.from_dict(load_file(args.config), args.config) if args.config else FinetuneConfig()
    if args.data:
        cfg.datasets = dict(parse_data_arg(a) for a in args.data)
        if len(cfg.datasets) != len(args.data):
            raise VLAErrorExit("two --data options use the same NAME; names must be unique")
    for key, value in overrides + dataset_overrides:
        set_key(cfg, key, value)
    return cfg, False


def format_plan(plan: dict[str, Any]) -> str:
    t = plan["timing"]
    lines = [f"base: {plan['base']}" + (f" {json.dumps(plan['base_options'])}" if plan["base_options"] else ""),
             f"device: {plan['device']} x {plan['world_size']}, "
             f"precision {plan['precision']} ({plan['precision_reason']}), vision cache {'on' if plan['vision_cache'] else 'off'}, padded steps: {plan['padded_steps']}",
             "", "datasets:"]
    for d in plan["datasets"]:
        lines.append(f"  {d['name']:<14} embodiment {d['embodiment']:<12} episodes {d['train_episodes']} train / "
                     f"{d['val_episodes']} val, frames {d['train_frames']} / {d['val_frames']}, weight "
                     f"{d['weight']:.3f}, licence {d['license']}")
    lines.append("embodiments:")
    for n, e in plan["embodiments"].items():
        tk = plan["tokens"][n]
        lines.append(f"  {n:<14} action dim {e['action_dim']}, chunk {e['chunk_size']}, {len(e['cameras'])} camera(s), "
                     f"tokens/sample {tk['tokens_per_sample']:.0f} (prompt {tk['prompt_tokens']}, actions "
                     f"{tk['action_tokens_mean']:.1f} mean / {tk['action_tokens_max']} max)")
    tok = plan["tokenizer"]
    lines.append(f"action tokenizer: {tok['kind']}, {tok['vocab']} tokens")
    pr = plan["parameters"]
    lines.append("trainable parameters: " + ", ".join(f"{k} {v:,}" for k, v in pr.items() if k not in ("total", "trainable"))
                 + f" = {pr['trainable']:,} of {pr['total']:,} ({pr['trainable'] / pr['total']:.2%})")
    steps = plan["steps"] - plan["start_step"]
    total_s = steps * t["seconds_per_step"] + t.get("cache_fill_seconds", 0.0)
    lines.append(f"steps: {steps} x {plan['samples_per_step']} samples = {plan['samples_total']:,} samples")
    if "cache_images" in t:
        lines.append(f"vision feature cache: {t['cache_images']} training images, {t['cache_mib']:.0f} MiB, "
                     f"about {t['cache_fill_seconds']:.0f} s to fill before the first step")
    lines.append(f"timing: {t['seconds_per_step']:.2f} s/step ({t['samples_per_s']:.1f} samples/s) measured on "
                 f"a few steps -> about {total_s / 60:.1f} min in all (plus validation)")
    m = t["memory"]
    lines.append(f"memory: peak RSS about {m['predicted_peak_rss_mib'] / 1024:.2f} GiB per process (dry run "
                 f"{m['dry_run_peak_rss_mib'] / 1024:.2f} GiB + optimizer state {m['optimizer_state_mib']:.0f} MiB + "
                 f"vision features {m['cache_fill_mib']:.0f} MiB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    from vla.finetune.runner import run

    try:
        cfg, resume = make_config(args, rest)
        outcome = run(cfg, resume=resume, dry_run=args.dry_run, dry_run_steps=args.dry_run_steps)
    except VLAError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: stopped (no checkpoint written for the current step)", file=sys.stderr)
        return 130
    if outcome.plan is not None:
        print(json.dumps(outcome.plan, indent=2, default=str) if args.json else format_plan(outcome.plan))
    elif args.json:
        print(json.dumps({"run_dir": str(outcome.run_dir), "step": outcome.step, "code": outcome.code,
                          "message": outcome.message}))
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
