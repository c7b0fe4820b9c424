"""The loop's report: success per task per round with Wilson intervals, as JSON, Markdown and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vla.evaluation.report import save_figure, wilson_interval


def round_table(rounds: list[dict]) -> list[dict[str, Any]]:
    """One row per (simulator, task): success and 95% interval per round, and the suite mean per round."""
    rows: dict[tuple[str, str], dict] = {}
    for entry in rounds:
        for env, tasks in entry["eval"].items():
            for task, v in tasks.items():
                lo, hi = wilson_interval(v["successes"], v["episodes"])
                rows.setdefault((env, task), {"env": env, "task": task, "rounds": {}})["rounds"][entry["round"]] = {
                    **v, "success_rate": v["successes"] / v["episodes"], "ci95": [lo, hi]}
    return list(rows.values())


def suite_means(table: list[dict]) -> dict[int, float]:
    """Mean success over tasks per round (tasks weigh equally, as in the default policy's suite)."""
    rounds = sorted({r for row in table for r in row["rounds"]})
    return {r: sum(row["rounds"][r]["success_rate"] for row in table if r in row["rounds"]) /
            max(sum(1 for row in table if r in row["rounds"]), 1) for r in rounds}


def format_markdown(report: dict) -> str:
    table, means = report["table"], report["suite_mean"]
    rounds = sorted(int(r) for r in means)
    head = "| simulator | task | " + " | ".join(f"round {r}" + (" (start)" if r == 0 else "") for r in rounds) + " |"
    lines = [head, "|" + "---|" * (len(rounds) + 2)]
    for row in table:
        cells = []
        for r in rounds:
            v = row["rounds"].get(r) or row["rounds"].get(str(r))
            cells.append(f"{v['successes']}/{v['episodes']} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]" if v else "-")
        lines.append(f"| {row['env']} | {row['task']} | " + " | ".join(cells) + " |")
    lines.append("| **suite** | mean over tasks | " + " | ".join(f"**{means[r]:.1%}**" for r in rounds) + " |")
    cfg = report["config"]
    lines += ["", f"Mode {cfg['mode']}, expert {cfg['expert']}, beta {cfg['beta']} x {cfg['beta_decay']}^(round-1), "
              f"{cfg['episodes']} rollouts per task per round (seeds from {cfg['rollout_seed_start']}), "
              f"{cfg['steps']} fine-tuning steps per round; evaluation: {cfg['eval_episodes']} held-out seeds per task "
              f"from {cfg['eval_seed_start']}, 95% Wilson intervals."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    """Success per task against the round, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in report["table"]:
        rs = sorted(int(r) for r in row["rounds"])
        vals = [row["rounds"].get(r) or row["rounds"][str(r)] for r in rs]
        y = [v["success_rate"] for v in vals]
        err = [[v["success_rate"] - v["ci95"][0] for v in vals], [v["ci95"][1] - v["success_rate"] for v in vals]]
        ax.errorbar(rs, y, yerr=err, marker="o", capsize=3, label=f"{row['env']}/{row['task']}", alpha=0.8)
    means = {int(r): v for r, v in report["suite_mean"].items()}
    ax.plot(sorted(means), [means[r] for r in sorted(means)], "k--", lw=2, label="suite mean")
    ax.set_xlabel("round (0 = starting policy)")
    ax.set_ylabel("success on held-out seeds")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(sorted(means))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title("vla improve: closed-loop success per round")
    return save_figure(fig, path)


def write_report(cfg, rounds: list[dict], seconds: float) -> dict:
    """OUT/report.json, report.md and improvement.png; the section is added to the last round's model card."""
    from dataclasses import asdict

    out = Path(cfg.out)
    table = round_table(rounds)
    report = {"kind": "vla.improve", "config": asdict(cfg), "rounds": rounds, "table": table,
              "suite_mean": suite_means(table), "seconds": seconds}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    md = format_markdown(report)
    (out / "report.md").write_text("# vla improve\n\n" + md)
    plot(report, out / "improvement.png")
    last = max(r["round"] for r in rounds)
    card = Path(cfg.out) / f"round-{last:02d}" / "train" / "README.md"
    if last > 0 and card.is_file():
        import shutil

        shutil.copy(out / "improvement.png", card.parent / "improvement.png")
        text = card.read_text()
        marker = "\n## Self-improvement (`vla improve`)\n"
        text = text.split(marker)[0].rstrip("\n") + "\n" + marker + "\n" + md + "\n![success per round](improvement.png)\n"
        card.write_text(text)
    report["files"] = {"json": str(out / "report.json"), "markdown": str(out / "report.md"),
                       "plot": str(out / "improvement.png"), "card": str(card) if card.is_file() else None}
    return report
