"""Tables (Markdown, stdout) and a plot of the default policy's ablations (research/ablate_default_policy.sh).

    python research/ablation_report.py [--ablations eval/ablations] [--final SUITE_JSON] [--state SUITE_JSON]
                                      [--dart SUITE_JSON] [--parallel SUITE_JSON] [--more-data SUITE_JSON]
                                      [--steps-8000 SUITE_JSON] [--ensemble EVAL_DIR]
                                      [--seeds30 EVAL_DIR ...]
                                      [--plot model_cards/vla-default-policy/ablation_steps.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vla.evaluation.report import format_stages, wilson_interval
from vla.evaluation.suite import load_results

TASKS = ["reach-v3", "push-v3", "button-press-topdown-v3", "drawer-close-v3", "window-open-v3"]
ROBOTS = ("so101", "aloha")  # the single-task simulators, as `vla eval --env` names them


def closed_loop(path: Path) -> dict[str, tuple[int, int]]:
    """task -> (successes, episodes) of a `vla eval` results.json (or its directory) or a suite.json."""
    if path.name == "suite.json":
        return {t["task"]: (t["successes"], t["episodes"]) for t in json.loads(path.read_text())["tasks"]}
    return {name: (t["successes"], t["episodes"]) for name, t in load_results([path])[0]["tasks"].items()}


def row(label: str, runs: list[Path]) -> tuple[str, int, int]:
    tasks: dict[str, tuple[int, int]] = {}
    for run in runs:
        tasks.update(closed_loop(run))
    cells = [f"{tasks[t][0]}/{tasks[t][1]}" if t in tasks else "—" for t in TASKS + ["pick-place", "transfer-cube"]]
    mw = [tasks[t] for t in TASKS if t in tasks]
    s, n = sum(x for x, _ in mw), sum(y for _, y in mw)
    if not n:
        return f"| {label} | " + " | ".join(cells) + " | — |", s, n
    lo, hi = wilson_interval(s, n)
    return f"| {label} | " + " | ".join(cells) + f" | **{s}/{n} = {s / n:.0%}** [{lo:.2f}, {hi:.2f}] |", s, n


def milestones(path: Path) -> str:
    """'s/n [lo, hi]: stage k/n · ...' of the single task in a `vla eval` results directory."""
    (task,) = load_results([path])[0]["tasks"].values()
    s, n = task["successes"], task["episodes"]
    lo, hi = wilson_interval(s, n)
    return f"{s}/{n} [{lo:.2f}, {hi:.2f}]: {format_stages(task)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ablations", type=Path, default=Path("eval/ablations"))
    p.add_argument("--final", type=Path, default=Path("eval/default_policy/suite.json"),
                   help="suite of the autoregressive run at step 5000 (default_policy.yaml, --model.decoding autoregressive)")
    p.add_argument("--state", type=Path, default=Path("eval/state/suite.json"),
                   help="suite of the run with the robot state in the prompt (finetune/configs/default_policy_state.yaml)")
    p.add_argument("--dart", type=Path, default=Path("eval/dart/suite.json"),
                   help="suite of the run with DART noise-injected SO-101/ALOHA data (finetune/configs/default_policy_dart.yaml)")
    p.add_argument("--parallel", type=Path, default=Path("model_cards/vla-default-policy/suite.json"),
                   help="the shipped policy's suite (parallel decoding, finetune/configs/default_policy.yaml)")
    p.add_argument("--more-data", type=Path, default=Path("eval/more_data/suite.json"),
                   help="suite of the parallel recipe on 400 SO-101 and 80 ALOHA episodes, weights 0.45/0.3/0.25")
    p.add_argument("--steps-8000", type=Path, default=Path("eval/steps8k/suite.json"),
                   help="suite of the shipped run resumed to 8000 steps (`vla finetune --resume RUN --train.steps 8000`)")
    p.add_argument("--ensemble", type=Path, default=Path("eval/ensemble_shipped"),
                   help="so101/ and aloha/ results of the shipped policy with -k 1 --ensemble 0.01 (ACT temporal ensembling)")
    p.add_argument("--seeds30", type=Path, nargs="*",
                   default=[Path("eval/shipped_30"), Path("eval/steps8k_30"), Path("eval/so101_only"),
                            Path("eval/so101_only_5k"), Path("eval/so101_lossless"), Path("eval/aloha_h16"),
                            Path("eval/so101_aug"), Path("eval/so101_disp"), Path("eval/so101_tv"),
                            Path("eval/so101_grip"), Path("eval/so101_grip_k2"), Path("eval/aloha_wrist"),
                            Path("eval/aloha_top"), Path("eval/so101_hlg3"), Path("eval/so101_400"),
                            Path("eval/so101_400_5k"), Path("eval/so101_400_5k_b"),
                            Path("eval/so101_400_5k_c"), Path("eval/so101_l30")],
                   help="eval directories with so101/ and/or aloha/ results on 30 seeds "
                        "(shipped, resumed to 8000 steps, SO-101 alone for 1500 and 5000 steps, SO-101 alone on "
                        "lossless video, ALOHA alone with 16-action chunks, SO-101 alone with augmentation, "
                        "displacement chunks, a trained vision tower or a gripper camera (also re-planning every 2 "
                        "steps), ALOHA alone with both wrist cameras and on the top camera, SO-101 alone with soft bin "
                        "targets, on 400 demonstrations for 2500 and 5000 steps (the latter also on two more batches of seeds), and "
                        "with all 30 language-model layers)")
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args()
    a, final = args.ablations, [args.final]

    print("| policy | " + " | ".join(TASKS) + " | SO-101 pick-place | ALOHA transfer-cube | Meta-World (95% CI) |")
    print("|---|" + "---|" * (len(TASKS) + 3))
    curve = []
    for label, step, runs in [("step 1000", 1000, [a / "steps/00001000-metaworld", a / "steps/00001000-so101"]),
                              ("step 2500", 2500, [a / "steps/00002500-metaworld"]),
                              ("step 5000", 5000, final)]:
        runs = [r for r in runs if r.exists()]  # a checkout holds only the runs re-made in it
        if not runs:
            continue
        line, s, n = row(label, runs)
        print(line)
        curve.append((step, s, n))
    for label, sub in [("step 5000, training seeds 0–9", "train_seeds"), ("step 5000, k = 4 of 8", "k4")]:
        runs = sorted(d for d in (a / sub).glob("*") if (d / "results.json").is_file())
        if runs:
            print(row(label, runs)[0])
    for label, suite in [
        ("+ robot state in the prompt, 3500 steps (separate run, through the server)", args.state),
        ("+ DART data for SO-101 and ALOHA, 3500 steps (separate run, through the server)", args.dart),
        ("**parallel decoding, 5000 steps (shipped)**", args.parallel),
        ("parallel + 400 SO-101 / 80 ALOHA episodes, weights 0.45/0.3/0.25 (separate run, through the server)",
         args.more_data),
        ("parallel, resumed to 8000 steps (3000-step warm restart, through the server)", args.steps_8000),
    ]:
        if suite.is_file():
            print(row(label, [suite])[0])
    ensembled = [args.ensemble / env for env in ROBOTS if (args.ensemble / env / "results.json").is_file()]
    if ensembled:
        print(row("parallel (shipped), -k 1 with temporal ensembling (through the server)", ensembled)[0])

    seeds30 = [d for d in args.seeds30 if any((d / env / "results.json").is_file() for env in ROBOTS)]
    if seeds30:
        print("\n| 30 seeds each (eval directory: seeds) | SO-101 pick-place | ALOHA transfer-cube |")
        print("|---|---|---|")
        for d in seeds30:
            found = [d / env for env in ROBOTS if (d / env / "results.json").is_file()]
            seeds = load_results(found[:1])[0]["seeds"]["eval"].removesuffix(" per task")
            cells = [milestones(d / env) if d / env in found else "—" for env in ROBOTS]
            print(f"| {d}: {seeds} | " + " | ".join(cells) + " |")

    print("\n| arm (step 500, same schedule) | Meta-World L1 | SO-101 L1 | ALOHA L1 |")
    print("|---|---|---|---|")
    for arm in ("baseline", "tokens49", "layers16"):
        cells = []
        for data in ("metaworld", "so101", "aloha"):
            f = a / "capacity" / f"{arm}-{data}" / "open_loop.json"
            if f.is_file():
                r = json.loads(f.read_text())
                cells.append(f"{r['l1_mean']:.3f} ({float(np.mean(r['l1_per_dim_over_std'])):.2f} σ, {r['frames']} chunks)")
            else:
                cells.append("—")
        print(f"| {arm} | " + " | ".join(cells) + " |")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [c[0] for c in curve]
        rate = np.array([s / n for _, s, n in curve])
        ci = np.array([wilson_interval(s, n) for _, s, n in curve])
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
        ax.errorbar(steps, rate, yerr=[np.clip(rate - ci[:, 0], 0, None), np.clip(ci[:, 1] - rate, 0, None)],
                    marker="o", capsize=4)
        ax.set_xlabel("training step (batch 8)")
        ax.set_ylabel("Meta-World success (5 tasks × 10)")
        ax.set_ylim(0, 1)
        ax.set_title("held-out seeds, closed loop, 95% Wilson CI", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
