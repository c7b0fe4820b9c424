"""SO-101 alone on 400 demonstrations: closed-loop success and held-out fit against training step.

Each point pools the `vla eval` batches of one checkpoint (Wilson 95% CI on the pooled episodes); the
fit comes from the run's metrics.jsonl (the validation at that step). The 400-demonstration run was
resumed 2500 -> 5000 -> 10000 steps, each time with the cosine schedule recomputed over the new length.

    python research/so101_scaling.py [--metrics runs/so101_400_10k/metrics.jsonl]
        [--point 2500=eval/so101_400,eval/so101_400_b ...] [--plot model_cards/vla-default-policy/so101_scaling.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vla.evaluation.report import wilson_interval
from vla.evaluation.suite import load_results

DEFAULT_POINTS = [
    "2500=eval/so101_400,eval/so101_400_b",
    "5000=eval/so101_400_5k,eval/so101_400_5k_b,eval/so101_400_5k_c",
    "7500=eval/so101_400_7500",
    "10000=eval/so101_400_10k,eval/so101_400_10k_b",
]


def pooled(dirs: list[Path]) -> dict:
    """Successes, reaches (stage >= 1), episodes and seed ranges of the so101/ results in ``dirs``."""
    episodes, seeds = [], []
    for report in load_results([d / "so101" for d in dirs]):
        episodes += report["episodes"]
        seeds.append(f"{report['seeds']['eval_first']}–{report['seeds']['eval_last']}")
    return {"n": len(episodes), "success": sum(e["success"] for e in episodes),
            "reached": sum(e.get("stage", 0) >= 1 for e in episodes), "seeds": ", ".join(seeds)}


def validation(metrics: Path) -> tuple[dict[int, dict], list[int]]:
    """step -> the last validation record of that step (a resumed run repeats some), and the steps
    where a resume restarted the schedule (the learning rate jumps up after warmup)."""
    val, restarts, last_lr = {}, [], None
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "val":
            val[r["step"]] = r
        elif r.get("split") == "train":
            if last_lr is not None and r["lr"] > 1.5 * last_lr and r["step"] > 1000:
                restarts.append(r["step"])
            last_lr = r["lr"]
    return val, restarts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", type=Path, default=Path("runs/so101_400_10k/metrics.jsonl"))
    p.add_argument("--point", action="append", metavar="STEP=EVAL_DIR[,EVAL_DIR...]",
                   help="a checkpoint's step and its `vla eval --out` directories (default: the 400-demo series)")
    p.add_argument("--frames", type=int, default=16968, help="training frames, for passes over the data")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args()

    val, restarts = validation(args.metrics)
    rows = []
    for spec in args.point or DEFAULT_POINTS:
        step, _, dirs = spec.partition("=")
        found = [Path(d) for d in dirs.split(",") if (Path(d) / "so101" / "results.json").is_file()]
        if found:
            rows.append((int(step), pooled(found), val.get(int(step))))

    print("| step | passes | held-out L1 (normalized) | val token loss | success (95% CI) | reached | seeds |")
    print("|---|---|---|---|---|---|---|")
    for step, r, v in rows:
        lo, hi = wilson_interval(r["success"], r["n"])
        fit = (f"{v['l1_normalized']:.3f}", f"{v['loss']:.2f}") if v else ("—", "—")
        print(f"| {step} | {step * args.batch / args.frames:.1f} | {fit[0]} | {fit[1]} | "
              f"{r['success']}/{r['n']} = {r['success'] / r['n']:.1%} [{lo:.2f}, {hi:.2f}] | "
              f"{r['reached']}/{r['n']} | {r['seeds']} |")

    if args.plot and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax, bx) = plt.subplots(1, 2, figsize=(8.5, 3.2), dpi=120)
        steps = [s for s, _, _ in rows]
        rate = [r["success"] / r["n"] for _, r, _ in rows]
        ci = [wilson_interval(r["success"], r["n"]) for _, r, _ in rows]
        ax.errorbar(steps, rate, yerr=[[m - lo for m, (lo, _) in zip(rate, ci)], [hi - m for m, (_, hi) in zip(rate, ci)]],
                    marker="o", capsize=4, label="success")
        ax.plot(steps, [r["reached"] / r["n"] for _, r, _ in rows], marker="s", ls="--", label="reached the cube")
        ax.set(xlabel="training step (batch 8)", ylabel="fraction of held-out episodes", ylim=(0, None))
        ax.set_title("closed loop through the server, 95% Wilson CI", fontsize=9)
        ax.legend(fontsize=8)
        curve = sorted(val.items())
        bx.plot([s for s, _ in curve], [v["l1_normalized"] for _, v in curve], marker=".")
        for restart in restarts:
            bx.axvline(restart, color="grey", ls=":", lw=1)
        bx.set(xlabel="training step (batch 8)", ylabel="held-out L1 (normalized actions)")
        bx.set_title("held-out fit (dotted: resumed, cosine recomputed)", fontsize=9)
        for a in (ax, bx):
            a.grid(alpha=0.3)
        fig.suptitle("SO-101 pick-place alone, 400 demonstrations, 8 of 30 SmolLM2 layers", fontsize=10)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
