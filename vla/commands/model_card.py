"""``python -m vla.commands.model_card``: (re)write the model card of a finished run (the library part is
``vla.finetune.model_card``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from vla.errors import ConfigError

from . import _help

PROG = "python -m vla.commands.model_card"
EPILOG = f"""\
Example, the shipped default policy's card:
  {PROG} --run vla/default_policy --eval model_cards/vla-default-policy/suite.json \\
      --recipe finetune/configs/default_policy.yaml --report research/default_policy_ablations.md --out model_cards/vla-default-policy.md"""


def build_parser() -> argparse.ArgumentParser:
    p = _help.parser(PROG, "Write the model card (README.md with Hugging Face front matter) of a finished `vla "
                           "finetune` run, optionally with its closed-loop results as model-index metadata. "
                           "Everything but the closed-loop suite comes from the run's vla_config.json.", EPILOG)
    p.add_argument("--run", required=True, help="the run directory (vla finetune --out, or its vla export --adapter)")
    p.add_argument("--eval", help="suite.json from `vla eval --summarize` (e.g. `bash scripts/eval_default_policy.sh`); "
                                  "suite.png and recorded episodes next to it are shown")
    p.add_argument("--recipe", help="the fine-tuning config the run was trained with, linked and used in the "
                                    "reproduction commands")
    p.add_argument("--report", help="a report to link for more detail (e.g. ablations)")
    p.add_argument("--doctor", help="the JSON report of `vla doctor --out FILE` on the training data, shown as a table")
    p.add_argument("--out", help="where to write the card (default RUN/README.md); links are relative to it")
    p.add_argument("--check", action="store_true", help="write nothing: exit 1 if --out differs from what would be written")
    return p


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check compare) the card; returns the exit code (2 on bad input)."""
    args = build_parser().parse_args(argv)
    from vla.defaults import DEFAULT_POLICY_DIR
    from vla.finetune.model_card import CARD, inputs_from_run, render_card

    out = Path(args.out or Path(args.run) / CARD)
    try:
        inputs = inputs_from_run(args.run)
        if args.eval:
            inputs["eval"] = json.loads(Path(args.eval).read_text())
            inputs["eval_path"] = Path(args.eval)
        if args.doctor:
            inputs["doctor"] = json.loads(Path(args.doctor).read_text())
    except (OSError, json.JSONDecodeError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = [*PROG.split(), "--run", args.run] + [
        x for flag, v in (("--eval", args.eval), ("--recipe", args.recipe), ("--report", args.report),
                          ("--doctor", args.doctor))
        if v for x in (flag, v)] + ["--out", out.as_posix()]
    inputs.update(out_dir=out.parent, recipe=args.recipe, report=args.report, command=shlex.join(command),
                  default_policy=Path(args.run).resolve() == DEFAULT_POLICY_DIR.resolve())
    text = render_card(inputs)
    if args.check:
        same = out.is_file() and out.read_text() == text
        print(f"{out}: {'up to date' if same else 'differs from the generated card: regenerate it with ' + shlex.join(command)}")
        return 0 if same else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
